"""FS2K-SDE ("sketch drawing episodes") in the layouts it is found in.

* ``fvlp-reference``: the layout the FVLP and FLIP reference code reads. Annotation JSON
  lists in ``<root>/annotation/`` (``fs2ksde_train.json`` / ``fs2ksde_test.json``; FLIP's
  ``fs2ksde_{train,test}_v2.json``; SDE2's ``train_450.json`` / ``test_450.json``), every
  path relative to the separate image root ``<root>/images/``. Train rows
  ``{photo, photo_id, caption: str, sketch_sde: [every recorded step]}``, possibly several
  rows per photo (one per caption); test rows ``{photo, caption: [str], sketch_sde: [50
  paths]}`` without ``photo_id``, which is then derived from the photo path.
* ``slfir``: the SLFIR code's folders, no JSON and no captions: ``<root>/comp/{train,test}/
  photo/*`` and ``<root>/sketch-seq/{train,test}/<one folder per photo>/<step images>``,
  photos and sketch folders paired in sorted order, steps in natural name order.
* ``fvlp``: ``train.json`` / ``test.json`` in the root or ``annotations/``, rows as the
  reference's, paths relative to the root.

:func:`detect_layout` finds which one a root holds; a root matching none fails with one
message listing every place looked for. FS2K-SDE records about 70 steps per photo while the
reference evaluation uses 50: :func:`select_steps` picks ``T`` evenly spaced steps that
always end on the finished sketch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

SPLITS = ("train", "test")
LAYOUTS = ("fvlp-reference", "slfir", "fvlp")
# Reference annotation file names (train, test) in <root>/annotation/, in the order they are tried.
REFERENCE_ANNOTATIONS = (
    ("fs2ksde_train.json", "fs2ksde_test.json"),  # FVLP, FS2K-SDE1
    ("fs2ksde_train_v2.json", "fs2ksde_test_v2.json"),  # FLIP
    ("train_450.json", "test_450.json"),  # FVLP, FS2K-SDE2
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class FS2KFormatError(ValueError):
    """An annotation row, file or folder that does not follow an FS2K-SDE layout."""


@dataclass(frozen=True)
class FS2KEpisode:
    photo_id: str
    split: str
    photo_path: Path
    captions: tuple[str, ...]  # empty in the SLFIR layout, which has none
    sketch_paths: tuple[Path, ...]  # drawing order, cumulative


@dataclass(frozen=True)
class FS2KSource:
    """Where one layout keeps its splits: an annotation file (or folder) and an image root per split."""

    layout: str
    files: dict[str, Path]
    image_root: Path


def _reference_source(root: Path) -> FS2KSource | None:
    for train, test in REFERENCE_ANNOTATIONS:
        files = {"train": root / "annotation" / train, "test": root / "annotation" / test}
        if any(path.is_file() for path in files.values()):
            return FS2KSource("fvlp-reference", files, root / "images")
    return None


def _fvlp_source(root: Path) -> FS2KSource | None:
    files = {}
    for split in SPLITS:
        found = [p for p in (root / f"{split}.json", root / "annotations" / f"{split}.json") if p.is_file()]
        if found:
            files[split] = found[0]
    return FS2KSource("fvlp", files, root) if files else None


def _slfir_source(root: Path) -> FS2KSource | None:
    files = {split: root / "comp" / split / "photo" for split in SPLITS}
    if any(path.is_dir() for path in files.values()) and (root / "sketch-seq").is_dir():
        return FS2KSource("slfir", files, root)
    return None


FINDERS = {"fvlp-reference": _reference_source, "slfir": _slfir_source, "fvlp": _fvlp_source}


def places_looked(root: Path) -> list[str]:
    reference = [str(root / "annotation" / name) for pair in REFERENCE_ANNOTATIONS for name in pair]
    fvlp = [str(p) for split in SPLITS for p in (root / f"{split}.json", root / "annotations" / f"{split}.json")]
    slfir = [str(root / "comp" / split / "photo") for split in SPLITS] + [str(root / "sketch-seq")]
    return reference + fvlp + slfir


def detect_layout(root: Path, layout: str = "auto") -> FS2KSource:
    """The layout ``root`` holds (or the one forced by ``layout``), with its files."""
    root = Path(root)
    if layout != "auto" and layout not in FINDERS:
        raise ValueError(f"unknown FS2K-SDE layout {layout!r}; expected auto or one of {LAYOUTS}")
    for name in LAYOUTS if layout == "auto" else (layout,):
        found = FINDERS[name](root)
        if found is not None:
            return found
    wanted = "any FS2K-SDE layout" if layout == "auto" else f"the {layout} layout"
    raise FileNotFoundError(f"{root} does not hold {wanted}; looked for " + ", ".join(places_looked(root)))


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


def derived_photo_id(photo: str) -> str:
    """A photo id from its relative path (the reference's test rows carry none): path without extension."""
    return PurePosixPath(photo.replace("\\", "/")).with_suffix("").as_posix()


def _parse_row(row: Any, index: int, split: str, image_root: Path, source: Path, check_files: bool) -> FS2KEpisode:
    where = f"{source} row {index}"
    required = ("photo", "caption", "sketch_sde")
    if not isinstance(row, dict):
        raise FS2KFormatError(f"{where}: expected an object with keys {list(required)}, got {type(row).__name__}")
    if "photo_id" in row:
        where += f" (photo_id {row['photo_id']!r})"
    missing = [k for k in required if k not in row]
    if missing:
        raise FS2KFormatError(f"{where}: missing key(s) {missing}")
    photo, sketches = row["photo"], row["sketch_sde"]
    if not isinstance(photo, str) or not photo:
        raise FS2KFormatError(f"{where}: 'photo' must be a relative path string, got {photo!r:.80}")
    photo_id = row.get("photo_id", derived_photo_id(photo))
    if not isinstance(photo_id, (str, int)) or isinstance(photo_id, bool):
        raise FS2KFormatError(f"{where}: 'photo_id' must be a string or integer, got {photo_id!r:.80}")
    if not isinstance(sketches, list) or not sketches or not all(isinstance(s, str) and s for s in sketches):
        raise FS2KFormatError(f"{where}: 'sketch_sde' must be a non-empty list of relative paths")
    episode = FS2KEpisode(
        photo_id=str(photo_id),
        split=split,
        photo_path=image_root / photo,
        captions=_captions(row["caption"], where),
        sketch_paths=tuple(image_root / s for s in sketches),
    )
    if check_files:
        _check_files(episode, where)
    return episode


def _check_files(episode: FS2KEpisode, where: str) -> None:
    absent = [p for p in (episode.photo_path, *episode.sketch_paths) if not p.is_file()]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise FS2KFormatError(f"{where}: file not found: {absent[0]}{more}")


def _annotated_split(source: FS2KSource, split: str, check_files: bool) -> list[FS2KEpisode]:
    """One split's rows; rows repeating a photo (one per caption) become one episode with every caption."""
    path = source.files[split]
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FS2KFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(rows, list):
        raise FS2KFormatError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    episodes: dict[str, FS2KEpisode] = {}
    first_row: dict[str, int] = {}
    for index, row in enumerate(rows):
        episode = _parse_row(row, index, split, source.image_root, path, check_files)
        known = episodes.get(episode.photo_id)
        if known is None:
            episodes[episode.photo_id], first_row[episode.photo_id] = episode, index
        elif (known.photo_path, known.sketch_paths) == (episode.photo_path, episode.sketch_paths):
            episodes[episode.photo_id] = replace(known, captions=known.captions + episode.captions)
        else:
            raise FS2KFormatError(
                f"{path} row {index}: photo_id {episode.photo_id!r} already used in row "
                f"{first_row[episode.photo_id]} for another photo or sketch sequence"
            )
    return list(episodes.values())


def _natural_key(path: Path) -> list:
    """Name order with numbers compared as numbers, so step 10 follows step 9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def _slfir_split(source: FS2KSource, split: str) -> list[FS2KEpisode]:
    photo_dir, sketch_dir = source.files[split], source.image_root / "sketch-seq" / split
    if not photo_dir.is_dir():
        raise FS2KFormatError(f"{photo_dir}: missing (the SLFIR layout keeps each split's photos there)")
    if not sketch_dir.is_dir():
        raise FS2KFormatError(f"{sketch_dir}: missing (the SLFIR layout keeps one sketch folder per photo there)")
    photos = sorted(p for p in photo_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    sequences = sorted(p for p in sketch_dir.iterdir() if p.is_dir())
    if len(photos) != len(sequences):
        raise FS2KFormatError(
            f"{photo_dir} has {len(photos)} photos but {sketch_dir} has {len(sequences)} sketch folders; "
            "the SLFIR layout pairs them one to one in sorted order"
        )
    episodes = []
    for photo, sequence in zip(photos, sequences):
        steps = _images(sequence)
        if not steps:
            raise FS2KFormatError(f"{sequence}: no sketch images (paired with {photo.name})")
        episodes.append(FS2KEpisode(photo.stem, split, photo, (), tuple(steps)))
    return episodes


def input_files(source: FS2KSource) -> list[Path]:
    """The files whose change means the episodes must be rebuilt: the annotations, or (SLFIR,
    which has none) every photo and step image."""
    if source.layout != "slfir":
        return [path for path in source.files.values() if path.is_file()]
    folders = [source.files[split] for split in SPLITS] + [source.image_root / "sketch-seq" / s for s in SPLITS]
    return sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file())


def load_fs2k_sde(
    root: Path, splits: Iterable[str] = SPLITS, check_files: bool = True, layout: str = "auto"
) -> list[FS2KEpisode]:
    """Every episode of ``splits`` under ``root``; a malformed row raises naming file, row and problem."""
    source = detect_layout(Path(root), layout)
    episodes: list[FS2KEpisode] = []
    seen: dict[str, str] = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown FS2K-SDE split {split!r} (expected one of {SPLITS})")
        if source.layout != "slfir" and not source.files.get(split, Path()).is_file():
            raise FileNotFoundError(f"FS2K-SDE root {root} ({source.layout} layout) has no {split} annotation file")
        found = (
            _slfir_split(source, split) if source.layout == "slfir" else _annotated_split(source, split, check_files)
        )
        for episode in found:
            if episode.photo_id in seen:
                raise FS2KFormatError(
                    f"photo_id {episode.photo_id!r} of {split} already used in {seen[episode.photo_id]}"
                )
            seen[episode.photo_id] = split
        episodes += found
    return episodes


def fs2k_counts(episodes: list[FS2KEpisode]) -> dict[str, dict[str, int]]:
    """Photos, recorded sketches and captions per split: what a user checks against the paper's figures."""
    counts: dict[str, dict[str, int]] = {}
    for episode in episodes:
        split = counts.setdefault(episode.split, {"photos": 0, "sketches": 0, "captions": 0})
        split["photos"] += 1
        split["sketches"] += len(episode.sketch_paths)
        split["captions"] += len(episode.captions)
    return counts


def select_steps(available: int, steps: int) -> np.ndarray:
    """Indices of ``steps`` evenly spaced drawing steps out of ``available``, ending on the last one.

    With fewer recorded steps than ``steps`` some are repeated, so every episode has length T.
    """
    if available < 1 or steps < 1:
        raise ValueError(f"need at least one recorded and one requested step, got {available} and {steps}")
    # Step t shows the drawing once (t + 1) / T of it is done: ceil((t + 1) * available / T) - 1.
    done = np.arange(1, steps + 1, dtype=np.int64) * available
    return -(-done // steps) - 1
