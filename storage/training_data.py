"""Readers for training: face crop/caption pairs from the clean stage (streamed shard by
shard), and photos and sketch steps from the episode stage (through :mod:`storage.episodes`)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.episodes import iter_sketch_chunks, photos_dir, read_photos, sketches_dir
from storage.shards import list_shards

FACE_PAIR_COLUMNS = ["SAMPLE_ID", "crop", "caption"]


class TrainingDataError(ValueError):
    """Training input that violates the stage contract (message names the file and record)."""


def faces_dir(clean_dir: Path) -> Path:
    return Path(clean_dir) / "faces"


def face_shards(clean_dir: Path) -> list[Path]:
    shards = list_shards(faces_dir(clean_dir))
    if not shards:
        raise FileNotFoundError(f"no face shards in {faces_dir(clean_dir)}: run the clean stage first")
    return shards


def face_sample_ids(shard: Path) -> list[int]:
    return pq.read_table(shard, columns=["SAMPLE_ID"]).column("SAMPLE_ID").to_pylist()


def read_face_pairs(shard: Path) -> pa.Table:
    """``SAMPLE_ID``, ``crop`` (PNG bytes), ``caption`` of one shard; a row without crop or caption is an error."""
    table = pq.read_table(shard, columns=FACE_PAIR_COLUMNS)
    for column in ("crop", "caption"):
        values = table.column(column)
        bad = pc.or_(pc.is_null(values), pc.equal(pc.binary_length(values), 0))
        if pc.any(bad).as_py():
            sample_id = table.filter(bad).column("SAMPLE_ID")[0].as_py()
            raise TrainingDataError(f"{shard}: SAMPLE_ID {sample_id} has an empty {column!r}")
    return table


def episode_photos(episodes_dir: Path, split: str) -> pa.Table:
    """``photo_id``, ``image`` (PNG), ``caption`` of one split, in photo_id order."""
    table = read_photos(episodes_dir, split, columns=["photo_id", "image", "caption"])
    if table.num_rows == 0:
        raise TrainingDataError(f"{photos_dir(episodes_dir)} has no {split!r} photos")
    return table.sort_by("photo_id")


def iter_sketches(episodes_dir: Path, split: str) -> Iterator[tuple[str, int, bytes]]:
    """(photo_id, step, PNG bytes) of every sketch of ``split``, one chunk in memory at a time."""
    for chunk in iter_sketch_chunks(episodes_dir, split):
        yield from zip(*(chunk.column(c).to_pylist() for c in ("photo_id", "step", "image")))


def episode_lengths(episodes_dir: Path, split: str) -> dict[str, int]:
    """Number of sketch steps per photo of ``split`` (steps must be 0..T-1 without gaps)."""
    steps: dict[str, list[int]] = {}
    for chunk in iter_sketch_chunks(episodes_dir, split):
        for photo_id, step in zip(chunk.column("photo_id").to_pylist(), chunk.column("step").to_pylist()):
            steps.setdefault(photo_id, []).append(step)
    lengths = {}
    for photo_id, found in steps.items():
        if sorted(found) != list(range(len(found))):
            raise TrainingDataError(f"{sketches_dir(episodes_dir)}: photo_id {photo_id} has steps "
                                    f"{sorted(found)[:10]}..., expected 0..T-1")
        lengths[photo_id] = len(found)
    return lengths


def read_sketch_steps(episodes_dir: Path, split: str, wanted: dict[str, int]) -> dict[str, bytes]:
    """The sketch image at step ``wanted[photo_id]`` for every photo in ``wanted``."""
    found = {}
    for photo_id, step, image in iter_sketches(episodes_dir, split):
        if wanted.get(photo_id) == step:
            found[photo_id] = image
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise TrainingDataError(f"{sketches_dir(episodes_dir)}: no sketch for photo_id {missing[0]} step "
                                f"{wanted[missing[0]]} ({len(missing)} missing)")
    return found
