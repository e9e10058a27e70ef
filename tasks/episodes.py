"""Prefect task building the sketch-episode dataset (``episodes_dir``), skipped when complete.

Two sources:

* the embedded corpus (default): one episode per identity with a kept cleaned face. The
  gallery photo is that identity's kept crop with the highest detector score (ties: lowest
  SAMPLE_ID), its caption the template caption, its split the ground-truth split. The
  sketch is the identity's exact line drawing (``face_strokes``) moved into the crop's
  frame: the drawing's own eye/nose/mouth landmarks are mapped where the clean stage's
  landmark-aligned crop puts them (its ``crop_margin``). A drawing without those landmarks
  stays in the canonical render frame; the manifest counts it as ``unaligned``.
* real photos (a clean stage without the corpus ground truth): one episode per kept face,
  drawn from its edge line art (``fvlp_core.episodes.photo_episode``); the split is a
  fixed hash of the SAMPLE_ID (30 % test).
* an FS2K-SDE root (``fs2k_sde``): photos, captions and recorded cumulative sketches, T
  steps selected evenly up to the finished sketch.

Work goes in chunks of photos; each chunk is written as one photos shard and one sketches
shard, so an interrupted build resumes at the first missing chunk.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.config import CleanConfig, IngestConfig, Paths, resolve_config
from fvlp_core.episodes import DEFAULT_STEPS, corpus_episode, encode_png, photo_episode
from fvlp_core.fs2k import load_fs2k_sde, select_steps
from storage.episodes import (
    clear_episodes_manifest,
    complete_chunks,
    drop_chunks_from,
    is_complete,
    read_episodes_manifest,
    read_face_crops,
    read_face_index,
    write_episode_chunk,
    write_episodes_manifest,
)
from storage.shards import list_shards, write_manifest

EPISODES_VERSION = "2"  # bump when the generated drawings change
CHUNK_PHOTOS = 64
CORPUS_SETTINGS_FILE = "corpus.json"
TEST_SHARE = 0.3  # real photos: share of faces put in the test split


def _stat_fingerprint(paths: list[Path], extra: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _png_from_file(path: Path, mode: str) -> bytes:
    try:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert(mode).save(buffer, format="PNG")
    except OSError as err:
        raise ValueError(f"{path}: unreadable image ({err})") from err
    return buffer.getvalue()


# --------------------------------------------------------------------------- embedded corpus


def crop_margin(paths: Paths) -> float:
    """The clean stage's crop margin (defaults < FVLP_* environment), which placed the faces."""
    return resolve_config(CleanConfig, {"paths": paths.model_dump(mode="json")}).crop_margin


def corpus_settings(paths: Paths) -> dict[str, int]:
    """rows/identities/seed of the embedded corpus behind ``paths``.

    Read from ``source_dir/corpus.json`` when the ingest stage wrote one, else from the
    ingest configuration (defaults < FVLP_* environment), which is what produced the source.
    """
    recorded = paths.source_dir / CORPUS_SETTINGS_FILE
    if recorded.exists():
        values = json.loads(recorded.read_text())
        return {key: int(values[key]) for key in ("rows", "identities", "seed")}
    ingest = resolve_config(IngestConfig, {"paths": paths.model_dump(mode="json")})
    return {"rows": ingest.rows, "identities": ingest.identities, "seed": ingest.seed}


def select_gallery_faces(faces: pd.DataFrame, truth: pd.DataFrame) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One face row per identity (best detector score, then lowest SAMPLE_ID), with its split.

    Returns the chosen rows and counts of the rest by reason, so every face row is accounted for.
    """
    split_of = dict(zip(truth["SAMPLE_ID"].astype(int), truth["split"]))
    skipped = {"no_identity": 0, "no_split": 0, "other_photo_of_identity": 0}
    chosen: dict[int, dict[str, Any]] = {}
    for row in faces.sort_values(["det_score", "SAMPLE_ID"], ascending=[False, True]).to_dict("records"):
        identity = int(row["identity_id"])
        if identity < 0:
            skipped["no_identity"] += 1
        elif int(row["SAMPLE_ID"]) not in split_of:
            skipped["no_split"] += 1
        elif identity in chosen:
            skipped["other_photo_of_identity"] += 1
        else:
            chosen[identity] = {**row, "split": split_of[int(row["SAMPLE_ID"])]}
    return [chosen[k] for k in sorted(chosen)], skipped


def hashed_split(sample_id: int, test_share: float = TEST_SHARE) -> str:
    """Real photos: a split that never changes for a SAMPLE_ID (Knuth multiplicative hash)."""
    return "test" if ((int(sample_id) * 2654435761) % 2**32) / 2**32 < test_share else "train"


def _face_chunk(clean_dir: Path, rows: list[dict[str, Any]], steps: int, corpus: Any | None,
                margin: float) -> tuple[list, list, int]:
    """Episodes of cleaned faces: exact corpus strokes when ``corpus`` is given, else edge line art.

    Crops are read per chunk, so memory holds one chunk's images at a time.
    """
    from fvlp_core.corpus import face_strokes

    crops = read_face_crops(clean_dir, [row["SAMPLE_ID"] for row in rows])
    photos, sketches, unaligned = [], [], 0
    for row in rows:
        photo_id = str(int(row["SAMPLE_ID"]))
        png = crops[int(row["SAMPLE_ID"])]
        try:
            crop = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        except OSError as err:
            raise ValueError(f"clean faces: SAMPLE_ID {photo_id}: crop is not a readable PNG ({err})") from err
        if corpus is None:
            frames = photo_episode(crop, steps)
        else:
            size = crop.shape[1]
            strokes = face_strokes(corpus.identity_params(int(row["identity_id"])), size)
            frames, aligned = corpus_episode(strokes, size, steps, margin)
            unaligned += not aligned
        photos.append({"photo_id": photo_id, "split": row["split"], "image": png, "caption": row["caption"],
                       "captions": [row["caption"]], "source": "generated"})
        sketches += [{"photo_id": photo_id, "split": row["split"], "step": t, "image": encode_png(frame)}
                     for t, frame in enumerate(frames)]
    return photos, sketches, unaligned


# --------------------------------------------------------------------------- FS2K-SDE


def _fs2k_chunk(episodes: list[Any], steps: int) -> tuple[list[dict], list[dict], int]:
    photos, sketches = [], []
    for episode in episodes:
        photos.append({"photo_id": episode.photo_id, "split": episode.split,
                       "image": _png_from_file(episode.photo_path, "RGB"), "caption": episode.captions[0],
                       "captions": list(episode.captions), "source": "fs2k-sde"})
        chosen = select_steps(len(episode.sketch_paths), steps)
        sketches += [{"photo_id": episode.photo_id, "split": episode.split, "step": t,
                      "image": _png_from_file(episode.sketch_paths[i], "L")} for t, i in enumerate(chosen)]
    return photos, sketches, 0


# --------------------------------------------------------------------------- the task


def _chunks(items: list[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start:start + size]


@task(name="ensure-episodes", cache_policy=NO_CACHE)
def ensure_episodes(paths: Paths, steps: int = DEFAULT_STEPS, fs2k_sde: Path | None = None) -> dict[str, Any]:
    """Build ``paths.episodes_dir`` unless a complete build with the same inputs is there.

    Returns ``{"episodes_dir", "source", "steps", "photos", "splits", "skipped", "built"}``.
    """
    logger = get_run_logger()
    episodes_dir = paths.episodes_dir
    if fs2k_sde is not None:
        fs2k_root = Path(fs2k_sde)
        annotations = sorted(fs2k_root.glob("*.json")) + sorted(fs2k_root.glob("annotations/*.json"))
        plan = {"source": "fs2k-sde", "steps": steps, "version": EPISODES_VERSION,
                "input_fingerprint": _stat_fingerprint(annotations, {"root": str(fs2k_root.resolve())})}
    else:
        faces_dir = paths.clean_dir / "faces"
        face_files = list_shards(faces_dir)
        if not face_files:
            raise FileNotFoundError(f"no face shards in {faces_dir}: run the clean stage first")
        truth_file = paths.source_dir / "ground_truth.parquet"
        from_corpus = truth_file.exists()
        settings = {**corpus_settings(paths), "crop_margin": crop_margin(paths)} if from_corpus else {}
        inputs = face_files + ([truth_file] if from_corpus else [])
        plan = {"source": "generated", "drawing": "corpus-strokes" if from_corpus else "line-art", "steps": steps,
                "version": EPISODES_VERSION, "input_fingerprint": _stat_fingerprint(inputs, settings)}

    if is_complete(episodes_dir, plan):
        manifest = read_episodes_manifest(episodes_dir)
        logger.info("episodes in %s are complete (%d photos); skipping", episodes_dir, manifest["photos"])
        return _summary(episodes_dir, manifest, built=False)

    previous = read_episodes_manifest(episodes_dir)
    if any(previous.get(key) != value for key, value in plan.items()):
        drop_chunks_from(episodes_dir, 0)  # other inputs or settings: nothing on disk is reusable
    clear_episodes_manifest(episodes_dir)
    write_manifest(episodes_dir, {**plan, "complete": False})

    skipped: dict[str, int] = {}
    if fs2k_sde is not None:
        items: list[Any] = load_fs2k_sde(Path(fs2k_sde))
        build = lambda chunk: _fs2k_chunk(chunk, steps)  # noqa: E731
    else:
        faces = read_face_index(paths.clean_dir).to_pandas()
        corpus = None
        if from_corpus:
            from fvlp_core.corpus import EmbeddedCorpus
            from storage.source import read_ground_truth

            corpus = EmbeddedCorpus(settings["rows"], settings["identities"], settings["seed"])
            items, skipped = select_gallery_faces(faces, read_ground_truth(paths.source_dir))
        else:
            items = [{**row, "split": hashed_split(row["SAMPLE_ID"])}
                     for row in faces.sort_values("SAMPLE_ID").to_dict("records")]
        if not items:
            raise ValueError(f"no usable cleaned face in {paths.clean_dir / 'faces'} (skipped: {skipped})")
        margin = settings.get("crop_margin", 0.0)
        build = lambda chunk: _face_chunk(paths.clean_dir, chunk, steps, corpus, margin)  # noqa: E731

    done = complete_chunks(episodes_dir)
    chunk_count = (len(items) + CHUNK_PHOTOS - 1) // CHUNK_PHOTOS
    drop_chunks_from(episodes_dir, chunk_count)
    unaligned = 0
    for index, chunk in _chunks(items, CHUNK_PHOTOS):
        if index in done:
            continue
        photos, sketches, chunk_unaligned = build(chunk)
        unaligned += chunk_unaligned
        write_episode_chunk(episodes_dir, index, photos, sketches)
        logger.info("episode chunk %d/%d written (%d photos)", index + 1, chunk_count, len(photos))

    splits: dict[str, int] = {}
    for item in items:
        split = item.split if fs2k_sde is not None else item["split"]
        splits[split] = splits.get(split, 0) + 1
    manifest = {**plan, "photos": len(items), "chunks": chunk_count, "splits": splits, "skipped": skipped,
                "unaligned": unaligned}
    write_episodes_manifest(episodes_dir, manifest)
    logger.info("episodes: %d photos %s, T = %d, skipped %s, %d unaligned", len(items), splits, steps, skipped,
                unaligned)
    return _summary(episodes_dir, manifest, built=True)


def _summary(episodes_dir: Path, manifest: dict[str, Any], built: bool) -> dict[str, Any]:
    return {"episodes_dir": str(episodes_dir), "source": manifest["source"], "steps": manifest["steps"],
            "photos": manifest["photos"], "splits": manifest["splits"], "skipped": manifest.get("skipped", {}),
            "input_fingerprint": manifest["input_fingerprint"], "built": built}
