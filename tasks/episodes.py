"""Prefect task building the sketch-episode dataset (``--episodes``), skipped when complete.

Two sources:

* the embedded corpus (default): one episode per identity with a kept cleaned face. The
  gallery photo is that identity's kept crop with the highest detector score (ties: lowest
  SAMPLE_ID), its caption the template caption, its split the ground-truth split. The
  sketch is the identity's exact line drawing (``face_strokes``) moved into the crop's
  frame: the drawing's own eye/nose/mouth landmarks are mapped where the clean stage's
  landmark-aligned crop puts them (the ``crop_margin`` the clean manifest records). A drawing without those landmarks
  stays in the canonical render frame; the manifest counts it as ``unaligned``.
* real photos (a clean stage without the corpus ground truth): one episode per kept face,
  drawn from its edge line art (``fvlp_core.episodes.photo_episode``); the split is a
  fixed hash of the SAMPLE_ID (30 % test).
* an FS2K-SDE root (``fs2k_sde``, any layout of :mod:`fvlp_core.fs2k`): photos, captions and
  recorded cumulative sketches. Train episodes keep every recorded step (training samples
  any of them, as the reference does); test episodes get T steps selected evenly up to the
  finished sketch. The photos, sketches and captions found per split are logged and kept in
  the manifest (``found``).

Work goes in chunks of photos, drawn in ``config.workers`` processes and written in order;
each chunk is one photos shard and one sketches shard, so an interrupted build resumes at
the first missing chunk.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.codec import decode_image, encode_png, png_from_file
from fvlp_core.config import EpisodesConfig
from fvlp_core.episodes import corpus_episode, photo_episode
from fvlp_core.fs2k import detect_layout, fs2k_counts, input_files, load_fs2k_sde, select_steps
from storage.clean import FaceCrops, face_shards, read_clean_manifest, read_face_index
from storage.episodes import (
    clear_episodes_manifest,
    complete_chunks,
    drop_chunks_from,
    is_complete,
    read_episodes_manifest,
    read_episodes_reference,
    write_episode_chunk,
    write_episodes_manifest,
)
from storage.files import stat_fingerprint
from storage.shards import write_manifest
from storage.source import GROUND_TRUTH_FILE, read_ground_truth

EPISODES_VERSION = "3"  # bump when the generated drawings or the shard layout change
CHUNK_PHOTOS = 64
TEST_SHARE = 0.3  # real photos: share of faces put in the test split


def corpus_of_clean_run(clean_manifest: dict[str, Any]) -> dict[str, Any]:
    """The embedded corpus (rows/identities/seed) behind the cleaned faces and the crop margin
    that placed them, as the clean and ingest stages recorded them; {} for real photos."""
    corpus = clean_manifest.get("corpus")
    if not corpus:
        return {}
    return {
        **{key: int(corpus[key]) for key in ("rows", "identities", "seed")},
        "crop_margin": float(clean_manifest["settings"]["crop_margin"]),
    }


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


def _face_chunk(
    rows: list[dict[str, Any]], crops: dict[int, bytes], steps: int, corpus: Any | None, margin: float
) -> tuple[list, list, int]:
    """Episodes of cleaned faces: exact corpus strokes when ``corpus`` is given, else edge line art."""
    from fvlp_core.corpus import face_strokes

    photos, sketches, unaligned = [], [], 0
    for row in rows:
        photo_id = str(int(row["SAMPLE_ID"]))
        encoded = crops[int(row["SAMPLE_ID"])]
        try:
            crop = decode_image(encoded)
        except ValueError as err:
            raise ValueError(f"clean faces: SAMPLE_ID {photo_id}: crop is not a readable image ({err})") from err
        if corpus is None:
            frames = photo_episode(crop, steps)
        else:
            size = crop.shape[1]
            strokes = face_strokes(corpus.identity_params(int(row["identity_id"])), size)
            frames, aligned = corpus_episode(strokes, size, steps, margin)
            unaligned += not aligned
        photos.append(
            {
                "photo_id": photo_id,
                "split": row["split"],
                "image": encoded,
                "caption": row["caption"],
                "captions": [row["caption"]],
                "source": "generated",
            }
        )
        sketches += [
            {"photo_id": photo_id, "split": row["split"], "step": t, "image": encode_png(frame)}
            for t, frame in enumerate(frames)
        ]
    return photos, sketches, unaligned


# --------------------------------------------------------------------------- FS2K-SDE


def _fs2k_chunk(episodes: list[Any], steps: int) -> tuple[list[dict], list[dict], int]:
    """Photos and sketches of FS2K-SDE episodes: every recorded step for train, T selected ones for test."""
    photos, sketches = [], []
    for episode in episodes:
        photos.append(
            {
                "photo_id": episode.photo_id,
                "split": episode.split,
                "image": png_from_file(episode.photo_path, "RGB"),
                # SLFIR's layout has no captions: such photos get an empty one (sketch+text = sketch).
                "caption": episode.captions[0] if episode.captions else "",
                "captions": list(episode.captions),
                "source": "fs2k-sde",
            }
        )
        recorded = len(episode.sketch_paths)
        chosen = range(recorded) if episode.split == "train" else select_steps(recorded, steps)
        sketches += [
            {
                "photo_id": episode.photo_id,
                "split": episode.split,
                "step": t,
                "image": png_from_file(episode.sketch_paths[i], "L"),
            }
            for t, i in enumerate(chosen)
        ]
    return photos, sketches, 0


# --------------------------------------------------------------------------- the task


def _chunks(items: list[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start : start + size]


# Added to the drawing processes' niceness. Measured on the 2-core machine, pretraining beside
# an episodes build: 180.6 s for both niced, 185.5 s not niced, 191 s one after the other.
DRAWING_NICENESS = 15
ChunkBuilder = Callable[..., tuple[list, list, int]]  # photo rows, sketch rows, unaligned drawings
ChunkJob = tuple[int, ChunkBuilder, tuple[Any, ...]]


def built_chunks(jobs: Iterator[ChunkJob], workers: int) -> Iterator[tuple[int, tuple[list, list, int]]]:
    """``(index, fn(*args))`` of each job, in job order.

    Drawing and PNG encoding are CPU-bound Python, so with ``workers > 1`` the jobs run in
    that many spawned processes (fork is unsafe beside Prefect's threads), at most
    ``workers + 1`` ahead of the one being written so memory stays a few chunks. The
    processes run at a lower priority (:data:`DRAWING_NICENESS`): in the pipeline they share
    the CPU with pretraining, whose threads then keep their cores and leave the drawing
    the cycles they do not use.
    """
    if workers == 1:
        for index, build, args in jobs:
            yield index, build(*args)
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=os.nice, initargs=(DRAWING_NICENESS,)) as pool:
        running: deque[tuple[int, Future]] = deque()
        for index, build, args in jobs:
            running.append((index, pool.submit(build, *args)))
            if len(running) > workers:
                first, future = running.popleft()
                yield first, future.result()
        while running:
            first, future = running.popleft()
            yield first, future.result()


@task(name="build-episodes", cache_policy=NO_CACHE)
def build_episodes(config: EpisodesConfig) -> dict[str, Any]:
    """Build ``config.episodes_dir`` unless a complete build with the same inputs is there.

    Returns the build's reference (:func:`storage.episodes.read_episodes_reference`) and ``built``.
    """
    logger = get_run_logger()
    episodes_dir = config.episodes_dir
    steps = config.steps_per_episode
    if config.fs2k_sde is not None:
        fs2k_root = Path(config.fs2k_sde).resolve()
        layout = detect_layout(fs2k_root, config.fs2k_sde_layout)
        plan = {
            "source": "fs2k-sde",
            "layout": layout.layout,
            "steps": steps,
            "train_steps": "all recorded",
            "version": EPISODES_VERSION,
            "input_fingerprint": stat_fingerprint(input_files(layout), str(fs2k_root)),
        }
    else:
        clean_dir = config.paths.clean_dir
        face_files = face_shards(clean_dir)
        corpus = corpus_of_clean_run(read_clean_manifest(clean_dir))
        truth_file = config.paths.source_dir / GROUND_TRUTH_FILE
        from_corpus = bool(corpus) and truth_file.exists()
        inputs = face_files + ([truth_file] if from_corpus else [])
        settings = json.dumps(corpus if from_corpus else {}, sort_keys=True)
        plan = {
            "source": "generated",
            "drawing": "corpus-strokes" if from_corpus else "line-art",
            "steps": steps,
            "version": EPISODES_VERSION,
            "input_fingerprint": stat_fingerprint(inputs, settings),
        }

    if is_complete(episodes_dir, plan):
        reference = read_episodes_reference(episodes_dir)
        logger.info("episodes in %s are complete (%d photos); skipping", episodes_dir, reference["photos"])
        return {**reference, "built": False}

    previous = read_episodes_manifest(episodes_dir)
    if any(previous.get(key) != value for key, value in plan.items()):
        drop_chunks_from(episodes_dir, 0)  # other inputs or settings: nothing on disk is reusable
    clear_episodes_manifest(episodes_dir)
    write_manifest(episodes_dir, {**plan, "complete": False})

    skipped: dict[str, int] = {}
    found: dict[str, dict[str, int]] = {}
    job: Callable[[list[Any]], tuple[ChunkBuilder, tuple[Any, ...]]]
    if config.fs2k_sde is not None:
        items: list[Any] = load_fs2k_sde(fs2k_root, layout=layout.layout)
        found = fs2k_counts(items)
        logger.info("FS2K-SDE (%s layout) at %s: %s", layout.layout, fs2k_root, found)
        job = lambda chunk: (_fs2k_chunk, (chunk, steps))  # noqa: E731
    else:
        faces = read_face_index(clean_dir).to_pandas()
        drawer = None
        if from_corpus:
            from fvlp_core.corpus import EmbeddedCorpus

            drawer = EmbeddedCorpus(corpus["rows"], corpus["identities"], corpus["seed"])
            items, skipped = select_gallery_faces(faces, read_ground_truth(config.paths.source_dir))
        else:
            items = [
                {**row, "split": hashed_split(row["SAMPLE_ID"])}
                for row in faces.sort_values("SAMPLE_ID").to_dict("records")
            ]
        if not items:
            raise ValueError(f"no usable cleaned face in {clean_dir} (skipped: {skipped})")
        face_crops = FaceCrops(clean_dir)
        # Chunks follow the face shards, so building them reads each shard's crops once.
        items.sort(key=lambda row: face_crops.shard_of.get(int(row["SAMPLE_ID"]), -1))
        margin = corpus.get("crop_margin", 0.0)
        # Crops are read here, shard by shard; the workers only draw and encode.
        job = lambda chunk: (  # noqa: E731
            _face_chunk,
            (chunk, face_crops.read([row["SAMPLE_ID"] for row in chunk]), steps, drawer, margin),
        )

    done = complete_chunks(episodes_dir)
    chunk_count = (len(items) + CHUNK_PHOTOS - 1) // CHUNK_PHOTOS
    drop_chunks_from(episodes_dir, chunk_count)
    unaligned = 0
    jobs = ((index, *job(chunk)) for index, chunk in _chunks(items, CHUNK_PHOTOS) if index not in done)
    for index, (photos, sketches, chunk_unaligned) in built_chunks(jobs, config.workers):
        unaligned += chunk_unaligned
        write_episode_chunk(episodes_dir, index, photos, sketches)
        logger.info("episode chunk %d/%d written (%d photos)", index + 1, chunk_count, len(photos))

    splits: dict[str, int] = {}
    for item in items:
        split = item.split if config.fs2k_sde is not None else item["split"]
        splits[split] = splits.get(split, 0) + 1
    manifest = {
        **plan,
        "photos": len(items),
        "chunks": chunk_count,
        "splits": splits,
        "skipped": skipped,
        "unaligned": unaligned,
        "found": found,
    }
    write_episodes_manifest(episodes_dir, manifest)
    logger.info(
        "episodes: %d photos %s, T = %d, skipped %s, %d unaligned", len(items), splits, steps, skipped, unaligned
    )
    return {**read_episodes_reference(episodes_dir), "built": True}
