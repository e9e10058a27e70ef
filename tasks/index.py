"""Prefect task of the index stage: embed a gallery's photos once, keep what is already embedded."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.config import IndexConfig
from fvlp_core.digest import file_digest
from fvlp_core.png import open_image
from fvlp_core.retrieval import GallerySearch, approximate_recall, build_hnsw, probe_queries
from storage.checkpoints import finetuned_checkpoint
from storage.episodes import read_episodes_reference, read_photos
from storage.gallery import (
    GALLERY_SCHEMA,
    gallery_embeddings,
    read_gallery,
    read_gallery_manifest,
    write_approximate_index,
    write_gallery,
)


def thumbnail(image: Image.Image, size: int) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def approximate_index(config: IndexConfig, embeddings: np.ndarray, photo_ids: list[str]) -> tuple[Any, dict] | None:
    """An HNSW index for a gallery over ``approximate_above`` photos, with its recall@10 against
    exact search measured on 1,000 queries near gallery photos; None for smaller galleries."""
    if len(photo_ids) <= config.approximate_above:
        return None
    index = build_hnsw(embeddings, config.hnsw_neighbours, ef_search=config.hnsw_ef_search)
    queries = probe_queries(embeddings, 1000)
    recall = approximate_recall(GallerySearch(photo_ids, embeddings, index), queries, k=10)
    get_run_logger().info("HNSW index over %d photos: recall@10 %.3f against exact search", len(photo_ids), recall)
    settings = {"kind": "hnsw", "neighbours": config.hnsw_neighbours, "ef_search": config.hnsw_ef_search}
    return index, {**settings, "recall_at_10": recall, "recall_queries": len(queries)}


@task(name="build-gallery", cache_policy=NO_CACHE)
def build_gallery(config: IndexConfig) -> dict[str, Any]:
    """Embed the split's photos into ``config.gallery_dir``; photos a gallery built with the same
    model already holds are kept, not embedded again."""
    from fvlp_core.embed import FVLPEncoder

    logger = get_run_logger()
    checkpoint = finetuned_checkpoint(config.paths.checkpoints_dir, config.checkpoint)
    model_fingerprint = f"sha256:{file_digest(checkpoint)}"
    episodes = read_episodes_reference(config.episodes_dir)
    photos = read_photos(config.episodes_dir, split=config.split, columns=["photo_id", "image"])
    if photos.num_rows == 0:
        raise ValueError(f"{config.episodes_dir}: split {config.split!r} has no photos to index")
    previous = read_gallery_manifest(config.gallery_dir)
    kept = pa.schema(GALLERY_SCHEMA).empty_table()
    if previous.get("model_fingerprint") == model_fingerprint:
        kept = read_gallery(config.gallery_dir)
    have = set(kept.column("photo_id").to_pylist())
    wanted = [i for i, p in enumerate(photos.column("photo_id").to_pylist()) if p not in have]
    new = photos.take(pa.array(wanted, pa.int64()))
    encoder = FVLPEncoder.load(checkpoint, device=config.device, batch_size=config.batch_size)
    images = [open_image(b).convert("RGB") for b in new.column("image").to_pylist()]
    embeddings = encoder.encode_images(images).numpy() if images else None
    source = f"episodes:{config.episodes_dir.resolve()}:{config.split}"
    added = pa.table(
        {
            "photo_id": new.column("photo_id"),
            "embedding": pa.array([] if embeddings is None else list(embeddings), pa.list_(pa.float32())),
            "thumbnail": pa.array([thumbnail(image, config.thumbnail_size) for image in images], pa.binary()),
            "source": pa.array([source] * new.num_rows, pa.string()),
        },
        schema=GALLERY_SCHEMA,
    )
    rows = pa.concat_tables([kept.select(GALLERY_SCHEMA.names).cast(GALLERY_SCHEMA), added])
    approximate = approximate_index(config, gallery_embeddings(rows), rows.column("photo_id").to_pylist())
    write_approximate_index(config.gallery_dir, approximate[0] if approximate else None)
    write_gallery(
        config.gallery_dir,
        rows,
        {
            "model_fingerprint": model_fingerprint,
            "checkpoint": str(checkpoint.resolve()),
            "model_name": encoder.model_name,
            "dim": int(encoder.embed_dim),
            "episodes_dir": str(config.episodes_dir.resolve()),
            "episodes_fingerprint": episodes["fingerprint"],
            "split": config.split,
            "settings": config.model_dump(mode="json", exclude={"paths"}),
            "approximate": approximate[1] if approximate else None,
        },
    )
    logger.info(
        "gallery %s: %d photos (%d embedded now, %d kept) with %s",
        config.gallery_dir,
        rows.num_rows,
        added.num_rows,
        kept.num_rows,
        checkpoint,
    )
    return {
        "gallery_dir": str(config.gallery_dir),
        "photos": rows.num_rows,
        "embedded": added.num_rows,
        "kept": kept.num_rows,
        "model_fingerprint": model_fingerprint,
    }
