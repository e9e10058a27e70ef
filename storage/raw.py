"""The raw dataset: LAION-style metadata in, fetched image bytes + metadata out.

Input metadata is Parquet, CSV/TSV or JSON lines (``.gz`` and other compressions by suffix;
text formats are converted once into a Parquet copy under ``<raw>/.inputs``, keyed by
content). Each canonical column is read from the input column a flag names
(``--id-col`` ...) or else from the first of its usual names present: LAION / LAION-Face
first, then img2dataset's output names (:data:`COLUMN_CANDIDATES`). Validated here once:

=============  =============================================  ======================
column         accepted input types                           raw shard type
=============  =============================================  ======================
``SAMPLE_ID``  integer; float if whole; digit strings         int64, never null
``URL``        string                                         string (nullable)
``TEXT``       string, or binary (decoded as UTF-8)           string (nullable)
``WIDTH``      integer or float                               int64 (nullable)
``HEIGHT``     integer or float                               int64 (nullable)
``similarity`` integer or float                               float64 (nullable)
=============  =============================================  ======================

``URL`` and ``TEXT`` are required. Without an id column, ``SAMPLE_ID`` is derived from the
row's URL and caption (63 bits of a BLAKE2b digest: the same pair always gets the same id,
and a repeated pair is a ``duplicate_id`` row). Without ``WIDTH``/``HEIGHT`` the sizes are
measured from the fetched image's header; without ``similarity`` it is null.

Any other input column is carried unchanged ("extras"; files lacking one get nulls).
A missing required column, a required column of another type, files that map a column
differently, or an extra whose type differs between files is a :class:`MetadataError`
naming the file and the column.

Hostile *values* never stop an ingest: the row is kept and the problem is listed in its
``metadata_issues`` (NaN/non-integral/non-positive WIDTH or HEIGHT -> null or kept
as-is and listed, NaN similarity -> null, captions that are not valid UTF-8 -> decoded
with U+FFFD replacement). A null ``SAMPLE_ID`` cannot be tracked at all and is an error.

Each raw shard holds the required columns, the extras, then:
``image`` binary (nullable), ``fetch_status`` string (one of :data:`FETCH_STATUSES`),
``fetch_error`` string (nullable), ``metadata_issues`` list<string> (empty when clean),
``input_file`` string, ``input_row`` int64 (row index within ``input_file``).

Rows are laid out in input order (files in the order given, rows in file order); shard
``i`` holds global rows ``[i * shard_size, (i + 1) * shard_size)``. Every shard carries
the ingest plan's fingerprint in its Parquet metadata, so a re-run knows whether an
existing shard belongs to the same plan and is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.types as pat

from fvlp_core.digest import file_digest
from storage.files import atomic_write
from storage.shards import list_shards, read_manifest, shard_index, shard_path, write_manifest, write_shard

REQUIRED_COLUMNS: dict[str, pa.DataType] = {
    "SAMPLE_ID": pa.int64(),
    "URL": pa.string(),
    "TEXT": pa.string(),
    "WIDTH": pa.int64(),
    "HEIGHT": pa.int64(),
    "similarity": pa.float64(),
}

FETCH_STATUSES: tuple[str, ...] = (
    "ok",  # image bytes present and recognised as an image
    "not_found",  # no such object (HTTP 404/410, no file for the id, unknown embedded id)
    "http_error",  # any other non-2xx answer, or too many redirects
    "timeout",  # connect/read/total time limit hit (after retries)
    "too_large",  # body or file over the byte cap
    "not_image",  # bytes that no supported image decoder recognises
    "refused",  # unsafe target: bad scheme, private address, tar path traversal, no URL
    "duplicate_id",  # SAMPLE_ID already seen earlier in the input; not fetched again
    "error",  # anything else (DNS, connection reset, ambiguous files); see fetch_error
)
# Statuses of rows that were fetched as asked and still have no image.
FAILED_STATUSES = frozenset(FETCH_STATUSES) - {"ok", "duplicate_id"}

FETCH_FIELDS: tuple[pa.Field, ...] = (
    pa.field("image", pa.binary()),
    pa.field("fetch_status", pa.string(), nullable=False),
    pa.field("fetch_error", pa.string()),
    pa.field("metadata_issues", pa.list_(pa.string()), nullable=False),
    pa.field("input_file", pa.string(), nullable=False),
    pa.field("input_row", pa.int64(), nullable=False),
)
RESERVED_NAMES = frozenset(f.name for f in FETCH_FIELDS)
# The fetch fields that come from reading the metadata rather than from fetching.
_ROW_FIELDS = ("metadata_issues", "input_file", "input_row")

# No image format declares a side beyond 2**31 - 1 (PNG's limit): larger WIDTH/HEIGHT are garbage.
MAX_DIMENSION = 2**31 - 1

# The input names tried, in order, for each canonical column when no flag names one.
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "SAMPLE_ID": ("SAMPLE_ID", "key"),
    "URL": ("URL", "url"),
    "TEXT": ("TEXT", "caption", "txt"),
    "WIDTH": ("WIDTH", "original_width"),
    "HEIGHT": ("HEIGHT", "original_height"),
    "similarity": ("similarity",),
}
NEEDED_COLUMNS = ("URL", "TEXT")
# What stands in for a canonical column the input lacks.
IMPLIED_COLUMNS = {
    "SAMPLE_ID": "derived from URL and caption",
    "WIDTH": "measured from the image",
    "HEIGHT": "measured from the image",
    "similarity": "null",
}
METADATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".ndjson", ".json")
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
STAGED_DIR = ".inputs"

PLAN_KEY = b"fvlp.raw.plan"
FIRST_ROW_KEY = b"fvlp.raw.first_row"


class MetadataError(ValueError):
    """Input metadata that cannot be ingested; the message names the file and column."""


def _numeric(t: pa.DataType) -> bool:
    return pat.is_integer(t) or pat.is_floating(t) or pat.is_null(t)


def _text_like(t: pa.DataType) -> bool:
    return pat.is_string(t) or pat.is_large_string(t) or pat.is_null(t)


_ACCEPTS = {
    "SAMPLE_ID": (lambda t: pat.is_integer(t) or pat.is_floating(t) or _text_like(t), "an integer"),
    "URL": (_text_like, "a string"),
    "TEXT": (lambda t: _text_like(t) or pat.is_binary(t) or pat.is_large_binary(t), "a string or binary"),
    "WIDTH": (_numeric, "a number"),
    "HEIGHT": (_numeric, "a number"),
    "similarity": (_numeric, "a number"),
}


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` holds global input rows ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return shard_path(Path(), self.index).name


def plan_shards(total_rows: int, shard_size: int) -> list[ShardSpec]:
    """Fixed-size shards over the input rows in order: the same input always maps the same way."""
    return [
        ShardSpec(i, start, min(start + shard_size, total_rows))
        for i, start in enumerate(range(0, total_rows, shard_size))
    ]


@dataclass
class MetadataFiles:
    """Validated LAION-style metadata files, read lazily by global row range."""

    files: list[Path]  # as given: what rows' input_file and messages name
    parquet: list[Path]  # what is read: the file itself, or its Parquet copy for a text format
    row_counts: list[int]
    extras: pa.Schema
    # canonical column -> the input column it is read from (None: derived, measured or null)
    columns: dict[str, str | None]
    _offsets: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._offsets = [0, *np.cumsum(self.row_counts).tolist()]

    @property
    def total_rows(self) -> int:
        return self._offsets[-1]

    @property
    def schema(self) -> pa.Schema:
        """The normalised metadata schema (required columns, then extras)."""
        return pa.schema([pa.field(n, t) for n, t in REQUIRED_COLUMNS.items()] + list(self.extras))

    def read_rows(self, start: int, stop: int) -> pa.Table:
        """Global rows ``[start, stop)``, normalised, plus ``metadata_issues``, ``input_file``, ``input_row``."""
        parts = []
        for i in range(len(self.files)):
            lo, hi = max(start, self._offsets[i]), min(stop, self._offsets[i + 1])
            if lo < hi:
                local = lo - self._offsets[i]
                parts.append(self._read_file_rows(i, local, local + (hi - lo)))
        if not parts:
            return pa.schema(list(self.schema) + [f for f in FETCH_FIELDS if f.name in _ROW_FIELDS]).empty_table()
        return pa.concat_tables(parts)

    def _read_file_rows(self, i: int, lo: int, hi: int) -> pa.Table:
        path = self.files[i]
        table = _read_row_range(self.parquet[i], path, lo, hi)
        columns, issues = _normalise_required(table, self.columns, path, lo)
        for extra in self.extras:
            if extra.name in table.column_names:
                columns[extra.name] = table.column(extra.name).combine_chunks().cast(extra.type)
            else:
                columns[extra.name] = pa.nulls(table.num_rows, extra.type)
        columns["metadata_issues"] = pa.array(issues, pa.list_(pa.string()))
        columns["input_file"] = pa.array([str(path)] * table.num_rows, pa.string())
        columns["input_row"] = pa.array(np.arange(lo, hi, dtype=np.int64))
        return pa.table(columns)

    def check_readable(self) -> None:
        """Decode every row group of every file once (a row group at a time), so a corrupt page
        stops planning with its file and row group instead of a later shard's write."""
        for path, readable in zip(self.files, self.parquet):
            parquet = pq.ParquetFile(readable)
            for group in range(parquet.metadata.num_row_groups):
                try:
                    parquet.read_row_group(group)
                except Exception as err:  # pyarrow raises OSError, ArrowInvalid, thrift errors...
                    raise MetadataError(f"{path}: {_row_group_text(parquet, group)} cannot be read ({err})") from err

    def duplicate_rows(self) -> dict[int, tuple[str, int]]:
        """Global row -> (file, row) of the first row with the same SAMPLE_ID, for every later duplicate."""
        ids = (
            np.concatenate([self._sample_ids(i) for i in range(len(self.files))])
            if self.files
            else np.array([], np.int64)
        )
        order = np.argsort(ids, kind="stable")  # stable: equal ids keep input order
        sorted_ids = ids[order]
        starts_run = np.ones(len(ids), dtype=bool)
        starts_run[1:] = sorted_ids[1:] != sorted_ids[:-1]
        # position (in sorted order) of the first row of each position's run of equal ids
        run_first = np.maximum.accumulate(np.where(starts_run, np.arange(len(ids)), 0))
        return {
            int(order[pos]): self.locate(int(order[run_first[pos]])) for pos in np.flatnonzero(~starts_run).tolist()
        }

    def _sample_ids(self, i: int) -> np.ndarray:
        wanted = [name for name in (self.columns["SAMPLE_ID"], self.columns["URL"], self.columns["TEXT"]) if name]
        table = pq.read_table(self.parquet[i], columns=list(dict.fromkeys(wanted)))
        return _sample_id_column(table, self.columns, self.files[i], 0).to_numpy()

    def locate(self, global_row: int) -> tuple[str, int]:
        """(input file, row within it) of a global row."""
        i = int(np.searchsorted(self._offsets, global_row, side="right")) - 1
        return str(self.files[i]), global_row - self._offsets[i]

    def fingerprint(self, **plan: Any) -> str:
        """Identity of an ingest plan: the inputs (resolved path, rows, content digest), the
        column mapping, plus ``plan`` settings. The digest, not the size, so a file replaced by
        another of the same size between an interrupted run and its rerun is a different plan."""
        inputs = [(str(p.resolve()), n, file_digest(p)) for p, n in zip(self.files, self.row_counts)]
        blob = json.dumps({"inputs": inputs, "columns": self.columns, **plan}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def metadata_format(path: Path) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``json`` (lines) by the file's suffix, a compression
    suffix aside; anything else is read as Parquet."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}.get(last, "parquet")


def _staged_parquet(path: Path, kind: str, staging_dir: Path, text_columns: set[str]) -> Path:
    """A Parquet copy of a CSV/TSV/JSON-lines file, written once per content (the digest names it)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    staged = Path(staging_dir) / f"{file_digest(path)}.parquet"
    if staged.exists():
        return staged
    try:
        if kind == "json":
            table = pjson.read_json(path)
        else:
            # Captions and URLs stay text even when a file's values all look like numbers.
            header = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ","))
            names = set(header.schema.names)
            header.close()
            table = pcsv.read_csv(
                path,
                parse_options=pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.string() for name in text_columns & names}, strings_can_be_null=True
                ),
            )
    except (pa.ArrowInvalid, OSError) as err:
        raise MetadataError(f"{path}: not readable as {kind.upper()} ({str(err).splitlines()[0]})") from err
    atomic_write(staged, lambda handle: pq.write_table(table, handle))
    return staged


def resolve_columns(schema: pa.Schema, path: Path, named: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """Canonical column -> input column for one file: the flag's name, else the first usual name present."""
    resolved: dict[str, str | None] = {}
    for canonical, candidates in COLUMN_CANDIDATES.items():
        flag = (named or {}).get(canonical)
        if flag is not None:
            if flag not in schema.names:
                raise MetadataError(
                    f"{path}: no column {flag!r} (named for {canonical}; has: {', '.join(schema.names)})"
                )
            resolved[canonical] = flag
            continue
        resolved[canonical] = next((name for name in candidates if name in schema.names), None)
    missing = [c for c in NEEDED_COLUMNS if resolved[c] is None]
    if missing:
        looked = "; ".join(f"{c}: {' or '.join(COLUMN_CANDIDATES[c])}" for c in missing)
        raise MetadataError(
            f"{path}: missing required column(s) {', '.join(missing)} (looked for {looked}; has: "
            f"{', '.join(schema.names)}; --url-col / --caption-col name others)"
        )
    return resolved


def open_metadata(
    paths: Sequence[Path], columns: dict[str, str | None] | None = None, staging_dir: Path | None = None
) -> MetadataFiles:
    """Validate every file's schema (footers only; text formats are first converted into
    ``staging_dir``) and unify the column mapping and the extras; no rows are read."""
    if not paths:
        raise MetadataError("no metadata files given")
    files: list[Path] = []
    readable: list[Path] = []
    counts: list[int] = []
    extras: dict[str, pa.Field] = {}
    extra_origin: dict[str, Path] = {}
    mapping: dict[str, str | None] | None = None
    text_columns = {n for c in ("URL", "TEXT") for n in (*COLUMN_CANDIDATES[c], (columns or {}).get(c)) if n}
    for path in map(Path, paths):
        if not path.is_file():
            raise MetadataError(f"{path}: metadata file not found")
        kind = metadata_format(path)
        if kind == "parquet":
            source = path
        else:
            if staging_dir is None:
                raise MetadataError(f"{path}: {kind.upper()} input needs a staging folder for its Parquet copy")
            source = _staged_parquet(path, kind, staging_dir, text_columns)
        try:
            parquet = pq.ParquetFile(source)
        except Exception as err:  # pyarrow raises several types for non-Parquet bytes
            raise MetadataError(f"{path}: not a readable Parquet file ({err})") from err
        schema = parquet.schema_arrow
        repeated = sorted({name for name in schema.names if schema.names.count(name) > 1})
        if repeated:
            raise MetadataError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
        resolved = resolve_columns(schema, path, columns)
        if mapping is None:
            mapping = resolved
        elif resolved != mapping:
            differs = [c for c in mapping if mapping[c] != resolved[c]]
            raise MetadataError(
                f"{path}: reads {', '.join(f'{c} from {resolved[c]}' for c in differs)} but {files[0]} reads "
                f"{', '.join(f'{c} from {mapping[c]}' for c in differs)}; name the columns with --id-col etc."
            )
        for name, (accepts, wanted) in _ACCEPTS.items():
            column = resolved[name]
            if column is not None and not accepts(schema.field(column).type):
                raise MetadataError(f"{path}: column {column} has type {schema.field(column).type}, expected {wanted}")
        mapped = {name for name in resolved.values() if name}
        for column in schema:
            if column.name in mapped:
                continue
            if column.name in RESERVED_NAMES or column.name in REQUIRED_COLUMNS:
                raise MetadataError(f"{path}: column {column.name} clashes with a name the raw dataset adds")
            seen = extras.get(column.name)
            if seen is None or pat.is_null(seen.type):
                extras[column.name] = column.remove_metadata().with_nullable(True)
                extra_origin[column.name] = path
            elif not pat.is_null(column.type) and seen.type != column.type:
                raise MetadataError(
                    f"{path}: column {column.name} has type {column.type}, "
                    f"but {extra_origin[column.name]} has {seen.type}"
                )
        files.append(path)
        readable.append(source)
        counts.append(parquet.metadata.num_rows)
    assert mapping is not None  # set by the first file
    return MetadataFiles(files, readable, counts, pa.schema(list(extras.values())), mapping)


def read_metadata(
    paths: Sequence[Path], columns: dict[str, str | None] | None = None, staging_dir: Path | None = None
) -> pa.Table:
    """All rows of ``paths``, validated and normalised (see the module docstring)."""
    metadata = open_metadata(paths, columns, staging_dir)
    return metadata.read_rows(0, metadata.total_rows)


def _read_row_range(readable: Path, path: Path, lo: int, hi: int) -> pa.Table:
    """Rows ``[lo, hi)`` of one file (read from ``readable``), reading only the row groups that overlap them."""
    parquet = pq.ParquetFile(readable)
    groups, first, offset = [], None, 0
    for g in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        if offset + n > lo and offset < hi:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return parquet.schema_arrow.empty_table()
    try:
        table = parquet.read_row_groups(groups)
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid, thrift errors...
        where = ", ".join(_row_group_text(parquet, g) for g in groups)
        raise MetadataError(f"{path}: {where} cannot be read ({err})") from err
    assert first is not None  # set with the first group
    return table.slice(lo - first, hi - lo)


def _row_group_text(parquet: pq.ParquetFile, group: int) -> str:
    first = sum(parquet.metadata.row_group(g).num_rows for g in range(group))
    last = first + parquet.metadata.row_group(group).num_rows - 1
    return f"row group {group} (rows {first}-{last})"


def derived_sample_ids(urls: Sequence[str | None], texts: Sequence[str | None]) -> np.ndarray:
    """SAMPLE_IDs for rows without one: 63 bits of BLAKE2b over URL and caption, so a rerun,
    or the same row in another file, gets the same id."""
    ids = np.empty(len(urls), dtype=np.int64)
    for i, (url, text) in enumerate(zip(urls, texts)):
        digest = hashlib.blake2b(f"{url or ''}\0{text or ''}".encode(), digest_size=8).digest()
        ids[i] = int.from_bytes(digest, "big") >> 1
    return ids


def _sample_id_column(table: pa.Table, columns: dict[str, str | None], path: Path, base: int) -> pa.Array:
    name = columns["SAMPLE_ID"]
    if name is None:
        texts = table.column(columns["TEXT"] or "").combine_chunks()
        if not (pat.is_string(texts.type) or pat.is_large_string(texts.type) or pat.is_null(texts.type)):
            texts = pa.array([t.decode("utf-8", "replace") if t is not None else None for t in texts.to_pylist()])
        urls = table.column(columns["URL"] or "").to_pylist()
        return pa.array(derived_sample_ids(urls, texts.to_pylist()), pa.int64())
    return _sample_id_array(table.column(name).combine_chunks(), name, path, base)


def _rows_text(rows: np.ndarray, base: int, limit: int = 5) -> str:
    shown = ", ".join(str(int(r) + base) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _sample_id_array(column: pa.Array, name: str, path: Path, base: int) -> pa.Array:
    nulls = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
    out_of_range = np.zeros(0, dtype=np.int64)
    if _text_like(column.type):
        # img2dataset keys are zero-padded digit strings; anything else is not an id.
        text = column.cast(pa.string())
        digits = pc.fill_null(pc.match_substring_regex(text, r"^[0-9]+$"), True).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~digits)
        if len(bad):
            raise MetadataError(f"{path}: column {name} is not an integer in row(s) {_rows_text(bad, base)}")
        values = text.to_pylist()
        out_of_range = np.array([i for i, v in enumerate(values) if v is not None and int(v) >= 2**63], np.int64)
        if not len(out_of_range) and not len(nulls):
            return text.cast(pa.int64())
    elif pat.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        nulls = np.flatnonzero(np.isnan(values))
        fractional = np.flatnonzero(np.isfinite(values) & (values != np.floor(values)))
        if len(fractional):
            raise MetadataError(f"{path}: column {name} is not a whole number in row(s) {_rows_text(fractional, base)}")
        out_of_range = np.flatnonzero(~np.isnan(values) & ~((values >= -(2.0**63)) & (values < 2.0**63)))
    elif pat.is_unsigned_integer(column.type):
        too_big = pc.fill_null(pc.greater(column, pa.scalar(2**63 - 1, column.type)), False)
        out_of_range = np.flatnonzero(too_big.to_numpy(zero_copy_only=False))
    if len(nulls):
        raise MetadataError(f"{path}: column {name} is null in row(s) {_rows_text(nulls, base)}; every row needs an id")
    if len(out_of_range):
        raise MetadataError(
            f"{path}: column {name} is outside the int64 range in row(s) {_rows_text(out_of_range, base)}"
        )
    return column.cast(pa.int64())


def _normalise_required(
    table: pa.Table, columns: dict[str, str | None], path: Path, base: int
) -> tuple[dict[str, pa.Array], list[list[str]]]:
    """Canonical required columns and per-row issue lists for rows starting at file row ``base``."""
    n = table.num_rows
    issues: list[list[str]] = [[] for _ in range(n)]

    def column(canonical: str) -> pa.Array:
        name = columns[canonical]
        return table.column(name).combine_chunks() if name else pa.nulls(n)

    normalised: dict[str, pa.Array] = {
        "SAMPLE_ID": _sample_id_column(table, columns, path, base),
        "URL": column("URL").cast(pa.string()),
        "TEXT": _utf8_text(column("TEXT"), issues),
    }
    for name in ("WIDTH", "HEIGHT"):
        # An absent size column is measured from the image at fetch time: not a row's issue.
        normalised[name] = _dimension(name, column(name), issues if columns[name] else [[] for _ in range(n)])
    normalised["similarity"] = _similarity(column("similarity"), issues)
    return normalised, issues


def _utf8_text(column: pa.Array, issues: list[list[str]]) -> pa.Array:
    if pat.is_null(column.type):
        return column.cast(pa.string())
    if pat.is_string(column.type) or pat.is_large_string(column.type):
        try:
            column.validate(full=True)
            return column.cast(pa.string())
        except pa.ArrowInvalid:  # bytes stored under a string type without being UTF-8
            column = column.view(pa.large_binary() if pat.is_large_string(column.type) else pa.binary())
    decoded: list[str | None] = []
    for i, raw in enumerate(column.to_pylist()):
        if raw is None:
            decoded.append(None)
            continue
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(raw.decode("utf-8", errors="replace"))
            issues[i].append("TEXT: not valid UTF-8 (undecodable bytes replaced with U+FFFD)")
    return pa.array(decoded, pa.string())


def _dimension(name: str, column: pa.Array, issues: list[list[str]]) -> pa.Array:
    """WIDTH/HEIGHT as nullable int64; missing, NaN, infinite, implausible, fractional and
    non-positive values are listed."""
    # safe=False: int64 sizes beyond 2**53 must not stop the ingest; they are implausible anyway.
    values = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # null -> NaN
    missing = np.isnan(values)
    implausible = ~missing & ~(np.abs(values) <= MAX_DIMENSION)  # infinities included
    fractional = ~missing & ~implausible & (values != np.floor(values))
    for i in np.flatnonzero(missing | implausible | fractional | (values <= 0)).tolist():
        if missing[i]:
            issues[i].append(f"{name}: missing or NaN")
        elif implausible[i]:
            issues[i].append(f"{name}: not a plausible size ({float(values[i])})")
        elif fractional[i]:
            issues[i].append(f"{name}: not a whole number ({float(values[i])})")
        else:
            issues[i].append(f"{name}: not positive ({int(values[i])})")
    keep = ~(missing | implausible | fractional)
    return pa.array(np.where(keep, values, 0).astype(np.int64), pa.int64(), mask=~keep)


def _similarity(column: pa.Array, issues: list[list[str]]) -> pa.Array:
    values = column.cast(pa.float64(), safe=False)  # a huge integer similarity is garbage, not a crash
    nan = pc.fill_null(pc.is_nan(values), False).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(nan).tolist():
        issues[i].append("similarity: NaN")
    return pc.if_else(pa.array(nan), pa.scalar(None, pa.float64()), values)


# ----------------------------------------------------------------------------- shards


def raw_schema(metadata_schema: pa.Schema, fingerprint: str, first_row: int) -> pa.Schema:
    """The raw shard schema for ``metadata_schema`` (see :attr:`MetadataFiles.schema`)."""
    return pa.schema(
        list(metadata_schema) + list(FETCH_FIELDS),
        metadata={PLAN_KEY: fingerprint.encode(), FIRST_ROW_KEY: str(first_row).encode()},
    )


def write_raw_shard(
    raw_dir: Path,
    spec: ShardSpec,
    rows: pa.Table,
    images: Sequence[bytes | None],
    statuses: Sequence[str],
    errors: Sequence[str | None],
    metadata_schema: pa.Schema,
    fingerprint: str,
) -> Path:
    """Write one shard atomically: ``rows`` from :meth:`MetadataFiles.read_rows` plus fetch outcomes."""
    if not (rows.num_rows == spec.rows == len(images) == len(statuses) == len(errors)):
        raise ValueError(f"{spec.name}: {rows.num_rows} rows but {len(statuses)} fetch results for {spec.rows}")
    unknown = set(statuses) - set(FETCH_STATUSES)
    if unknown:
        raise ValueError(f"{spec.name}: unknown fetch status(es) {sorted(unknown)}")
    table = (
        rows.append_column("image", pa.array(images, pa.binary()))
        .append_column("fetch_status", pa.array(statuses, pa.string()))
        .append_column("fetch_error", pa.array(errors, pa.string()))
    )
    return write_shard(table, shard_path(raw_dir, spec.index), raw_schema(metadata_schema, fingerprint, spec.start))


def shard_plan_fingerprint(path: Path) -> str | None:
    """The plan fingerprint stored in a raw shard's footer (None for a foreign Parquet file)."""
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(PLAN_KEY)
    return value.decode() if value else None


def shard_is_complete(raw_dir: Path, spec: ShardSpec, fingerprint: str) -> bool:
    """True when the shard exists under its final name, from the same plan, with every row."""
    path = shard_path(raw_dir, spec.index)
    if not path.exists():
        return False
    footer = pq.ParquetFile(path).metadata
    metadata = footer.metadata or {}
    return (
        metadata.get(PLAN_KEY) == fingerprint.encode()
        and metadata.get(FIRST_ROW_KEY) == str(spec.start).encode()
        and footer.num_rows == spec.rows
    )


def foreign_shards(raw_dir: Path, fingerprint: str, planned: int) -> list[Path]:
    """Shards in ``raw_dir`` that belong to a different plan (other inputs or shard size)."""
    return [p for p in list_shards(raw_dir) if shard_plan_fingerprint(p) != fingerprint or shard_index(p) >= planned]


def shard_status_counts(path: Path) -> dict[str, int]:
    statuses = pq.read_table(path, columns=["fetch_status"]).column("fetch_status")
    counts = pc.value_counts(statuses.combine_chunks()).to_pylist()
    return {item["values"]: item["counts"] for item in counts}


def write_raw_manifest(
    raw_dir: Path,
    metadata: MetadataFiles,
    specs: Sequence[ShardSpec],
    shard_size: int,
    fingerprint: str,
    source: str,
    shard_status: dict[int, dict[str, int]],
    corpus: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write (and return) ``manifest.json``: inputs, the embedded corpus's settings (None for
    real images), complete shards with status counts, totals."""
    totals: dict[str, int] = {}
    for counts in shard_status.values():
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
    manifest = {
        "dataset": "raw",
        "plan_fingerprint": fingerprint,
        "source": source,
        "corpus": corpus,
        "inputs": [{"file": str(p), "rows": n} for p, n in zip(metadata.files, metadata.row_counts)],
        "columns": {c: n or IMPLIED_COLUMNS[c] for c, n in metadata.columns.items()},
        "rows": metadata.total_rows,
        "shard_size": shard_size,
        "complete": len(shard_status) == len(specs),
        "status_counts": dict(sorted(totals.items())),
        "shards": [
            {
                "name": spec.name,
                "first_input_row": spec.start,
                "rows": spec.rows,
                "status_counts": dict(sorted(shard_status[spec.index].items())),
            }
            for spec in specs
            if spec.index in shard_status
        ],
    }
    if read_manifest(raw_dir) != manifest:  # an unchanged dataset keeps its file untouched
        write_manifest(raw_dir, manifest)
    return manifest


def read_raw_manifest(raw_dir: Path) -> dict[str, Any]:
    """The ingest run's manifest ({} before the first ingest)."""
    return read_manifest(raw_dir)
