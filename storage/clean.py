"""The clean dataset: per-sample measurements, decisions and kept face crops.

``clean_dir/measurements/`` (one shard per raw shard, same index) holds what the
expensive step measured: detector output, the face crop, caption statistics. Its
Parquet metadata records the raw shard's fingerprint and the measurement versions,
so a re-run knows which shards (and which half: image or caption) are still valid.
``clean_dir/decisions/`` and ``clean_dir/faces/`` follow docs/architecture.md.

Generations. Every clean run writes all its decisions and faces shards tagged with one new
generation id (Parquet key-value metadata) and publishes the manifest, carrying that id,
last. Readers take only shards of the manifest's generation: after a run killed half-way
(some shards new, the manifest old) they refuse the mixed output instead of training on it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.files import stat_fingerprint
from storage.shards import (
    DatasetError,
    ShardedValues,
    list_shards,
    read_manifest,
    read_shard,
    read_shards,
    shard_index,
    shard_path,
    write_manifest,
    write_shard,
)
from storage.source import GROUND_TRUTH_FILE, read_ground_truth

MEASUREMENTS = "measurements"
DECISIONS = "decisions"
FACES = "faces"

RAW_COLUMNS = ["SAMPLE_ID", "TEXT", "image", "fetch_status", "fetch_error"]

IMAGE_FIELDS = (
    pa.field("image_error_rule", pa.string()),
    pa.field("image_error", pa.string()),
    pa.field("image_width", pa.int64()),
    pa.field("image_height", pa.int64()),
    pa.field("face_scores", pa.list_(pa.float32()), nullable=False),
    pa.field("face_areas", pa.list_(pa.float32()), nullable=False),
    pa.field("face_score", pa.float32()),
    pa.field("face_fraction", pa.float32()),
    pa.field("sharpness", pa.float32()),
    pa.field("box", pa.list_(pa.float32(), 4)),
    pa.field("landmarks", pa.list_(pa.float32(), 10)),
    pa.field("crop", pa.binary()),
    pa.field("image_phash", pa.int64()),
)
CAPTION_FIELDS = (
    pa.field("caption_chars", pa.int64(), nullable=False),
    pa.field("caption_words", pa.int64(), nullable=False),
    pa.field("caption_utf8", pa.bool_(), nullable=False),
    pa.field("english_ratio", pa.float64()),
    pa.field("spam", pa.string()),
    pa.field("person_cues", pa.int64(), nullable=False),
    pa.field("caption_minhash", pa.list_(pa.uint32()), nullable=False),
)
AGREEMENT_FIELDS = (pa.field("agreement", pa.float64()),)
MEASUREMENT_SCHEMA = pa.schema(
    [pa.field("SAMPLE_ID", pa.int64(), nullable=False), pa.field("text", pa.string())]
    + list(IMAGE_FIELDS)
    + list(CAPTION_FIELDS)
    + list(AGREEMENT_FIELDS)
)
GROUP_FIELDS = {
    "image": [f.name for f in IMAGE_FIELDS],
    "caption": [f.name for f in CAPTION_FIELDS],
    "agreement": [f.name for f in AGREEMENT_FIELDS],
}
VERSIONS_KEY = b"fvlp.clean.versions"

DECISION_SCHEMA = pa.schema(
    [
        pa.field("SAMPLE_ID", pa.int64(), nullable=False),
        pa.field("raw_shard", pa.string(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("measurements", pa.string(), nullable=False),
        pa.field("rule_version", pa.string(), nullable=False),
    ]
)

FACE_SCHEMA = pa.schema(
    [
        pa.field("SAMPLE_ID", pa.int64(), nullable=False),
        pa.field("crop", pa.binary(), nullable=False),
        # the caption stages use: the attribute template where attributes are known, else the text
        pa.field("caption", pa.string(), nullable=False),
        pa.field("text", pa.string()),  # the LAION caption as the caption rules filtered it
        pa.field("template_caption", pa.string()),  # null where no attributes are known
        pa.field("attributes", pa.list_(pa.string()), nullable=False),
        pa.field("det_score", pa.float32(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),
        pa.field("identity_id", pa.int64(), nullable=False),
    ]
)


def raw_fingerprint(path: Path) -> str:
    """Changes whenever ingest rewrites the raw shard."""
    return stat_fingerprint([path])


def read_raw_rows(path: Path) -> pa.Table:
    """The raw columns cleaning reads, naming the shard when one is missing."""
    names = pq.read_schema(path).names
    missing = [c for c in RAW_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"raw shard {path} lacks column(s) {', '.join(missing)} (see docs/architecture.md)")
    return read_shard(path, RAW_COLUMNS)


def measurement_path(clean_dir: Path, raw_shard: Path) -> Path:
    return shard_path(Path(clean_dir) / MEASUREMENTS, shard_index(raw_shard))


def stored_versions(path: Path) -> dict[str, str]:
    """The raw fingerprint and measurement versions a measurements shard was made with ({} if none)."""
    if not Path(path).exists():
        return {}
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(VERSIONS_KEY, b"{}"))


def write_measurements(rows: dict[str, list], path: Path, versions: dict[str, str]) -> Path:
    schema = MEASUREMENT_SCHEMA.with_metadata({VERSIONS_KEY: json.dumps(versions, sort_keys=True).encode()})
    return write_shard(pa.table(rows, schema=schema), path)


def read_measurements(path: Path, columns: list[str] | None = None) -> pa.Table:
    return read_shard(path, columns)


def measured_crops(path: Path, wanted: set[int]) -> dict[int, bytes]:
    """Face crops (JPEG) of the ``wanted`` SAMPLE_IDs in one measurements shard.

    A repeated SAMPLE_ID's later row (never fetched, so no crop) never hides the first row's crop.
    """
    table = read_measurements(path, ["SAMPLE_ID", "crop"])
    return {
        sample_id: crop
        for sample_id, crop in zip(table.column("SAMPLE_ID").to_pylist(), table.column("crop").to_pylist())
        if sample_id in wanted and crop is not None
    }


GENERATION_KEY = b"fvlp_clean_generation"


def new_generation() -> str:
    return uuid.uuid4().hex


def _tagged(columns: dict[str, list], schema: pa.Schema, generation: str) -> pa.Table:
    return pa.table(columns, schema=schema.with_metadata({GENERATION_KEY: generation.encode()}))


def write_decisions(columns: dict[str, list], clean_dir: Path, index: int, generation: str) -> Path:
    """One decisions shard from ``DECISION_SCHEMA``'s columns, of clean run ``generation``."""
    table = _tagged(columns, DECISION_SCHEMA, generation)
    return write_shard(table, shard_path(Path(clean_dir) / DECISIONS, index))


def write_faces(columns: dict[str, list], clean_dir: Path, index: int, generation: str) -> Path:
    """One faces shard from ``FACE_SCHEMA``'s columns, of clean run ``generation``."""
    return write_shard(_tagged(columns, FACE_SCHEMA, generation), shard_path(faces_dir(clean_dir), index))


def shard_generation(path: Path) -> str | None:
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(GENERATION_KEY)
    return value.decode() if value is not None else None


def published_shards(clean_dir: Path, sub: str) -> list[Path]:
    """The ``sub`` (decisions or faces) shards, all of the published generation; a shard of
    another generation (a clean run that did not finish) is an error naming it."""
    shards = list_shards(Path(clean_dir) / sub)
    generation = read_clean_manifest(clean_dir).get("generation")
    for path in shards:
        found = shard_generation(path)
        if found != generation:
            raise DatasetError(
                f"{path} belongs to clean run generation {found}, but {Path(clean_dir) / DECISIONS} "
                f"publishes {generation}: a clean run stopped half-way and the output is mixed; "
                "rerun `fvlp clean` to finish it"
            )
    return shards


def remove_stale_shards(clean_dir: Path, keep: set[int]) -> None:
    """Drop output shards whose raw shard no longer exists (the raw dataset shrank)."""
    for sub in (MEASUREMENTS, DECISIONS, FACES):
        for path in list_shards(Path(clean_dir) / sub):
            if shard_index(path) not in keep:
                path.unlink()


def write_clean_manifest(clean_dir: Path, manifest: dict) -> None:
    write_manifest(Path(clean_dir) / DECISIONS, manifest)


def read_clean_manifest(clean_dir: Path) -> dict:
    """The last clean run's manifest: rule versions, its settings and the corpus it cleaned ({} if none)."""
    return read_manifest(Path(clean_dir) / DECISIONS)


def read_decisions(clean_dir: Path, columns: list[str] | None = None) -> pa.Table:
    shards = published_shards(clean_dir, DECISIONS)
    if not shards:
        raise FileNotFoundError(f"no shards in {Path(clean_dir) / DECISIONS}")
    return read_shards(shards, columns)


def faces_dir(clean_dir: Path) -> Path:
    return Path(clean_dir) / FACES


def face_shards(clean_dir: Path) -> list[Path]:
    shards = published_shards(clean_dir, FACES)
    if not shards:
        raise FileNotFoundError(f"no face shards in {faces_dir(clean_dir)}: run the clean stage first")
    return shards


def read_faces(clean_dir: Path, columns: list[str] | None = None) -> pa.Table:
    return read_shards(face_shards(clean_dir), columns)


FACE_INDEX_COLUMNS = ["SAMPLE_ID", "caption", "det_score", "identity_id"]


def read_face_index(clean_dir: Path) -> pa.Table:
    """Kept faces without their crops: SAMPLE_ID, caption, det_score, identity_id."""
    return read_faces(clean_dir, FACE_INDEX_COLUMNS)


def face_sample_ids(shard: Path) -> list[int]:
    return read_shard(shard, ["SAMPLE_ID"]).column("SAMPLE_ID").to_pylist()


def read_face_pairs(shard: Path) -> pa.Table:
    """``SAMPLE_ID``, ``crop`` (JPEG bytes), ``caption``, ``text`` of one shard; a row without
    crop or caption is an error (``text`` may be null or empty)."""
    table = read_shard(shard, ["SAMPLE_ID", "crop", "caption", "text"])
    for column in ("crop", "caption"):
        values = table.column(column)
        bad = pc.or_(pc.is_null(values), pc.equal(pc.binary_length(values), 0))
        if pc.any(bad).as_py():
            sample_id = table.filter(bad).column("SAMPLE_ID")[0].as_py()
            raise DatasetError(f"{shard}: SAMPLE_ID {sample_id} has an empty {column!r}")
    return table


class FaceCrops(ShardedValues[int, bytes]):
    """JPEG crops by SAMPLE_ID, one face shard's in memory at a time (:class:`ShardedValues`)."""

    def __init__(self, clean_dir: Path):
        self.clean_dir = Path(clean_dir)
        self.missing_message = f"{faces_dir(self.clean_dir)}: no crop for SAMPLE_ID {{key}} ({{count}} missing)"
        super().__init__(face_shards(self.clean_dir), face_sample_ids, _crops_of)

    def read(self, sample_ids: Iterable[int]) -> dict[int, bytes]:
        return super().read(int(s) for s in sample_ids)


def _crops_of(shard: Path) -> dict[int, bytes]:
    table = read_shard(shard, ["SAMPLE_ID", "crop"])
    return dict(zip(table["SAMPLE_ID"].to_pylist(), table["crop"].to_pylist()))


def read_ground_truth_if_any(source_dir: Path) -> pd.DataFrame | None:
    """The embedded corpus's ground truth (storage/source.py), or None for corpora without one."""
    if not (Path(source_dir) / GROUND_TRUTH_FILE).exists():
        return None
    return read_ground_truth(source_dir)
