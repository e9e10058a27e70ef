"""Whole-or-nothing file writes and dataset fingerprints: the one place either is done.

A file is written under ``.<name>.tmp-<pid>`` beside its final name, fsynced and renamed
into place, so a file that exists under its final name is complete. A writer killed
mid-write leaves only its temp file, which readers never list and the next successful
write of the same file removes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from fvlp_core.digest import file_digest


def temp_path(final: Path) -> Path:
    """Where a writer of ``final`` puts its bytes before the rename (one per process)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def commit(tmp: Path, final: Path) -> None:
    """Make a completely written ``tmp`` durable and visible as ``final``."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    remove_orphan_temp_files(final)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(handle)`` so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as handle:
        write(handle)
    commit(tmp, path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphan_temp_files(final: Path) -> list[Path]:
    """Delete temp files of ``final`` whose writer process is gone; live writers' are left alone."""
    final = Path(final)
    removed = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def stat_fingerprint(files: Iterable[Path], settings: str = "") -> str:
    """Hash of ``settings`` and each file's name, size and modification time.

    Cheap (no file is read) and changes whenever a writer replaces a file, which is what
    a stage needs to know whether its inputs moved since it last ran.
    """
    digest = hashlib.sha256(settings.encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# Per dataset folder: each file's content digest, keyed by its size and modification time.
DIGEST_CACHE = ".content-digests.json"


def content_fingerprint(files: Iterable[Path], settings: str = "") -> str:
    """``sha256:`` hash of ``settings`` and each file's name and content digest: the same bytes
    give the same fingerprint on any machine, under any path. Each file is read once per
    version: its digest is kept in the folder's ``.content-digests.json``, keyed by size and
    modification time (a folder that cannot be written only loses the cache)."""
    digest = hashlib.sha256(settings.encode())
    caches: dict[Path, dict[str, list]] = {}
    changed: set[Path] = set()
    for path in map(Path, files):
        folder = path.parent
        if folder not in caches:
            caches[folder] = _read_digest_cache(folder)
        info = os.stat(path)
        entry = caches[folder].get(path.name)
        if entry is None or entry[:2] != [info.st_size, info.st_mtime_ns]:
            entry = [info.st_size, info.st_mtime_ns, file_digest(path)]
            caches[folder][path.name] = entry
            changed.add(folder)
        digest.update(f"{path.name}:{entry[2]}\n".encode())
    for folder in changed:
        try:
            write_text_atomic(folder / DIGEST_CACHE, json.dumps(caches[folder], sort_keys=True))
        except OSError:
            pass
    return f"sha256:{digest.hexdigest()[:16]}"


def _read_digest_cache(folder: Path) -> dict[str, list]:
    try:
        cache = json.loads((folder / DIGEST_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def tree_fingerprint(root: Path) -> str:
    """Hash of every entry under ``root`` (relative name, size, modification time; links not
    followed), or of ``root`` itself when it is a file: changes when anything is added, removed
    or replaced, without reading a byte of content."""
    root = Path(root)
    if not root.exists():
        return "absent"  # the reader of the images names the missing path
    digest = hashlib.sha256()
    names = ["."]
    if root.is_dir():
        names = []
        for folder, _, files in os.walk(root):
            prefix = os.path.relpath(folder, root)  # once per folder, not per file: LAION folders hold millions
            names.extend(name if prefix == "." else os.path.join(prefix, name) for name in files)
        names.sort()
    for name in names:
        info = os.lstat(root if name == "." else os.path.join(root, name))
        digest.update(f"{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def expand_paths(entries: Sequence[Path], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files ``entries`` name, in order: a file as itself, a folder as its files (not
    subfolders) whose names end in one of ``suffixes``, sorted, and a glob pattern as its sorted
    matches - so a Prefect form or a deployment parameter can name thousands of shards. An
    entry that names nothing is an error naming it."""
    found: list[Path] = []
    for entry in map(Path, entries):
        text = str(entry)
        if entry.is_dir():
            matches = sorted(p for p in entry.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
        elif entry.exists() or not glob.has_magic(text):
            matches = [entry]
        else:
            matches = sorted(Path(p) for p in glob.glob(text) if os.path.isfile(p))
        if not matches:
            kinds = "/".join(suffixes)
            raise FileNotFoundError(
                f"{what}: {entry} holds no {kinds} files" if entry.is_dir() else f"{what}: nothing matches {entry}"
            )
        found.extend(matches)
    return found
