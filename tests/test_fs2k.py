"""FS2K-SDE loaders: every layout the dataset is found in, built from real photos, and malformed input."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvlp_core.fs2k import (
    REFERENCE_ANNOTATIONS,
    FS2KFormatError,
    detect_layout,
    fs2k_counts,
    load_fs2k_sde,
    select_steps,
)
from tests.fs2k_fixtures import BUILDERS, CAPTIONS, TEST_STEPS, TRAIN_STEPS, build_reference, build_slfir


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


def test_a_root_of_no_layout_lists_every_place_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_fs2k_sde(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path} does not hold any FS2K-SDE layout; looked for")
    for place in (
        "annotation/fs2ksde_train.json",
        "annotation/fs2ksde_test_v2.json",
        "annotation/train_450.json",
        "annotations/test.json",
        "comp/train/photo",
        "sketch-seq",
    ):
        assert str(tmp_path / place) in message, place


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_each_real_layout_is_detected_and_loaded(tmp_path: Path, layout: str) -> None:
    root = BUILDERS[layout](tmp_path / layout)
    assert detect_layout(root).layout == layout
    episodes = load_fs2k_sde(root)
    counts = fs2k_counts(episodes)
    captions_per_train_photo = {"fvlp-reference": 2, "fvlp": 1, "slfir": 0}[layout]
    assert counts == {
        "train": {"photos": 5, "sketches": 5 * TRAIN_STEPS, "captions": 5 * captions_per_train_photo},
        "test": {"photos": 2, "sketches": 2 * TEST_STEPS, "captions": 0 if layout == "slfir" else 2},
    }
    first = episodes[0]
    # Steps in drawing order: 10.png follows 9.png even where names are not zero-padded.
    names = [p.name for p in first.sketch_paths]
    assert names[9:11] == (["10.png", "11.png"] if layout != "fvlp" else ["9.png", "10.png"])
    assert all(p.is_file() for e in episodes for p in (e.photo_path, *e.sketch_paths))


def test_reference_layout_merges_caption_rows_and_derives_test_photo_ids(tmp_path: Path) -> None:
    root = build_reference(tmp_path, variant=1)  # FLIP's _v2 file names
    episodes = {e.photo_id: e for e in load_fs2k_sde(root)}
    assert episodes["1"].captions == (CAPTIONS[0], CAPTIONS[0].replace("a ", "one ", 1))
    assert episodes["1"].photo_path == root / "images" / "photo1" / "image0001.jpg"
    assert episodes["photo1/image0006"].split == "test"  # no photo_id in test rows: from the photo path
    assert episodes["photo1/image0006"].captions == (CAPTIONS[5],)


def test_forcing_a_layout_the_root_does_not_hold_names_it(tmp_path: Path) -> None:
    root = build_slfir(tmp_path)
    assert detect_layout(root, "slfir").layout == "slfir"
    with pytest.raises(FileNotFoundError, match="does not hold the fvlp-reference layout; looked for"):
        load_fs2k_sde(root, layout="fvlp-reference")


def test_slfir_layout_pairs_photos_and_sketch_folders_one_to_one(tmp_path: Path) -> None:
    root = build_slfir(tmp_path)
    next((root / "sketch-seq" / "test").iterdir()).rename(root / "stray")
    with pytest.raises(FS2KFormatError, match=r"has 2 photos but .*sketch-seq/test has 1 sketch folders"):
        load_fs2k_sde(root)


def test_reference_file_names_cover_fvlp_flip_and_sde2() -> None:
    assert [pair[0] for pair in REFERENCE_ANNOTATIONS] == [
        "fs2ksde_train.json",
        "fs2ksde_train_v2.json",
        "train_450.json",
    ]


def test_select_steps_ends_on_finished_sketch() -> None:
    np.testing.assert_array_equal(select_steps(50, 50), np.arange(50))
    seventy = select_steps(70, 50)
    assert len(seventy) == 50 and seventy[-1] == 69 and seventy[0] == 1 and (np.diff(seventy) >= 1).all()
    short = select_steps(4, 8)
    assert list(short) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(select_steps(1, 3)) == [0, 0, 0]


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_episodes_command_accepts_each_real_layout(prefect_harness, tmp_path: Path, layout: str, capsys) -> None:
    """`fvlp episodes --fs2k-sde ROOT` on each layout: counts printed and in the manifest; train
    episodes keep every recorded step, test episodes the T evaluation uses."""
    from flows.cli import main
    from storage.episodes import episode_lengths, read_episodes_manifest

    root = BUILDERS[layout](tmp_path / "fs2k")
    data = tmp_path / "data"
    assert main(["episodes", "--fs2k-sde", str(root), "--data-root", str(data), "--steps-per-episode", "3"]) == 0
    expected = fs2k_counts(load_fs2k_sde(root))
    assert ast.literal_eval(capsys.readouterr().out.strip())["found"] == expected
    manifest = read_episodes_manifest(data / "episodes")
    assert (manifest["layout"], manifest["found"], manifest["steps"]) == (layout, expected, 3)
    assert set(episode_lengths(data / "episodes", "train").values()) == {TRAIN_STEPS}
    assert set(episode_lengths(data / "episodes", "test").values()) == {3}
