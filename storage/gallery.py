"""The gallery index: one embedding and thumbnail per gallery photo, for retrieval.

``<gallery>/embeddings.parquet`` (one file: a gallery is read whole to serve queries) with
``photo_id`` string, ``embedding`` list<float32> (L2-normalised, the model's space),
``thumbnail`` binary (JPEG), ``source`` string (where the photo came from), and
``manifest.json`` naming the model (content fingerprint and checkpoint) and the data
(episodes fingerprint and split) it was built from; above a configured size also
``hnsw.faiss``, an approximate index whose measured recall@10 against exact search the
manifest records (``approximate``). A rebuild with the same model keeps the
rows of photos it already has and embeds only new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.files import commit, temp_path
from storage.shards import read_manifest, write_manifest, write_shard

EMBEDDINGS_FILE = "embeddings.parquet"
APPROXIMATE_FILE = "hnsw.faiss"  # present when the manifest names an approximate index

GALLERY_SCHEMA = pa.schema(
    [
        pa.field("photo_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
        pa.field("thumbnail", pa.binary(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


def write_gallery(gallery_dir: Path, rows: pa.Table, manifest: dict[str, Any]) -> Path:
    """Write the gallery's rows, then its manifest (a reader trusts the rows the manifest names)."""
    gallery_dir = Path(gallery_dir)
    path = write_shard(rows.select(GALLERY_SCHEMA.names).cast(GALLERY_SCHEMA), gallery_dir / EMBEDDINGS_FILE)
    write_manifest(gallery_dir, {**manifest, "dataset": "gallery", "photos": rows.num_rows})
    return path


def read_gallery_manifest(gallery_dir: Path) -> dict[str, Any]:
    """The gallery's manifest ({} when none was built there)."""
    return read_manifest(Path(gallery_dir))


def read_gallery(gallery_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """The gallery rows; a folder without a built gallery is an error saying how to build one."""
    path = Path(gallery_dir) / EMBEDDINGS_FILE
    if not read_gallery_manifest(gallery_dir) or not path.exists():
        raise FileNotFoundError(f"{gallery_dir} holds no gallery index: run `fvlp index` first")
    return pq.read_table(path, columns=columns)


def gallery_embeddings(table: pa.Table) -> np.ndarray:
    """[N, D] float32 embeddings of gallery rows (one contiguous array for matrix products)."""
    column = table.column("embedding").combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = len(column[0])
    return column.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(column), dim)


def write_approximate_index(gallery_dir: Path, index: Any | None) -> None:
    """Write (or, with None, remove) the gallery's faiss index, whole or not at all."""
    import faiss

    path = Path(gallery_dir) / APPROXIMATE_FILE
    if index is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    faiss.write_index(index, str(tmp))
    commit(tmp, path)


def read_approximate_index(gallery_dir: Path) -> Any | None:
    """The gallery's faiss index, or None when the manifest names none."""
    import faiss

    settings = read_gallery_manifest(gallery_dir).get("approximate")
    if not settings:
        return None
    index = faiss.read_index(str(Path(gallery_dir) / APPROXIMATE_FILE))
    # Through ParameterSpace: a downcast wrapper would not own the index it points into.
    faiss.ParameterSpace().set_index_parameter(index, "efSearch", settings["ef_search"])
    return index
