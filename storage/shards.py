"""Sharded Parquet datasets with an atomic commit protocol.

A dataset is a folder of ``shard-NNNNN.parquet`` files plus ``manifest.json``.
A shard is written under a temporary name and renamed into place, so a shard
that exists under its final name is complete: a process that dies mid-write
leaves only a ``.tmp`` file, which readers ignore and the next write of that file removes.
The manifest is a summary rewritten (atomically) after each shard; shard files
are the source of truth.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.parquet$")
MANIFEST_NAME = "manifest.json"


def shard_path(dataset_dir: Path, index: int) -> Path:
    return Path(dataset_dir) / f"shard-{index:05d}.parquet"


def _atomic_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    remove_orphan_temp_files(final)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphan_temp_files(final: Path) -> list[Path]:
    """Delete temp files of ``final`` left by writers that died mid-write (their process is gone).

    A killed writer never reaches its rename, so its ``.<name>.tmp-<pid>`` stays behind;
    the next successful write of the same file clears it. Temp files of live processes
    are left alone.
    """
    final = Path(final)
    removed = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_shard(table: pa.Table, path: Path, schema: pa.Schema | None = None) -> Path:
    """Write ``table`` to ``path`` atomically (temp file + rename), casting to ``schema`` if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    _atomic_replace(tmp, path)
    return path


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


def read_dataset(dataset_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """All complete shards of a dataset as one table (empty table if none)."""
    shards = list_shards(dataset_dir)
    if not shards:
        raise FileNotFoundError(f"no shards in {dataset_dir}")
    return pa.concat_tables([read_shard(p, columns) for p in shards], promote_options="default")


def iter_batches(dataset_dir: Path, columns: list[str] | None = None, batch_size: int = 256) -> Iterator[pa.RecordBatch]:
    """Stream a dataset shard by shard without loading it whole."""
    for path in list_shards(dataset_dir):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_manifest(dataset_dir: Path, manifest: dict[str, Any]) -> Path:
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    final = dataset_dir / MANIFEST_NAME
    tmp = dataset_dir / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    _atomic_replace(tmp, final)
    return final
