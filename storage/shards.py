"""Sharded Parquet datasets with an atomic commit protocol.

A dataset is a folder of ``shard-NNNNN.parquet`` files plus ``manifest.json``.
A shard is written whole or not at all (:mod:`storage.files`), so a shard that exists
under its final name is complete.
The manifest is a summary rewritten (atomically) after each shard; shard files
are the source of truth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import files

SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.parquet$")
MANIFEST_NAME = "manifest.json"


def shard_path(dataset_dir: Path, index: int) -> Path:
    return Path(dataset_dir) / f"shard-{index:05d}.parquet"


def write_shard(table: pa.Table, path: Path, schema: pa.Schema | None = None, row_group_per: str | None = None) -> Path:
    """Write ``table`` to ``path`` atomically (temp file + rename), casting to ``schema`` if given.

    ``row_group_per``: a column; each run of equal values in it becomes its own row group, so
    a reader finds one value's rows from the file's statistics and decodes only those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    tmp = files.temp_path(path)
    compression = column_compression(table.schema)
    if row_group_per is None or table.num_rows == 0:
        pq.write_table(table, tmp, compression=compression)
    else:
        values = table.column(row_group_per)
        changes = pc.not_equal(values.slice(1), values.slice(0, table.num_rows - 1))
        starts = [0, *(pc.indices_nonzero(changes).to_numpy() + 1).tolist(), table.num_rows]
        with pq.ParquetWriter(tmp, table.schema, compression=compression) as writer:
            for start, stop in zip(starts, starts[1:]):
                writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)
    files.commit(tmp, path)
    return path


def column_compression(schema: pa.Schema) -> dict[str, str]:
    """zstd for every column but binary ones: those hold encoded images (JPEG, PNG), which zstd
    shrinks by about 2% at twice the write time (500 web JPEGs: 8.87 -> 8.67 MB, 8 -> 18 ms).
    Keyed by Parquet leaf path, as pyarrow reads it (a leaf left out is not compressed)."""
    binary = (pa.binary(), pa.large_binary())
    return {
        path: "none" if leaf in binary else "zstd"
        for field in schema
        for path, leaf in _parquet_leaves(field.name, field.type)
    }


def _parquet_leaves(path: str, arrow_type: pa.DataType) -> Iterator[tuple[str, pa.DataType]]:
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        yield from _parquet_leaves(f"{path}.list.element", arrow_type.value_type)
    elif pa.types.is_struct(arrow_type):
        for child in arrow_type:
            yield from _parquet_leaves(f"{path}.{child.name}", child.type)
    elif pa.types.is_map(arrow_type):
        yield from _parquet_leaves(f"{path}.key_value.key", arrow_type.key_type)
        yield from _parquet_leaves(f"{path}.key_value.value", arrow_type.item_type)
    else:
        yield path, arrow_type


def list_shards(dataset_dir: Path) -> list[Path]:
    """Complete shards, in index order (temp files are never listed)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        return []
    return sorted(p for p in dataset_dir.iterdir() if SHARD_PATTERN.match(p.name))


def shard_index(path: Path) -> int:
    match = SHARD_PATTERN.match(Path(path).name)
    if not match:
        raise ValueError(f"not a shard file name: {path}")
    return int(match.group(1))


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


Key = TypeVar("Key", int, str)
Value = TypeVar("Value")


class ShardedValues(Generic[Key, Value]):
    """One column's values by key across a dataset's shards.

    It knows which shard holds each key (``keys_of`` each shard, read once) and keeps the
    values of the last shard it read, so a caller asking in shard order (``shard_of``'s
    order) reads every shard once, with one shard's values in memory at a time.
    """

    # ``read``'s error for keys no shard holds; subclasses name their dataset and key.
    missing_message = "no value for key {key} ({count} missing)"

    def __init__(
        self,
        shards: list[Path],
        keys_of: Callable[[Path], Iterable[Key]],
        values_of: Callable[[Path], dict[Key, Value]],
    ):
        self.shards = shards
        self.values_of: Callable[[Path], dict[Key, Value]] = values_of
        self.shard_of: dict[Key, int] = {key: number for number, path in enumerate(shards) for key in keys_of(path)}
        self._cached: tuple[int, dict[Key, Value]] = (-1, {})

    def read(self, keys: Iterable[Key]) -> dict[Key, Value]:
        """Values of ``keys``; a key no shard holds is a KeyError."""
        wanted = set(keys)
        missing = sorted(k for k in wanted if k not in self.shard_of)
        if missing:
            raise KeyError(self.missing_message.format(key=missing[0], count=len(missing)))
        found: dict[Key, Value] = {}
        for number in sorted({self.shard_of[k] for k in wanted}):
            if self._cached[0] != number:
                self._cached = (number, self.values_of(self.shards[number]))
            values = self._cached[1]
            found.update((k, values[k]) for k in wanted if self.shard_of[k] == number)
        return found


def read_shards(shards: list[Path], columns: list[str] | None = None) -> pa.Table:
    """``shards`` as one table, in the order given."""
    return pa.concat_tables([read_shard(p, columns) for p in shards], promote_options="default")


def read_dataset(dataset_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """All complete shards of a dataset as one table (FileNotFoundError if none)."""
    shards = list_shards(dataset_dir)
    if not shards:
        raise FileNotFoundError(f"no shards in {dataset_dir}")
    return read_shards(shards, columns)


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_manifest(dataset_dir: Path, manifest: dict[str, Any]) -> Path:
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    return files.write_text_atomic(
        dataset_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True, default=str)
    )


def shard_rows(path: Path) -> int:
    """Row count from the footer alone."""
    return pq.ParquetFile(path).metadata.num_rows


def dataset_fingerprint(*dataset_dirs: Path) -> str:
    """Content fingerprint of every complete shard of the datasets (the results store's dataset
    identity): the same shards give the same fingerprint wherever they are."""
    return files.content_fingerprint(shard for folder in dataset_dirs for shard in list_shards(folder))


class DatasetError(ValueError):
    """A dataset that violates its contract; the message names the file and the record."""
