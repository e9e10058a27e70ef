"""The source dataset: LAION-Face-shaped ``metadata.parquet`` and the corpus ``ground_truth.parquet``.

Both files are written atomically (temp file + rename) with explicit schemas, so a reader
sees either the previous complete file or the new one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fvlp_core.attributes import ATTRIBUTE_INDEX
from fvlp_core.corpus import NOISE_LABELS, EmbeddedCorpus
from storage.shards import write_shard

METADATA_FILE = "metadata.parquet"
GROUND_TRUTH_FILE = "ground_truth.parquet"

METADATA_SCHEMA = pa.schema(
    [
        pa.field("SAMPLE_ID", pa.int64(), nullable=False),
        pa.field("URL", pa.string(), nullable=False),
        pa.field("TEXT", pa.string()),
        pa.field("WIDTH", pa.int64()),
        pa.field("HEIGHT", pa.int64()),
        pa.field("similarity", pa.float64()),
        pa.field("LICENSE", pa.string()),
        pa.field("NSFW", pa.string()),
    ]
)

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("SAMPLE_ID", pa.int64(), nullable=False),
        pa.field("identity_id", pa.int64(), nullable=False),
        pa.field("noise", pa.list_(pa.string()), nullable=False),
        pa.field("expected_keep", pa.bool_(), nullable=False),
        pa.field("n_faces", pa.int32(), nullable=False),
        pa.field("attributes", pa.list_(pa.string()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)


def write_embedded_source(source_dir: Path, corpus: EmbeddedCorpus) -> tuple[Path, Path]:
    """Write the corpus metadata and ground truth into ``source_dir``; returns both paths."""
    source_dir = Path(source_dir)
    metadata = pa.Table.from_pandas(corpus.metadata(), schema=METADATA_SCHEMA, preserve_index=False)
    truth = pa.Table.from_pandas(corpus.ground_truth(), schema=GROUND_TRUTH_SCHEMA, preserve_index=False)
    return (
        write_shard(metadata, source_dir / METADATA_FILE, METADATA_SCHEMA),
        write_shard(truth, source_dir / GROUND_TRUTH_FILE, GROUND_TRUTH_SCHEMA),
    )


def read_source_metadata(source_dir: Path) -> pd.DataFrame:
    return _read(Path(source_dir) / METADATA_FILE, METADATA_SCHEMA).to_pandas()


def read_ground_truth(source_dir: Path) -> pd.DataFrame:
    """The ground truth table, checked: known noise labels and attribute names, unique SAMPLE_IDs."""
    path = Path(source_dir) / GROUND_TRUTH_FILE
    frame = _read(path, GROUND_TRUTH_SCHEMA).to_pandas()
    duplicated = frame["SAMPLE_ID"][frame["SAMPLE_ID"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: SAMPLE_ID {int(duplicated.iloc[0])} appears more than once")
    for sample_id, noise, attributes in zip(frame["SAMPLE_ID"], frame["noise"], frame["attributes"]):
        unknown = [n for n in noise if n not in NOISE_LABELS]
        if unknown:
            raise ValueError(f"{path}: SAMPLE_ID {sample_id}: unknown noise label(s) {unknown}")
        unknown = [a for a in attributes if a not in ATTRIBUTE_INDEX]
        if unknown:
            raise ValueError(f"{path}: SAMPLE_ID {sample_id}: unknown attribute(s) {unknown}")
    frame["noise"] = frame["noise"].map(list)
    frame["attributes"] = frame["attributes"].map(list)
    return frame


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (write the source first: the ingest stage does)")
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return table.select(schema.names).cast(schema)
