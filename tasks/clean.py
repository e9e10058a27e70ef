"""Prefect tasks of the clean stage: measure shards on Dask, decide, caption, score.

Measuring (decode, detect, crop, language id, MinHash) runs per raw shard on Dask
workers, one detector session per worker. A measurements shard is reused when its
raw shard and the versions of what it measured are unchanged; when only the caption
or only the image half is stale, only that half is recomputed. Deciding (thresholds)
runs every time from stored measurements: it is vectorised and cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from fvlp_core.attribute_head import (
    confident_attributes,
    load_attribute_head,
    predict_probabilities,
    save_attribute_head,
    train_attribute_head,
)
from fvlp_core.captions import caption_for_sample
from fvlp_core.codec import decode_image
from fvlp_core.config import CleanConfig
from fvlp_core.filters import (
    RULE_NAMES,
    combined_version,
    decide,
    image_duplicates,
    near_duplicates,
    rule_versions,
    score_against_noise,
)
from storage.clean import (
    MEASUREMENT_SCHEMA,
    measured_crops,
    measurement_path,
    new_generation,
    read_clean_manifest,
    read_decisions,
    read_ground_truth_if_any,
    read_measurements,
    remove_stale_shards,
    write_clean_manifest,
    write_decisions,
    write_faces,
)
from storage.raw import read_raw_manifest
from storage.shards import DatasetError, list_shards, shard_index, shard_rows
from tasks.clean_worker import measure_settings, measure_shard


@dataclass(frozen=True)
class ShardJob:
    raw_path: Path
    measurement_path: Path

    @property
    def index(self) -> int:
        return shard_index(self.raw_path)


@task(name="plan-clean", cache_policy=NO_CACHE)
def plan_clean(config: CleanConfig) -> list[ShardJob]:
    """One job per raw shard; measurement/decision shards of vanished raw shards are removed."""
    raw_shards = list_shards(config.paths.raw_dir)
    if not raw_shards:
        raise FileNotFoundError(f"no raw shards in {config.paths.raw_dir}: run `fvlp ingest` first")
    clean_dir = config.paths.clean_dir
    remove_stale_shards(clean_dir, {shard_index(p) for p in raw_shards})
    return [ShardJob(p, measurement_path(clean_dir, p)) for p in raw_shards]


# Prefect's global concurrency limit held by every run that writes clean/ (see clean_writers_slot).
CLEAN_WRITERS_LIMIT = "fvlp-clean-writers"


@contextmanager
def clean_writers_slot() -> Iterator[None]:
    """Hold a slot of Prefect's global concurrency limit ``fvlp-clean-writers`` (created with
    limit 1 when missing) for the body: one run writes cleaning output at a time, whoever
    started it (`fvlp serve`, a worker, the CLI, a pipeline), and a second one waits."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(CLEAN_WRITERS_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=CLEAN_WRITERS_LIMIT, limit=1))
            except ObjectAlreadyExists:  # another run created it first
                pass
    get_run_logger().info("taking a slot of the global concurrency limit %s", CLEAN_WRITERS_LIMIT)
    with concurrency(CLEAN_WRITERS_LIMIT, occupy=1, strict=True):
        yield


@contextmanager
def dask_client(config: CleanConfig) -> Iterator[Any]:
    """A client on the configured scheduler, or on a LocalCluster that lives for the block."""
    from distributed import Client, LocalCluster

    # The scheduler's INFO chatter (every worker and connection) would drown the flow's own log.
    chatter = logging.getLogger("distributed")
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    # Dask's nannies write OMP_NUM_THREADS=1 (and MKL/OpenBLAS) into THIS process's environment
    # before spawning workers; left there, every training child launched later in the same
    # process (fvlp run) would compute on one thread. The stage leaves the environment as it found it.
    environment = dict(os.environ)
    try:
        if config.dask_address:
            with Client(config.dask_address) as client:
                yield client
            return
        with (
            LocalCluster(
                n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        chatter.setLevel(level)
        os.environ.clear()
        os.environ.update(environment)


@task(name="measure-shards", cache_policy=NO_CACHE)
def measure_shards(config: CleanConfig, jobs: list[ShardJob]) -> list[dict[str, Any]]:
    """Map :func:`measure_shard` over the shards on Dask; a failed shard fails the task naming it."""
    logger = get_run_logger()
    from distributed import as_completed

    settings = measure_settings(config)
    if config.recompute:
        for job in jobs:
            job.measurement_path.unlink(missing_ok=True)
    with dask_client(config) as client:
        logger.info("Dask dashboard: %s (%d workers)", client.dashboard_link, len(client.scheduler_info()["workers"]))
        futures = client.map(
            measure_shard,
            [str(j.raw_path) for j in jobs],
            [str(j.measurement_path) for j in jobs],
            settings=settings,
            pure=False,
        )
        progress = create_progress_artifact(
            progress=0.0, key="clean-measured-shards", description=f"Raw shards measured, of {len(jobs)}"
        )
        index = {future.key: job for future, job in zip(futures, jobs)}
        results_by_key: dict[str, dict[str, Any]] = {}
        # In completion order, so the progress moves as shards finish, whatever their order.
        for future in as_completed(futures):
            job = index[future.key]
            try:
                results_by_key[future.key] = future.result()
            except Exception as err:
                raise RuntimeError(f"measuring raw shard {job.raw_path} failed: {err}") from err
            update_progress_artifact(progress, progress=100.0 * len(results_by_key) / len(jobs))
            logger.info("measured %s (%d of %d shards)", job.raw_path.name, len(results_by_key), len(jobs))
        results = [results_by_key[future.key] for future in futures]
    remeasured = sum(r["rows"] for r in results if r["remeasured"])
    logger.info(
        "measured %d shards (%d rows re-measured, %d reused) with %s",
        len(results),
        remeasured,
        sum(r["rows"] for r in results) - remeasured,
        settings.detector.identity,
    )
    return results


@task(name="decide-shards", cache_policy=NO_CACHE)
def decide_shards(config: CleanConfig, jobs: list[ShardJob]) -> dict[str, Any]:
    """Apply every rule, write decisions and kept faces with attribute captions; return counts."""
    logger = get_run_logger()
    settings = measure_settings(config)
    versions = rule_versions(config, settings.versions)
    version = combined_version(versions)
    agreement_applied = settings.agreement_checkpoint is not None

    light = [c for c in MEASUREMENT_SCHEMA.names if c != "crop"]
    frames, phashes = [], []
    for job in jobs:
        table = read_measurements(job.measurement_path, light)
        # Taken from Arrow directly: pandas would turn a nullable int64 into float64 and round the hash.
        phashes += table.column("image_phash").to_pylist()
        frame = table.drop_columns(["image_phash"]).to_pandas()
        frame["raw_shard"] = job.raw_path.name
        frame["shard"] = job.index
        frames.append(frame)
    measurements = pd.concat(frames, ignore_index=True)
    # Duplicates need the whole corpus: earlier rows (shard order, then row order) win.
    _, similarity = near_duplicates(measurements["caption_minhash"].tolist())
    measurements["duplicate_similarity"] = similarity
    _, distance = image_duplicates(phashes, config.max_duplicate_distance)
    measurements["duplicate_distance"] = distance
    decided = decide(measurements, config, agreement_applied)
    measurements = measurements.join(decided)

    previous = _previous_decisions(config)
    changed = 0
    if previous is not None:
        merged = measurements[["raw_shard", "SAMPLE_ID", "kept"]].merge(
            previous, on=["raw_shard", "SAMPLE_ID"], how="left", suffixes=("", "_before")
        )
        changed = int((merged["kept"] != merged["kept_before"]).sum())

    attributes = _attributes_for_kept(config, measurements, jobs)
    # All shards of this run carry one generation; the manifest written last publishes it.
    generation = new_generation()
    per_shard = []
    caption_sources = {"template": 0, "original": 0}  # which caption each kept face got
    by_shard = dict(tuple(measurements.groupby("shard", sort=False)))  # one pass, not a filter per shard
    for job in jobs:
        rows = by_shard.get(job.index, measurements.iloc[:0])
        decisions = {
            "SAMPLE_ID": rows["SAMPLE_ID"].to_numpy(dtype=np.int64),
            "raw_shard": rows["raw_shard"].tolist(),
            "kept": rows["kept"].to_numpy(dtype=bool),
            "reasons": rows["reasons"].tolist(),
            "measurements": rows["measurements"].tolist(),
            "rule_version": [version] * len(rows),
        }
        write_decisions(decisions, config.paths.clean_dir, job.index, generation)
        kept_rows = rows[rows["kept"]]
        faces = _face_columns(job, kept_rows, attributes, config)
        with_template = sum(t is not None for t in faces["template_caption"])
        caption_sources["template"] += with_template
        caption_sources["original"] += len(faces["SAMPLE_ID"]) - with_template
        write_faces(faces, config.paths.clean_dir, job.index, generation)
        kept = int(kept_rows.shape[0])
        raw_rows = shard_rows(job.raw_path)
        if len(rows) != raw_rows:
            raise AssertionError(f"{job.raw_path}: {raw_rows} input rows but {len(rows)} decisions")
        per_shard.append(
            {"shard": job.raw_path.name, "input_rows": len(rows), "kept": kept, "rejected": len(rows) - kept}
        )
    previous_versions = read_clean_manifest(config.paths.clean_dir).get("rule_versions", {})
    changed_rules = sorted(r for r in RULE_NAMES if previous_versions.get(r) != versions[r])
    write_clean_manifest(
        config.paths.clean_dir,
        {
            "generation": generation,
            "rule_versions": versions,
            "rule_version": version,
            "measurement_versions": settings.versions,
            "detector": settings.detector.identity,
            "shards": per_shard,
            # What later stages need to know of this output: how the crops were cut, and the
            # embedded corpus (if any) the faces came from, as the ingest stage recorded it.
            "settings": config.model_dump(mode="json", exclude={"paths"}),
            "corpus": read_raw_manifest(config.paths.raw_dir).get("corpus"),
            "caption_sources": caption_sources,
        },
    )
    totals = {k: sum(s[k] for s in per_shard) for k in ("input_rows", "kept", "rejected")}
    logger.info(
        "decided %d rows: kept %d, rejected %d; rules re-evaluated: %s; %d decisions changed",
        totals["input_rows"],
        totals["kept"],
        totals["rejected"],
        changed_rules or "none",
        changed,
    )
    return {
        **totals,
        "per_shard": per_shard,
        "changed_rules": changed_rules,
        "changed_decisions": changed,
        "rule_version": version,
        "attribute_source": attributes.source,
        "caption_sources": caption_sources,
    }


def _previous_decisions(config: CleanConfig) -> pd.DataFrame | None:
    """The published decisions, or None: none yet, or a mix left by a run that stopped."""
    try:
        return read_decisions(config.paths.clean_dir, ["raw_shard", "SAMPLE_ID", "kept"]).to_pandas()
    except (FileNotFoundError, DatasetError):
        return None


@dataclass
class KeptAttributes:
    """Attributes and gender per kept SAMPLE_ID, and where they came from."""

    names: dict[int, list[str]]
    male: dict[int, bool | None]
    identity: dict[int, int]
    source: dict[str, int]


def _attributes_for_kept(config: CleanConfig, frame: pd.DataFrame, jobs: list[ShardJob]) -> KeptAttributes:
    """Ground truth where the corpus has it; the attribute head's confident labels elsewhere."""
    logger = get_run_logger()
    kept = frame[frame["kept"]]
    truth = read_ground_truth_if_any(config.paths.source_dir)
    names: dict[int, list[str]] = {}
    male: dict[int, bool | None] = {}
    identity: dict[int, int] = {}
    kept_ids = set(kept["SAMPLE_ID"].astype(int))
    if truth is not None:
        for sid, attrs, ident in zip(truth["SAMPLE_ID"], truth["attributes"], truth["identity_id"]):
            identity[int(sid)] = int(ident)
            if int(sid) in kept_ids:
                names[int(sid)] = list(attrs)
                male[int(sid)] = "Male" in attrs
    missing = [int(s) for s in kept["SAMPLE_ID"] if int(s) not in names]
    source = {"ground_truth": len(names), "attribute_head": 0}
    if missing:
        head = _attribute_head(config, truth, jobs, set(missing))
        if head is None:
            logger.warning(
                "%d kept rows have no ground-truth attributes and no attribute head is available: "
                "they keep their (filtered) LAION captions",
                len(missing),
            )
        else:
            for job in jobs:  # one shard's decoded crops in memory at a time
                crops = _crops_by_id([job], set(missing))
                probabilities = predict_probabilities(head, list(crops.values()))
                predicted, genders = confident_attributes(probabilities, config.attribute_min_prob)
                for sid, attrs, gender in zip(crops, predicted, genders):
                    names[sid], male[sid] = attrs, gender
                source["attribute_head"] += len(crops)
    return KeptAttributes(names, male, identity, source)


def _crops_by_id(jobs: list[ShardJob], wanted: set[int]) -> dict[int, np.ndarray]:
    crops: dict[int, np.ndarray] = {}
    for job in jobs:
        crops.update((sid, decode_image(crop)) for sid, crop in measured_crops(job.measurement_path, wanted).items())
    return crops


def _attribute_head(config: CleanConfig, truth: pd.DataFrame | None, jobs: list[ShardJob], missing: set[int]):
    """A configured head, else one trained now on crops that have ground truth (saved for later runs)."""
    logger = get_run_logger()
    if config.attribute_head is not None:
        return load_attribute_head(config.attribute_head)
    with_truth = set() if truth is None else set(truth["SAMPLE_ID"].astype(int)) - missing
    crops = _crops_by_id(jobs, with_truth) if with_truth else {}
    train_ids = [] if truth is None else [int(s) for s in truth["SAMPLE_ID"] if int(s) in crops]
    latest = config.paths.checkpoints_dir / "attribute_head" / "attribute_head.pt"
    if len(train_ids) < 32:
        if latest.exists():
            logger.info("using the attribute head saved at %s", latest)
            return load_attribute_head(latest)
        return None
    labels = dict(zip(truth["SAMPLE_ID"].astype(int), truth["attributes"]))
    head = train_attribute_head(
        [crops[s] for s in train_ids],
        [list(labels[s]) for s in train_ids],
        epochs=config.attribute_head_epochs,
        seed=config.seed,
    )
    save_attribute_head(head, latest)
    logger.info("trained the attribute head on %d ground-truth crops -> %s", len(train_ids), latest)
    return head


def _face_columns(
    job: ShardJob, kept: pd.DataFrame, attributes: KeptAttributes, config: CleanConfig
) -> dict[str, list]:
    ids = kept["SAMPLE_ID"].astype(int).tolist()
    crop_of = measured_crops(job.measurement_path, set(ids))
    names = [attributes.names.get(s, []) for s in ids]
    # A template only where attributes are known: without them it would replace the LAION text
    # by "A close-up portrait of a person." and throw the caption's information away.
    templates = [
        caption_for_sample(s, n, attributes.male.get(s), config.seed) if n else None for s, n in zip(ids, names)
    ]
    texts = kept["text"].tolist()
    return {
        "SAMPLE_ID": ids,
        "crop": [crop_of[s] for s in ids],
        "caption": [
            template or text or caption_for_sample(s, [], None, config.seed)
            for s, template, text in zip(ids, templates, texts)
        ],
        "text": texts,
        "template_caption": templates,
        "attributes": names,
        "det_score": kept["face_score"].astype(np.float32).tolist(),
        "box": [list(b) for b in kept["box"]],
        "landmarks": [None if lm is None else list(lm) for lm in kept["landmarks"]],
        "identity_id": [attributes.identity.get(s, -1) for s in ids],
    }


@task(name="score-rules", cache_policy=NO_CACHE)
def score_rules(config: CleanConfig) -> list[dict[str, Any]]:
    """Per rule: rows kept/rejected by it and, against ground-truth noise, precision and recall."""
    decisions = read_decisions(config.paths.clean_dir, ["SAMPLE_ID", "kept", "reasons"]).to_pandas()
    truth = read_ground_truth_if_any(config.paths.source_dir)
    return score_against_noise(decisions, truth)


def publish_stats(stats: list[dict[str, Any]]) -> None:
    """The rule table as a Prefect table artifact (it is also printed and stored in DuckDB)."""
    create_table_artifact(
        key="cleaning-rules",
        table=[
            {
                "rule": s["rule"],
                "kept": s["kept"],
                "rejected": s["rejected"],
                "precision": "n/a" if s.get("precision") is None else f"{s['precision']:.3f}",
                "recall": "n/a" if s.get("recall") is None else f"{s['recall']:.3f}",
            }
            for s in stats
        ],
        description="Rows each rule kept and rejected; precision/recall against the embedded corpus's ground truth",
    )


def format_stats(stats: list[dict[str, Any]]) -> str:
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    lines = [f"{'rule':24s} {'kept':>7s} {'rejected':>8s} {'precision':>9s} {'recall':>7s}"]
    lines += [
        f"{s['rule']:24s} {s['kept']:7d} {s['rejected']:8d} {pct(s['precision']):>9s} {pct(s['recall']):>7s}"
        for s in stats
    ]
    return "\n".join(lines)
