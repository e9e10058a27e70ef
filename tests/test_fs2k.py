"""FS2K-SDE loader on a tiny tree in the reference annotation layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvlp_core.fs2k import FS2KFormatError, load_fs2k_sde, select_steps


def _png(path: Path, shade: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), shade).save(path)
    return path.as_posix()


def make_fs2k_tree(root: Path, train_ids=("0001", "0002"), test_ids=("0101",), steps: int = 4) -> Path:
    """Photos, cumulative sketches, train.json (string captions), annotations/test.json (caption lists)."""

    def rows(ids, caption_list: bool):
        out = []
        for n, photo_id in enumerate(ids):
            _png(root / "photos" / f"{photo_id}.png", 40 * n)
            sketches = []
            for step in range(steps):
                rel = f"sketches/{photo_id}/{step}.png"
                _png(root / rel, 255 - 10 * step)
                sketches.append(rel)
            caption = f"a person number {photo_id}"
            out.append(
                {
                    "photo": f"photos/{photo_id}.png",
                    "photo_id": photo_id,
                    "caption": [caption, caption + " smiling"] if caption_list else caption,
                    "sketch_sde": sketches,
                }
            )
        return out

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(rows(train_ids, caption_list=False)))
    (root / "annotations" / "test.json").write_text(json.dumps(rows(test_ids, caption_list=True)))
    return root


def test_loads_both_splits(tmp_path: Path) -> None:
    root = make_fs2k_tree(tmp_path)
    episodes = load_fs2k_sde(root)
    assert [(e.photo_id, e.split) for e in episodes] == [("0001", "train"), ("0002", "train"), ("0101", "test")]
    test = episodes[-1]
    assert test.captions == ("a person number 0101", "a person number 0101 smiling")
    assert episodes[0].captions == ("a person number 0001",)
    assert [p.name for p in test.sketch_paths] == ["0.png", "1.png", "2.png", "3.png"]
    assert test.photo_path == root / "photos" / "0101.png"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda row: row.pop("sketch_sde"), r"row 1 \(photo_id '0002'\): missing key\(s\) \['sketch_sde'\]"),
        (lambda row: row.update(caption=7), r"row 1 \(photo_id '0002'\): 'caption' must be a string or a list"),
        (lambda row: row.update(sketch_sde=[]), r"row 1 .*'sketch_sde' must be a non-empty list"),
        (lambda row: row.update(photo="photos/missing.png"), r"row 1 .*file not found: .*missing\.png"),
        (lambda row: row.update(photo_id="0001"), r"row 1: photo_id '0001' already used"),
    ],
)
def test_malformed_annotation_names_file_row_and_problem(tmp_path: Path, mutate, message: str) -> None:
    root = make_fs2k_tree(tmp_path)
    rows = json.loads((root / "train.json").read_text())
    mutate(rows[1])
    (root / "train.json").write_text(json.dumps(rows))
    with pytest.raises(FS2KFormatError, match=message) as err:
        load_fs2k_sde(root)
    assert "train.json" in str(err.value)


def test_not_a_list_or_not_json(tmp_path: Path) -> None:
    root = make_fs2k_tree(tmp_path)
    (root / "train.json").write_text(json.dumps({"photo": "x"}))
    with pytest.raises(FS2KFormatError, match="expected a JSON list"):
        load_fs2k_sde(root)
    (root / "train.json").write_text("[{")
    with pytest.raises(FS2KFormatError, match="not valid JSON"):
        load_fs2k_sde(root)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no test.json"):
        load_fs2k_sde(tmp_path, splits=["test"])


def test_select_steps_ends_on_finished_sketch() -> None:
    np.testing.assert_array_equal(select_steps(50, 50), np.arange(50))
    seventy = select_steps(70, 50)
    assert len(seventy) == 50 and seventy[-1] == 69 and seventy[0] == 1 and (np.diff(seventy) >= 1).all()
    short = select_steps(4, 8)
    assert list(short) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(select_steps(1, 3)) == [0, 0, 0]
