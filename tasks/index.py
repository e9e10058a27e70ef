"""Prefect task of the index stage: embed a gallery's photos once, keep what is already embedded."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.codec import open_image
from fvlp_core.config import CleanConfig, IndexConfig
from fvlp_core.detection.backends import detector_for
from fvlp_core.detection.crop import crop_face
from fvlp_core.detection.images import ImageRejected, decode_rgb
from fvlp_core.digest import file_digest
from fvlp_core.fetch import IMAGE_EXTENSIONS
from fvlp_core.retrieval import GallerySearch, approximate_recall, build_hnsw, probe_queries
from storage.checkpoints import finetuned_checkpoint
from storage.clean import FaceCrops, faces_dir, read_clean_manifest
from storage.episodes import EpisodePhotos, read_episodes_reference
from storage.files import content_fingerprint
from storage.gallery import (
    GALLERY_SCHEMA,
    gallery_embeddings,
    read_gallery,
    read_gallery_manifest,
    write_approximate_index,
    write_gallery,
)
from storage.shards import dataset_fingerprint
from tasks.clean_worker import detector_spec


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


@dataclass
class GallerySource:
    """The photos a gallery can hold: their ids, and how to get the images of some of them."""

    label: str  # recorded in each row's ``source``
    photo_ids: list[str]
    fingerprint: str  # content fingerprint of the data the photos come from
    load: Callable[[list[str]], tuple[list[Image.Image], dict[str, str]]]  # images of ids, and ids skipped (why)
    episodes: dict[str, str] | None = None  # episodes folder and split, for replay


def episodes_source(config: IndexConfig) -> GallerySource:
    """The photos of an episodes split, in chunk order: the gallery's batches read each photo
    shard once, one shard's photos in memory at a time."""
    fingerprint = read_episodes_reference(config.episodes_dir)["fingerprint"]  # a complete build, or why not
    photos = EpisodePhotos(config.episodes_dir, config.split)
    if not photos.shard_of:
        raise ValueError(f"{config.episodes_dir}: split {config.split!r} has no photos to index")

    def load(ids: list[str]) -> tuple[list[Image.Image], dict[str, str]]:
        images = photos.read(ids)
        return [open_image(images[i]).convert("RGB") for i in ids], {}

    return GallerySource(
        f"episodes:{config.episodes_dir.resolve()}:{config.split}",
        list(photos.shard_of),
        fingerprint,
        load,
        {"episodes_dir": str(config.episodes_dir.resolve()), "split": config.split},
    )


def faces_source(config: IndexConfig) -> GallerySource:
    """The cleaned faces: already cropped by the clean stage. Ids come in shard order, so the
    gallery's batches read each face shard once, one shard's crops in memory at a time."""
    face_crops = FaceCrops(config.paths.clean_dir)

    def load(ids: list[str]) -> tuple[list[Image.Image], dict[str, str]]:
        crops = face_crops.read([int(i) for i in ids])
        return [open_image(crops[int(i)]).convert("RGB") for i in ids], {}

    return GallerySource(
        f"faces:{config.paths.clean_dir.resolve()}",
        [str(sample_id) for sample_id in face_crops.shard_of],
        dataset_fingerprint(faces_dir(config.paths.clean_dir)),
        load,
    )


def folder_source(config: IndexConfig) -> GallerySource:
    """Photos in a folder, each cut to its main face as the clean stage cuts it (the clean run's
    detector, crop size and margin when the data root has one, else the clean defaults)."""
    folder = Path(config.photos or "")
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder not found: {folder}")
    files = {
        str(path.relative_to(folder)): path
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not path.is_symlink()
    }
    clean = CleanConfig.model_validate(
        {"paths": config.paths, **read_clean_manifest(config.paths.clean_dir).get("settings", {})}
    )

    def load(ids: list[str]) -> tuple[list[Image.Image], dict[str, str]]:
        detector = detector_for(detector_spec(clean))
        images, skipped = [], {}
        for photo_id in ids:
            try:
                rgb = decode_rgb(files[photo_id].read_bytes(), clean.max_image_pixels)
            except ImageRejected as err:
                skipped[photo_id] = f"{err.rule}: {err}"
                continue
            faces = detector.detect(rgb)
            if len(faces) == 0:
                skipped[photo_id] = "no_face: the detector found no face"
                continue
            landmarks = None if faces.landmarks is None else faces.landmarks[0]
            crop = crop_face(rgb, faces.boxes[0], landmarks, clean.crop_size, clean.crop_margin)
            images.append(Image.fromarray(crop))
        return images, skipped

    return GallerySource(f"folder:{folder.resolve()}", list(files), content_fingerprint(files.values()), load)


SOURCES = {"episodes": episodes_source, "faces": faces_source, "folder": folder_source}


@task(name="build-gallery", cache_policy=NO_CACHE)
def build_gallery(config: IndexConfig) -> dict[str, Any]:
    """Embed the source's photos into ``config.gallery_dir``; photos a gallery built with the same
    model from the same source already holds are kept, not embedded again; a photo that cannot
    be used (no face, not an image) is listed in the manifest's ``skipped`` with the reason."""
    from fvlp_core.embed import FVLPEncoder

    logger = get_run_logger()
    checkpoint = finetuned_checkpoint(config.paths.checkpoints_dir, config.checkpoint)
    model_fingerprint = f"sha256:{file_digest(checkpoint)}"
    source = SOURCES[config.source](config)
    previous = read_gallery_manifest(config.gallery_dir)
    kept = pa.schema(GALLERY_SCHEMA).empty_table()
    if previous.get("model_fingerprint") == model_fingerprint and previous.get("source") == source.label:
        kept = read_gallery(config.gallery_dir)
        kept = kept.filter(pc.is_in(kept["photo_id"], value_set=pa.array(source.photo_ids, pa.string())))
    have = set(kept.column("photo_id").to_pylist())
    wanted = [p for p in source.photo_ids if p not in have]
    encoder = FVLPEncoder.load(checkpoint, device=config.device, batch_size=config.batch_size)
    # One encoder batch of decoded images at a time: a million-photo gallery never sits
    # decoded in memory, only its embeddings and thumbnails.
    batches, skipped = [], {}
    for start in range(0, len(wanted), config.batch_size):
        ids = wanted[start : start + config.batch_size]
        images, batch_skipped = source.load(ids)
        skipped.update(batch_skipped)
        used = [p for p in ids if p not in batch_skipped]
        embeddings = encoder.encode_images(images).numpy() if images else np.empty((0, 0), np.float32)
        batches.append(
            pa.table(
                {
                    "photo_id": pa.array(used, pa.string()),
                    "embedding": pa.array(list(embeddings), pa.list_(pa.float32())),
                    "thumbnail": pa.array([thumbnail(image, config.thumbnail_size) for image in images], pa.binary()),
                    "source": pa.array([source.label] * len(used), pa.string()),
                },
                schema=GALLERY_SCHEMA,
            )
        )
    added = pa.concat_tables(batches) if batches else pa.schema(GALLERY_SCHEMA).empty_table()
    rows = pa.concat_tables([kept.select(GALLERY_SCHEMA.names).cast(GALLERY_SCHEMA), added])
    if rows.num_rows == 0:
        raise ValueError(f"{source.label}: no usable photo to index ({len(skipped)} skipped: {skipped})")
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
            "source": source.label,
            "data_fingerprint": source.fingerprint,
            **(source.episodes or {}),
            "skipped": {**(previous.get("skipped", {}) if kept.num_rows else {}), **skipped},
            "settings": config.model_dump(mode="json", exclude={"paths"}),
            "approximate": approximate[1] if approximate else None,
        },
    )
    logger.info(
        "gallery %s: %d photos (%d embedded now, %d kept, %d skipped) from %s with %s",
        config.gallery_dir,
        rows.num_rows,
        added.num_rows,
        kept.num_rows,
        len(skipped),
        source.label,
        checkpoint,
    )
    return {
        "gallery_dir": str(config.gallery_dir),
        "photos": rows.num_rows,
        "embedded": added.num_rows,
        "kept": kept.num_rows,
        "skipped": len(skipped),
        "model_fingerprint": model_fingerprint,
    }
