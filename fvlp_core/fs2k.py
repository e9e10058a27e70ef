"""FS2K-SDE ("sketch drawing episodes") loader.

Layout: a root folder with one JSON annotation file per split, ``train.json`` and
``test.json`` (looked up in the root, then in ``annotations/``). Each file is a JSON list
with one row per photo, paths relative to the root::

    {"photo": "photos/0001.jpg", "photo_id": "0001",
     "caption": "a young woman ..."            (train: a string; test: a list of strings)
     "sketch_sde": ["sketches/0001/0.png", ...] (cumulative sketches, one per drawing step)}

FS2K-SDE records about 70 steps per photo while the reference evaluation uses 50:
:func:`select_steps` picks ``T`` evenly spaced steps that always end on the finished sketch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "test")
REQUIRED_KEYS = ("photo", "photo_id", "caption", "sketch_sde")


class FS2KFormatError(ValueError):
    """An annotation row or file that does not follow the FS2K-SDE layout."""


@dataclass(frozen=True)
class FS2KEpisode:
    photo_id: str
    split: str
    photo_path: Path
    captions: tuple[str, ...]
    sketch_paths: tuple[Path, ...]  # drawing order, cumulative


def annotation_path(root: Path, split: str) -> Path:
    root = Path(root)
    for candidate in (root / f"{split}.json", root / "annotations" / f"{split}.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"FS2K-SDE root {root} has no {split}.json (looked in {root} and {root / 'annotations'})")


def _captions(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        captions = (value,)
    elif isinstance(value, list) and all(isinstance(c, str) for c in value):
        captions = tuple(value)
    else:
        raise FS2KFormatError(f"{where}: 'caption' must be a string or a list of strings, got {value!r:.80}")
    if not captions or not all(c.strip() for c in captions):
        raise FS2KFormatError(f"{where}: 'caption' is empty")
    return captions


def _parse_row(row: Any, index: int, split: str, root: Path, source: Path, check_files: bool) -> FS2KEpisode:
    where = f"{source} row {index}"
    if not isinstance(row, dict):
        raise FS2KFormatError(f"{where}: expected an object with keys {list(REQUIRED_KEYS)}, got {type(row).__name__}")
    if "photo_id" in row:
        where += f" (photo_id {row['photo_id']!r})"
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise FS2KFormatError(f"{where}: missing key(s) {missing}")
    photo, photo_id, sketches = row["photo"], row["photo_id"], row["sketch_sde"]
    if not isinstance(photo, str) or not photo:
        raise FS2KFormatError(f"{where}: 'photo' must be a relative path string, got {photo!r:.80}")
    if not isinstance(photo_id, (str, int)) or isinstance(photo_id, bool):
        raise FS2KFormatError(f"{where}: 'photo_id' must be a string or integer, got {photo_id!r:.80}")
    if not isinstance(sketches, list) or not sketches or not all(isinstance(s, str) and s for s in sketches):
        raise FS2KFormatError(f"{where}: 'sketch_sde' must be a non-empty list of relative paths")
    episode = FS2KEpisode(
        photo_id=str(photo_id),
        split=split,
        photo_path=root / photo,
        captions=_captions(row["caption"], where),
        sketch_paths=tuple(root / s for s in sketches),
    )
    if check_files:
        absent = [p for p in (episode.photo_path, *episode.sketch_paths) if not p.is_file()]
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            raise FS2KFormatError(f"{where}: file not found: {absent[0]}{more}")
    return episode


def load_fs2k_sde(root: Path, splits: Iterable[str] = SPLITS, check_files: bool = True) -> list[FS2KEpisode]:
    """Every episode of ``splits`` under ``root``; a malformed row raises naming file, row and problem."""
    root = Path(root)
    episodes: list[FS2KEpisode] = []
    seen: dict[str, Path] = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown FS2K-SDE split {split!r} (expected one of {SPLITS})")
        source = annotation_path(root, split)
        try:
            rows = json.loads(source.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise FS2KFormatError(f"{source}: not valid JSON ({err})") from err
        if not isinstance(rows, list):
            raise FS2KFormatError(f"{source}: expected a JSON list of rows, got {type(rows).__name__}")
        for index, row in enumerate(rows):
            episode = _parse_row(row, index, split, root, source, check_files)
            if episode.photo_id in seen:
                raise FS2KFormatError(
                    f"{source} row {index}: photo_id {episode.photo_id!r} already used in {seen[episode.photo_id]}"
                )
            seen[episode.photo_id] = source
            episodes.append(episode)
    return episodes


def select_steps(available: int, steps: int) -> np.ndarray:
    """Indices of ``steps`` evenly spaced drawing steps out of ``available``, ending on the last one.

    With fewer recorded steps than ``steps`` some are repeated, so every episode has length T.
    """
    if available < 1 or steps < 1:
        raise ValueError(f"need at least one recorded and one requested step, got {available} and {steps}")
    # Step t shows the drawing once (t + 1) / T of it is done: ceil((t + 1) * available / T) - 1.
    done = np.arange(1, steps + 1, dtype=np.int64) * available
    return -(-done // steps) - 1
