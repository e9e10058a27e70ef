"""Content digests of files (weights, checkpoints): what a file holds, not where it lives."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=16)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def file_digest(path: Path | str) -> str:
    """The first 16 hex digits of the file's SHA-256, computed once per (path, size, mtime)."""
    stat = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
