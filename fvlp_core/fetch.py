"""Fetchers: turn (SAMPLE_ID, URL) requests into image bytes plus a per-row status.

Each source is a small class with one method, ``fetch(requests) -> results`` (same length,
same order), and ``close()``. No row is ever dropped: every failure becomes a
:class:`FetchResult` with a status from ``storage.raw.FETCH_STATUSES`` and a message.

* :class:`EmbeddedFetcher` - the generated corpus (``fvlp_core.corpus.EmbeddedCorpus``).
* :class:`FolderFetcher` - files named ``<SAMPLE_ID>.<ext>`` anywhere under a folder, or
  img2dataset's ``files`` output (``<key>.jpg`` beside a ``<key>.json`` holding the id).
* :class:`TarFetcher` - the same two namings as members of one or many tars (img2dataset's
  webdataset shards); read by offset, never extracted, and members with absolute or ``..``
  names or that are links are refused.
* :class:`HttpFetcher` - http(s) URLs with bounded concurrency, connect/read/total timeouts,
  retries with exponential backoff, a byte cap enforced while reading, manual redirects,
  and (unless ``allow_private_addresses``) a refusal of any host that resolves to a
  loopback, private, link-local, metadata or other non-global address. The socket connects
  to the very address that was checked, so a DNS answer cannot change between check and use.
"""

from __future__ import annotations

import bz2
import gzip
import http.client
import io
import ipaddress
import json
import lzma
import multiprocessing
import os
import socket
import ssl
import stat
import tarfile
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple, Protocol
from urllib.parse import quote, urljoin, urlsplit

from PIL import Image

from fvlp_core.config import HttpFetchConfig

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024
SIDECAR_MAX_BYTES = 1 << 20  # a sample's .json metadata; anything larger is not a sidecar
_URL_SAFE = "/?&=%:;@!$'()*+,~-._"


@dataclass(frozen=True)
class FetchRequest:
    sample_id: int
    url: str | None = None


@dataclass(frozen=True)
class FetchResult:
    status: str
    image: bytes | None = None
    error: str | None = None
    size: tuple[int, int] | None = None  # (width, height) from the header of an ``ok`` image


class Fetcher(Protocol):
    def fetch(self, requests: Sequence[FetchRequest]) -> list[FetchResult]: ...

    def close(self) -> None: ...


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4, C8 and CC are other segments) carry the image size.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, its CRC checked (as PIL checks it)."""
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\rIHDR":
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's first start-of-frame segment, walking the segments."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return None
        if marker in _JPEG_FRAME_MARKERS:
            if length < 7 or position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            return int.from_bytes(data[position + 7 : position + 9], "big"), height
        position += 2 + length
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read straight from a JPEG or PNG header, the bulk of LAION; None for
    any other format or anything unusual, which PIL then parses. About 10x cheaper than
    ``Image.open`` (its header parsing was 42% of ingest's own time)."""
    if data.startswith(_PNG_SIGNATURE):
        return _png_size(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(data)
    return None


def _size_result(data: bytes, width: int, height: int) -> FetchResult:
    if width <= 0 or height <= 0:
        return FetchResult("not_image", error=f"image has size {width}x{height}")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:  # PIL's decompression-bomb bound, as below
        return FetchResult(
            "too_large", error=f"decompression bomb: {width}x{height} = {width * height} pixels > {limit}"
        )
    return FetchResult("ok", image=data, size=(width, height))


def check_image(data: bytes, max_bytes: int) -> FetchResult:
    """``ok`` with the bytes if they are a supported image within the cap, else why not."""
    if len(data) > max_bytes:
        return FetchResult("too_large", error=f"{len(data)} bytes > max {max_bytes}")
    size = header_size(data)
    if size is not None:
        return _size_result(data, *size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Parses the header only; decoding is the cleaning stage's job.
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return FetchResult("too_large", error=f"decompression bomb: {err}")
    except Exception as err:  # PIL raises many types for bytes it cannot read
        head = data[:16]
        return FetchResult("not_image", error=f"not a supported image ({type(err).__name__}; starts {head!r})")
    return _size_result(data, width, height)


def image_key(name: str) -> str | None:
    """The sample key of an image file name (the name without its extension), or None when
    the name is not an image: ``part/000000012.jpg`` -> ``part/000000012``."""
    name = name.replace("\\", "/")
    if name.startswith(("/", "./")) or name.endswith(("/", "/.")) or "//" in name or "/./" in name:
        path = PurePosixPath(name)  # only odd names need normalising (tar members may start "./")
        return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else None
    # The plain case by string operations: PurePosixPath costs 15 us a name, millions in LAION.
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    suffix = base[dot:] if 0 < dot < len(base) - 1 else ""
    return name[: len(name) - len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else None


def sidecar_id(data: bytes | None, id_field: str) -> int | None:
    """The integer ``id_field`` of a sample's ``.json`` sidecar (img2dataset writes the input's
    columns there), or None when there is no sidecar, it is not a JSON object, or it lacks the field."""
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    value = record.get(id_field) if isinstance(record, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)  # img2dataset's own key is a zero-padded digit string
    return None


@dataclass
class ImageIndex:
    """Sample id -> the image names holding it, built from a listing of names.

    A sample's id is the ``id_field`` of its ``<key>.json`` sidecar when there is one
    (img2dataset's webdataset and files layouts name images by img2dataset's own key and keep
    the input row's columns in the sidecar), else its plain-digit file name (``00042.jpg`` -> 42).
    """

    by_id: dict[int, list[str]]
    # sidecars present but without the id field: a hint when an id is then not found
    sidecars_without_id: int

    @classmethod
    def build(cls, names: Sequence[str], read_sidecar: Any, id_field: str) -> ImageIndex:
        present = set(names)
        by_id: dict[int, list[str]] = {}
        missing_field = 0
        for name in names:
            key = image_key(name)
            if key is None:
                continue
            sidecar = f"{key}.json"
            sample_id = None
            if sidecar in present:
                sample_id = sidecar_id(read_sidecar(sidecar), id_field)
                missing_field += sample_id is None
            stem = key.rpartition("/")[2]
            # ASCII digits only: int() would also take "+5", " 5" and "1_000".
            if sample_id is None and stem.isascii() and stem.isdigit():
                sample_id = int(stem)
            if sample_id is not None:
                by_id.setdefault(sample_id, []).append(name)
        return cls(by_id, missing_field)


def not_found(sample_id: int, where: str, id_field: str, sidecars_without_id: int) -> FetchResult:
    """``not_found``, with a hint when sidecars lacked the id field (the likely cause)."""
    hint = (
        f" ({sidecars_without_id} sidecar .json file(s) have no {id_field!r} field; --id-col names it)"
        if sidecars_without_id
        else ""
    )
    return FetchResult("not_found", error=f"no image for SAMPLE_ID {sample_id} in {where}{hint}")


def _ambiguous(sample_id: int, names: list[str]) -> FetchResult:
    return FetchResult("error", error=f"several images for SAMPLE_ID {sample_id}: {', '.join(sorted(names))}")


def embedded_result(corpus: Any, sample_id: int, max_bytes: int) -> FetchResult:
    try:
        data = corpus.image_bytes(sample_id)
    except KeyError:
        return FetchResult("not_found", error=f"SAMPLE_ID {sample_id} not in the embedded corpus")
    return check_image(data, max_bytes)


_worker_corpus: Any = None  # the corpus inside a render worker process


def _init_render_worker(corpus: Any) -> None:
    global _worker_corpus
    _worker_corpus = corpus


def _render_in_worker(sample_id: int, max_bytes: int) -> FetchResult:
    return embedded_result(_worker_corpus, sample_id, max_bytes)


class EmbeddedFetcher:
    """Images rendered by the embedded corpus generator (deterministic per seed).

    Rendering is CPU-bound Python, so ``workers > 1`` renders in that many processes
    (spawned, each given the corpus once); threads would only take turns on the GIL.
    """

    def __init__(self, corpus: Any, max_bytes: int, workers: int = 1):
        self.corpus = corpus
        self.max_bytes = max_bytes
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # shards fetched from several threads share one pool

    def fetch(self, requests: Sequence[FetchRequest]) -> list[FetchResult]:
        ids = [r.sample_id for r in requests]
        if self.workers == 1:
            return [embedded_result(self.corpus, i, self.max_bytes) for i in ids]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),  # fork is unsafe beside Prefect's threads
                    initializer=_init_render_worker,
                    initargs=(self.corpus,),
                )
            pool = self._pool
        chunk = max(1, len(ids) // (4 * self.workers))
        return list(pool.map(_render_in_worker, ids, [self.max_bytes] * len(ids), chunksize=chunk))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class FolderFetcher:
    """Images under ``folder`` (subfolders included), indexed once by :class:`ImageIndex`:
    ``<SAMPLE_ID>.<ext>`` files, or img2dataset's ``files`` layout (``<key>.jpg`` + ``<key>.json``)."""

    def __init__(self, folder: Path, max_bytes: int, id_field: str = "SAMPLE_ID"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.folder}")
        self.max_bytes = max_bytes
        self.id_field = id_field
        self.root = os.path.realpath(self.folder)
        names, self.links = _list_files(str(self.folder))
        self.index = ImageIndex.build(names, self._sidecar, id_field)

    def _sidecar(self, name: str) -> bytes | None:
        result = self._read_file(name, SIDECAR_MAX_BYTES)
        return result if isinstance(result, bytes) else None

    def fetch(self, requests: Sequence[FetchRequest]) -> list[FetchResult]:
        return [self._fetch_one(r.sample_id) for r in requests]

    def _fetch_one(self, sample_id: int) -> FetchResult:
        names = self.index.by_id.get(sample_id, [])
        if not names:
            return not_found(sample_id, str(self.folder), self.id_field, self.index.sidecars_without_id)
        if len(names) > 1:
            return _ambiguous(sample_id, names)
        result = self._read_file(names[0], self.max_bytes)
        return result if isinstance(result, FetchResult) else check_image(result, self.max_bytes)

    def _read_file(self, name: str, max_bytes: int) -> bytes | FetchResult:
        """The bytes of the regular file ``name`` inside the folder, or why they cannot be had.

        Only names listed as symbolic links are resolved (a symlink may point anywhere, and what
        it reaches is not the folder's to give); every other name is opened without following a
        final symlink, so one swapped in after the listing is refused, not followed. The walk
        never entered linked folders. Resolving every path cost 4 lstat calls per image."""
        path = os.path.join(self.folder, name)
        flags = os.O_RDONLY | os.O_NONBLOCK  # O_NONBLOCK: opening a FIFO must not wait for a writer
        if name in self.links:
            target = os.path.realpath(path)
            if os.path.commonpath([target, self.root]) != self.root:
                return FetchResult("error", error=f"{path}: symbolic link leaving the image folder (to {target})")
        else:
            flags |= os.O_NOFOLLOW
        try:
            descriptor = os.open(path, flags)
        except OSError as err:
            return FetchResult("error", error=f"{path}: {err}")
        with open(descriptor, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return FetchResult("error", error=f"{path}: not a regular file ({_file_kind(info.st_mode)})")
            if info.st_size > max_bytes:
                return FetchResult("too_large", error=f"{path} is {info.st_size} bytes > max {max_bytes}")
            try:
                return handle.read(max_bytes + 1)
            except OSError as err:
                return FetchResult("error", error=f"{path}: {err}")

    def close(self) -> None:
        pass


def _list_files(folder: str) -> tuple[list[str], set[str]]:
    """Every file name under ``folder`` relative to it ("/"-joined), and which of them are
    symbolic links; linked folders are not entered (as ``os.walk`` by default)."""
    names: list[str] = []
    links: set[str] = set()
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(os.path.join(folder, prefix) if prefix else folder) as entries:
            for entry in entries:
                name = f"{prefix}/{entry.name}" if prefix else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(name)
                    continue
                names.append(name)
                if entry.is_symlink():
                    links.add(name)
    return sorted(names), links


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "named pipe", stat.S_ISSOCK: "socket", stat.S_ISCHR: "character device"}
    kinds.update({stat.S_ISBLK: "block device", stat.S_ISDIR: "directory"})
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be read, or None: path traversal, absolute names, links, devices."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"tar member {member.name!r} has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return f"tar member {member.name!r} escapes the archive (path traversal)"
    if not member.isfile() or member.issparse():
        return f"tar member {member.name!r} is not a regular file"
    return None


# What a truncated or corrupt (possibly compressed) tar raises while being read.
TAR_DAMAGE = (tarfile.TarError, EOFError, OSError, zlib.error)


def _readable_members(archive: tarfile.TarFile, tar_path: Path) -> tuple[list[tarfile.TarInfo], str | None]:
    """The members listed before any damage, and what the damage is (None for a whole archive):
    a truncated download keeps the images before the break."""
    members: list[tarfile.TarInfo] = []
    try:
        while (member := archive.next()) is not None:
            members.append(member)
    except TAR_DAMAGE as err:
        after = f"member {members[-1].name!r}" if members else "its start"
        return members, f"{tar_path} is truncated or corrupt after {after} ({err})"
    return members, None


# Magic bytes of the compressions tarfile reads, and how to stream each.
_DECOMPRESSORS: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)


def _seekable_archive(tar_path: Path) -> tuple[tarfile.TarFile, IO[bytes] | None, str | None]:
    """The archive opened for random access. A compressed tar is decompressed once into an
    anonymous temp file (deleted on close): reading members out of archive order would
    otherwise re-decode from the start at every backwards step (quadratic). Returns the
    archive, the temp file (or None) and what cut the decompression short (or None)."""
    with open(tar_path, "rb") as handle:
        head = handle.read(6)
    for magic, open_stream in _DECOMPRESSORS:
        if head.startswith(magic):
            spool = tempfile.TemporaryFile()
            damage = None
            try:
                with open_stream(tar_path, "rb") as stream:
                    # read1: each call returns what one step decompressed, so a break keeps all before it.
                    while chunk := stream.read1(1 << 20):
                        spool.write(chunk)
            except TAR_DAMAGE as err:  # keep what decompressed: the members before the break
                damage = f"{tar_path} is truncated or corrupt ({err})"
            spool.seek(0)
            return tarfile.open(fileobj=spool, mode="r:"), spool, damage
    return tarfile.open(tar_path, "r:"), None, None


class _TarMember(NamedTuple):
    archive: int  # position in TarFetcher.tar_paths
    name: str
    offset: int  # where its data starts in the (decompressed) archive
    size: int
    unsafe: str | None  # why it must not be read, or None


class TarFetcher:
    """Images in one or more (possibly compressed) tars, read without extracting, indexed by
    :class:`ImageIndex` (``<SAMPLE_ID>.<ext>`` members, or img2dataset's webdataset shards).

    Each tar is listed once; members are then read by offset, so thousands of shards cost no
    open files between reads. A compressed tar is decompressed once into a temp file (as much
    disk as the uncompressed archive, freed on close), so any order reads at seek speed.
    """

    def __init__(self, tar_paths: Path | Sequence[Path], max_bytes: int, id_field: str = "SAMPLE_ID"):
        self.tar_paths = [Path(tar_paths)] if isinstance(tar_paths, (str, Path)) else [Path(p) for p in tar_paths]
        if not self.tar_paths:
            raise FileNotFoundError("no image tars given")
        for path in self.tar_paths:
            if not path.is_file():
                raise FileNotFoundError(f"image tar not found: {path}")
        self.max_bytes = max_bytes
        self.id_field = id_field
        self.damage: list[str] = []
        self.index: dict[int, list[_TarMember]] = {}
        self.sidecars_without_id = 0
        self._spools: dict[int, IO[bytes]] = {}
        for position, path in enumerate(self.tar_paths):
            self._list(position, path)
        self._lock = threading.Lock()  # a spool is one file position: one reader at a time

    def _list(self, position: int, path: Path) -> None:
        archive, spool, spool_damage = _seekable_archive(path)
        try:
            listed, damage = _readable_members(archive, path)
            if damage or spool_damage:
                self.damage.append(damage or str(spool_damage))
            # A name repeated in the archive counts once per copy: like two names for one SAMPLE_ID,
            # it is ambiguous (tar extraction would silently keep the last copy).
            by_name: dict[str, list[tarfile.TarInfo]] = {}
            for member in listed:
                by_name.setdefault(member.name, []).append(member)

            def read_sidecar(name: str) -> bytes | None:
                member = by_name[name][-1]
                if unsafe_member_reason(member) or member.size > SIDECAR_MAX_BYTES:
                    return None
                try:
                    handle = archive.extractfile(member)
                    return handle.read() if handle is not None else None
                except TAR_DAMAGE:
                    return None

            images = ImageIndex.build(list(by_name), read_sidecar, self.id_field)
        finally:
            archive.close()  # a spool given as fileobj stays open
        self.sidecars_without_id += images.sidecars_without_id
        for sample_id, names in images.by_id.items():
            self.index.setdefault(sample_id, []).extend(
                _TarMember(position, m.name, m.offset_data, m.size, unsafe_member_reason(m))
                for name in names
                for m in by_name[name]
            )
        if spool is not None:
            self._spools[position] = spool

    def fetch(self, requests: Sequence[FetchRequest]) -> list[FetchResult]:
        with self._lock:
            return [self._fetch_one(r.sample_id) for r in requests]

    def _where(self, member: _TarMember) -> str:
        return member.name if len(self.tar_paths) == 1 else f"{self.tar_paths[member.archive].name}:{member.name}"

    def _fetch_one(self, sample_id: int) -> FetchResult:
        members = self.index.get(sample_id, [])
        if not members and self.damage:
            # The image may sit in the part of an archive that cannot be read.
            more = f" (and {len(self.damage) - 1} more damaged tar(s))" if len(self.damage) > 1 else ""
            return FetchResult(
                "error", error=f"no member for SAMPLE_ID {sample_id} before the damage: {self.damage[0]}{more}"
            )
        if not members:
            where = str(self.tar_paths[0]) if len(self.tar_paths) == 1 else f"{len(self.tar_paths)} tars"
            return not_found(sample_id, where, self.id_field, self.sidecars_without_id)
        if len(members) > 1:
            return _ambiguous(sample_id, [self._where(m) for m in members])
        member = members[0]
        if member.unsafe:
            return FetchResult("refused", error=member.unsafe)
        if member.size > self.max_bytes:
            return FetchResult(
                "too_large", error=f"tar member {member.name!r} is {member.size} bytes > max {self.max_bytes}"
            )
        path = self.tar_paths[member.archive]
        try:
            spool = self._spools.get(member.archive)
            if spool is None:
                with open(path, "rb") as handle:
                    handle.seek(member.offset)
                    data = handle.read(member.size)
            else:
                spool.seek(member.offset)
                data = spool.read(member.size)
        except OSError as err:
            return FetchResult("error", error=f"{path}: tar member {member.name!r} cannot be read ({err})")
        if len(data) < member.size:
            cut = f"cut short: {len(data)} of {member.size} bytes"
            return FetchResult("error", error=f"{path}: tar member {member.name!r} cannot be read ({cut})")
        return check_image(data, self.max_bytes)

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()


# ----------------------------------------------------------------------------- HTTP


class _Refused(Exception):
    """A target the fetcher will not contact (status ``refused``)."""


class _Failed(Exception):
    """A finished attempt with a status; ``retry`` says whether another attempt may help."""

    def __init__(self, status: str, message: str, retry: bool = False):
        super().__init__(message)
        self.status, self.retry = status, retry


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses (never loopback, private, link-local,
    carrier-grade NAT, cloud metadata such as 169.254.169.254 / fd00:ec2::254, or multicast)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 form can carry an IPv4 address the packets end up at: judge that one too.
        if not all(_is_public(v4) for v4 in _embedded_ipv4(ip)):
            return False
    return _is_public(ip)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


# IPv6 prefixes whose last 32 bits are an IPv4 address: IPv4-compatible (::/96), SIIT
# (::ffff:0:0:0/96), NAT64 well-known (64:ff9b::/96) and local-use (64:ff9b:1::/48).
EMBEDDING_IPV4_PREFIXES = tuple(
    ipaddress.IPv6Network(prefix) for prefix in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, compatible, SIIT, NAT64, 6to4, Teredo)."""
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if any(ip in prefix for prefix in EMBEDDING_IPV4_PREFIXES):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in found if v4 is not None]


def resolve_target(host: str, port: int, allow_private: bool) -> tuple[str, int]:
    """The socket address to connect to; refuses hosts with any non-public address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise _Failed("error", f"cannot resolve {host}: {err}") from err
    addresses = [str(info[4][0]) for info in infos]
    if not allow_private:
        private = [a for a in addresses if not is_public_address(a)]
        if private:
            raise _Refused(f"{host} resolves to non-public address {private[0]}")
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a pre-checked address while sending the URL's host name."""

    def __init__(self, host: str, port: int, address: tuple[str, int], connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=read_timeout)
        self.pinned_address, self.connect_timeout = address, connect_timeout

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection(self.pinned_address, self.connect_timeout)
        sock.settimeout(self.timeout)
        return sock

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def __init__(self, *args: Any, ssl_context: ssl.SSLContext, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ssl_context = ssl_context

    def connect(self) -> None:
        self.sock = self.ssl_context.wrap_socket(self._open_socket(), server_hostname=self.host)


class _Deadline:
    """Aborts a connection when an attempt's total time is spent (stops slow-drip servers)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._connection: http.client.HTTPConnection | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, connection: http.client.HTTPConnection) -> None:
        self._connection = connection

    def _expire(self) -> None:
        self.expired = True
        sock = self._connection.sock if self._connection else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()


class HttpFetcher:
    """Fetch http(s) URLs with a thread pool of ``config.concurrency`` workers."""

    def __init__(self, config: HttpFetchConfig, max_bytes: int):
        self.config = config
        self.max_bytes = max_bytes
        self.ssl_context = ssl.create_default_context()
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="fvlp-http")

    def fetch(self, requests: Sequence[FetchRequest]) -> list[FetchResult]:
        return list(self.pool.map(lambda r: self.fetch_url(r.url), requests))

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def fetch_url(self, url: str | None) -> FetchResult:
        """One URL, retried with exponential backoff while the failure is transient."""
        if not url:
            return FetchResult("refused", error="no URL")
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                return check_image(self._attempt(url), self.max_bytes)
            except _Refused as err:
                return FetchResult("refused", error=str(err))
            except _Failed as err:
                if not err.retry or attempt == attempts - 1:
                    suffix = f" (after {attempts} attempts)" if err.retry and attempts > 1 else ""
                    return FetchResult(err.status, error=f"{err}{suffix}")
            except Exception as err:  # one hostile URL must not take down the shard's other rows
                return FetchResult("error", error=f"unexpected {type(err).__name__}: {err}")
            time.sleep(self.config.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt always returns")

    def _attempt(self, url: str) -> bytes:
        with _Deadline(self.config.total_timeout_s) as deadline:
            try:
                for _ in range(self.config.max_redirects + 1):
                    location, body = self._request(url, deadline)
                    if location is None:
                        return body
                    url = urljoin(url, location)
                raise _Failed("http_error", f"more than {self.config.max_redirects} redirects")
            except TimeoutError as err:
                raise _Failed("timeout", f"timed out: {err or 'no data'}", retry=True) from err
            except UnicodeError as err:  # e.g. a host name that is not valid IDNA
                raise _Failed("error", f"cannot encode URL: {err}") from err
            except (OSError, http.client.HTTPException) as err:
                if deadline.expired:
                    raise _Failed(
                        "timeout", f"gave up after {self.config.total_timeout_s}s in total", retry=True
                    ) from err
                raise _Failed("error", f"{type(err).__name__}: {err}", retry=True) from err

    def _connection(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise _Refused(f"scheme {parts.scheme or '(none)'!r} is not http/https: {url[:200]}")
        if not parts.hostname:
            raise _Refused(f"no host in URL: {url[:200]}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as err:
            raise _Refused(f"bad port in URL: {url[:200]}") from err
        address = resolve_target(parts.hostname, port, self.config.allow_private_addresses)
        timeouts = dict(connect_timeout=self.config.connect_timeout_s, read_timeout=self.config.read_timeout_s)
        connection: _PinnedHTTPConnection | _PinnedHTTPSConnection
        if parts.scheme == "https":
            connection = _PinnedHTTPSConnection(parts.hostname, port, address, ssl_context=self.ssl_context, **timeouts)
        else:
            connection = _PinnedHTTPConnection(parts.hostname, port, address, **timeouts)
        # Scraped URLs carry spaces and non-ASCII; percent-encode them, keep existing escapes.
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_URL_SAFE)
        return connection, target

    def _request(self, url: str, deadline: _Deadline) -> tuple[str | None, bytes]:
        """One hop: (redirect location, b"") or (None, body)."""
        connection, target = self._connection(url)
        deadline.watch(connection)
        try:
            connection.request(
                "GET",
                target,
                headers={"User-Agent": self.config.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
            )
            response = connection.getresponse()
            if response.status in REDIRECT_CODES:
                location = response.getheader("Location")
                if not location:
                    raise _Failed("http_error", f"HTTP {response.status} redirect without a Location")
                return location, b""
            if response.status in (404, 410):
                raise _Failed("not_found", f"HTTP {response.status}")
            if response.status == 429 or response.status >= 500:
                raise _Failed("http_error", f"HTTP {response.status}", retry=True)
            if not 200 <= response.status < 300:
                raise _Failed("http_error", f"HTTP {response.status}")
            return None, self._read_body(response, deadline)
        finally:
            connection.close()

    def _read_body(self, response: http.client.HTTPResponse, deadline: _Deadline) -> bytes:
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise _Failed("too_large", f"Content-Length {declared} > max {self.max_bytes}")
        chunks, size = [], 0
        while True:
            chunk = response.read1(_READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_bytes:
                raise _Failed("too_large", f"body exceeds max {self.max_bytes} bytes")
            chunks.append(chunk)
        if deadline.expired:
            raise _Failed("timeout", f"gave up after {self.config.total_timeout_s}s in total", retry=True)
        return b"".join(chunks)


def open_fetcher(
    source: str,
    *,
    images: Sequence[Path],
    max_bytes: int,
    http: HttpFetchConfig,
    id_field: str = "SAMPLE_ID",
    corpus: Any = None,
    render_workers: int = 1,
) -> Fetcher:
    """The fetcher for an ingest ``source``: ``images`` is one folder (``folder``) or the tars
    (``tar``); ``id_field`` names the id in img2dataset sidecars; ``embedded`` needs the ``corpus``."""
    if source == "embedded":
        if corpus is None:
            raise ValueError("source=embedded needs the embedded corpus")
        return EmbeddedFetcher(corpus, max_bytes, render_workers)
    if source == "folder":
        if len(images) != 1:
            raise ValueError(f"source='folder' reads one image folder, got {len(images)} paths")
        return FolderFetcher(images[0], max_bytes, id_field)
    if source == "tar":
        return TarFetcher(images, max_bytes, id_field)
    if source == "url":
        return HttpFetcher(http, max_bytes)
    raise ValueError(f"unknown ingest source {source!r}")
