"""Sketch-episode datasets: ``episodes_dir/photos/`` and ``episodes_dir/sketches/``.

Both are sharded Parquet (see :mod:`storage.shards`). Shard ``k`` of ``photos`` and shard
``k`` of ``sketches`` hold the same episodes; the sketches shard is written first, so an
existing photos shard means the chunk is complete and a rerun can skip it. The manifest
(written last) records the build settings; :func:`is_complete` compares it with the
settings of the requested build.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.files import content_fingerprint
from storage.shards import (
    DatasetError,
    ShardedValues,
    list_shards,
    read_manifest,
    shard_index,
    shard_path,
    write_manifest,
    write_shard,
)

PHOTO_SCHEMA = pa.schema(
    [
        pa.field("photo_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
SKETCH_SCHEMA = pa.schema(
    [
        pa.field("photo_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
    ]
)


def photos_dir(episodes_dir: Path) -> Path:
    return Path(episodes_dir) / "photos"


def sketches_dir(episodes_dir: Path) -> Path:
    return Path(episodes_dir) / "sketches"


def write_episode_chunk(
    episodes_dir: Path, index: int, photos: Sequence[dict[str, Any]], sketches: Sequence[dict[str, Any]]
) -> None:
    """Write chunk ``index``: sketches first, then photos (the photos shard marks it complete)."""
    sketch_ids = {row["photo_id"] for row in sketches}
    photo_ids = [row["photo_id"] for row in photos]
    if sketch_ids != set(photo_ids):
        raise ValueError(
            f"episode chunk {index}: photos and sketches disagree on photo ids "
            f"(only photos: {sorted(set(photo_ids) - sketch_ids)[:5]}, "
            f"only sketches: {sorted(sketch_ids - set(photo_ids))[:5]})"
        )
    write_shard(
        pa.Table.from_pylist(list(sketches), schema=SKETCH_SCHEMA),
        shard_path(sketches_dir(episodes_dir), index),
        row_group_per="photo_id",  # SketchSteps reads one photo's sketches without the rest
    )
    write_shard(pa.Table.from_pylist(list(photos), schema=PHOTO_SCHEMA), shard_path(photos_dir(episodes_dir), index))


def complete_chunks(episodes_dir: Path) -> set[int]:
    """Chunk indices whose photos shard (written last) and sketches shard both exist."""
    sketches = {shard_index(p) for p in list_shards(sketches_dir(episodes_dir))}
    return {shard_index(p) for p in list_shards(photos_dir(episodes_dir))} & sketches


def drop_chunks_from(episodes_dir: Path, first_stale: int) -> None:
    """Remove chunk shards with index >= ``first_stale`` (a rebuild with fewer chunks)."""
    for folder in (photos_dir(episodes_dir), sketches_dir(episodes_dir)):
        for path in list_shards(folder):
            if shard_index(path) >= first_stale:
                path.unlink()


def write_episodes_manifest(episodes_dir: Path, manifest: dict[str, Any]) -> None:
    write_manifest(Path(episodes_dir), {**manifest, "complete": True})


def clear_episodes_manifest(episodes_dir: Path) -> None:
    """Mark a build as in progress (a missing manifest = not complete)."""
    (Path(episodes_dir) / "manifest.json").unlink(missing_ok=True)


def read_episodes_manifest(episodes_dir: Path) -> dict[str, Any]:
    return read_manifest(Path(episodes_dir))


def is_complete(episodes_dir: Path, expected: dict[str, Any]) -> bool:
    """True when a finished build with the same settings (every key of ``expected``) is on disk."""
    manifest = read_episodes_manifest(episodes_dir)
    if not manifest.get("complete"):
        return False
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    return len(complete_chunks(episodes_dir)) == manifest.get("chunks")


def _split_filter(table: pa.Table, split: str | None) -> pa.Table:
    return table if split is None else table.filter(pc.equal(table["split"], split))


def read_photos(episodes_dir: Path, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Episode photos (optionally one split), in chunk order."""
    shards = list_shards(photos_dir(episodes_dir))
    if not shards:
        raise FileNotFoundError(f"no episode photos in {photos_dir(episodes_dir)} (build the episodes first)")
    wanted = None if columns is None else sorted(set(columns) | {"split"}, key=PHOTO_SCHEMA.names.index)
    table = pa.concat_tables([_split_filter(pq.read_table(p, columns=wanted), split) for p in shards])
    return table if columns is None else table.select(columns)


class EpisodePhotos(ShardedValues[str, bytes]):
    """Encoded photos of one split by photo id, one photo shard's in memory at a time
    (:class:`ShardedValues`); ``shard_of`` lists the split's ids in chunk order."""

    def __init__(self, episodes_dir: Path, split: str):
        folder = photos_dir(episodes_dir)
        self.missing_message = f"{folder}: no {split} photo {{key}} ({{count}} missing)"

        def photos_of(shard: Path) -> dict[str, bytes]:
            table = _split_filter(pq.read_table(shard, columns=["photo_id", "split", "image"]), split)
            return dict(zip(table["photo_id"].to_pylist(), table["image"].to_pylist()))

        def ids_of(shard: Path) -> list[str]:
            return _split_filter(pq.read_table(shard, columns=["photo_id", "split"]), split)["photo_id"].to_pylist()

        super().__init__(list_shards(folder), ids_of, photos_of)


def iter_sketch_chunks(
    episodes_dir: Path, split: str | None = None, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """Sketch rows chunk by chunk (one shard in memory at a time), sorted by photo then step.

    ``columns`` (besides photo_id, split and step, always read) limits what is read: counting
    steps needs no image bytes."""
    wanted = None if columns is None else sorted({"photo_id", "split", "step", *columns}, key=SKETCH_SCHEMA.names.index)
    for path in list_shards(sketches_dir(episodes_dir)):
        table = _split_filter(pq.read_table(path, columns=wanted), split)
        if table.num_rows:
            yield table.sort_by([("photo_id", "ascending"), ("step", "ascending")])


def read_episodes_reference(episodes_dir: Path) -> dict[str, Any]:
    """What a later stage needs of a finished episodes build: its folder, settings and fingerprint.

    Raises :class:`DatasetError` when no complete build is there: later stages read
    episodes, only the episodes stage writes them.
    """
    episodes_dir = Path(episodes_dir)
    manifest = read_episodes_manifest(episodes_dir)
    if not manifest.get("complete") or len(complete_chunks(episodes_dir)) != manifest.get("chunks"):
        raise DatasetError(f"{episodes_dir} holds no complete episodes build: run `fvlp episodes` first")
    shards = list_shards(photos_dir(episodes_dir)) + list_shards(sketches_dir(episodes_dir))
    return {
        "episodes_dir": str(episodes_dir),
        "source": manifest["source"],
        "steps": manifest["steps"],
        # "all recorded" when train episodes keep every recorded step (FS2K-SDE), else T like test.
        "train_steps": manifest.get("train_steps", manifest["steps"]),
        "photos": manifest["photos"],
        "splits": manifest["splits"],
        "skipped": manifest.get("skipped", {}),
        "found": manifest.get("found", {}),
        "fingerprint": content_fingerprint(shards, manifest["input_fingerprint"]),
    }


def episode_photos(episodes_dir: Path, split: str) -> pa.Table:
    """``photo_id``, ``image`` (encoded bytes), ``caption`` of one split, in photo_id order."""
    table = read_photos(episodes_dir, split, columns=["photo_id", "image", "caption"])
    if table.num_rows == 0:
        raise DatasetError(f"{photos_dir(episodes_dir)} has no {split!r} photos")
    return table.sort_by("photo_id")


def episode_lengths(episodes_dir: Path, split: str) -> dict[str, int]:
    """Number of sketch steps per photo of ``split`` (steps must be 0..T-1 without gaps)."""
    steps: dict[str, list[int]] = {}
    for chunk in iter_sketch_chunks(episodes_dir, split, columns=[]):
        for photo_id, step in zip(chunk.column("photo_id").to_pylist(), chunk.column("step").to_pylist()):
            steps.setdefault(photo_id, []).append(step)
    lengths = {}
    for photo_id, found in steps.items():
        if sorted(found) != list(range(len(found))):
            raise DatasetError(
                f"{sketches_dir(episodes_dir)}: photo_id {photo_id} has steps {sorted(found)[:10]}..., expected 0..T-1"
            )
        lengths[photo_id] = len(found)
    return lengths


class SketchSteps:
    """Single sketch steps of one split, read by photo id.

    Each photo's sketches are one row group of their shard (``write_episode_chunk``), so the
    shards' statistics say where a photo is and a read decodes only the photos asked for. A
    build written before that layout still reads correctly, a row group at a time.
    """

    def __init__(self, episodes_dir: Path, split: str):
        self.episodes_dir = Path(episodes_dir)
        self.split = split
        self.shards = list_shards(sketches_dir(self.episodes_dir))
        self.row_groups: dict[str, set[tuple[int, int]]] = {}  # photo_id -> {(shard, row group)}
        for number, path in enumerate(self.shards):
            shard = pq.ParquetFile(path)
            for group in range(shard.metadata.num_row_groups):
                for photo_id in self._photo_ids(shard, group):
                    self.row_groups.setdefault(photo_id, set()).add((number, group))

    def _photo_ids(self, shard: pq.ParquetFile, group: int) -> list[str]:
        """Photo ids of ``split`` in one row group: from its statistics when it holds one photo."""
        metadata = shard.metadata.row_group(group)
        columns = {metadata.column(i).path_in_schema: i for i in range(metadata.num_columns)}
        ids, splits = (metadata.column(columns[name]).statistics for name in ("photo_id", "split"))
        if ids is not None and splits is not None and ids.has_min_max and splits.has_min_max:
            if ids.min == ids.max and splits.min == splits.max:
                return [ids.min] if splits.min == self.split else []
        table = shard.read_row_group(group, columns=["photo_id", "split"])
        return sorted(set(_split_filter(table, self.split).column("photo_id").to_pylist()))

    def sketches_of(self, photo_ids: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """(photo_id, step, PNG bytes) of every sketch of ``photo_ids`` in this split, reading only
        their row groups, one shard's at a time."""
        wanted = set(photo_ids)
        by_shard: dict[int, set[int]] = {}
        for photo_id in wanted:
            for number, group in self.row_groups.get(photo_id, ()):
                by_shard.setdefault(number, set()).add(group)
        for number, groups in sorted(by_shard.items()):
            table = pq.ParquetFile(self.shards[number]).read_row_groups(
                sorted(groups), columns=["photo_id", "split", "step", "image"]
            )
            for photo_id, split, step, image in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                if split == self.split and photo_id in wanted:
                    yield photo_id, step, image

    def read(self, wanted: dict[str, int]) -> dict[str, bytes]:
        """The sketch image at step ``wanted[photo_id]`` for every photo in ``wanted``."""
        found = {photo_id: image for photo_id, step, image in self.sketches_of(wanted) if wanted[photo_id] == step}
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise DatasetError(
                f"{sketches_dir(self.episodes_dir)}: no {self.split} sketch for photo_id {missing[0]} step "
                f"{wanted[missing[0]]} ({len(missing)} missing)"
            )
        return found
