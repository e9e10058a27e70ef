"""Prefect tasks of the clean stage: measure shards on Dask, decide, caption, score.

Measuring (decode, detect, crop, language id, MinHash) runs per raw shard on Dask
workers, one detector session per worker. A measurements shard is reused when its
raw shard and the versions of what it measured are unchanged; when only the caption
or only the image half is stale, only that half is recomputed. Deciding (thresholds)
runs every time from stored measurements: it is vectorised and cheap.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.attribute_head import (
    confident_attributes,
    load_attribute_head,
    predict_probabilities,
    save_attribute_head,
    train_attribute_head,
)
from fvlp_core.captions import caption_for_sample
from fvlp_core.config import CleanConfig
from fvlp_core.detection.backends import DetectorSpec, detector_for, file_digest
from fvlp_core.detection.measure import ImageParams, decode_png, empty_measurement, measure_image
from fvlp_core.filters import (
    CAPTION_MEASURER_VERSION,
    RULE_NAMES,
    caption_text,
    combined_version,
    decide,
    measure_captions,
    image_duplicates,
    near_duplicates,
    rule_versions,
    score_against_noise,
)
from storage.clean import (
    GROUP_FIELDS,
    MEASUREMENT_SCHEMA,
    measurement_path,
    raw_fingerprint,
    read_decisions,
    read_ground_truth_if_any,
    read_measurements,
    read_raw_rows,
    remove_stale_shards,
    stored_versions,
    write_clean_manifest,
    write_decisions,
    write_faces,
    write_measurements,
)
from storage.shards import list_shards, read_manifest, shard_index


@dataclass(frozen=True)
class MeasureSettings:
    """Everything a Dask worker needs to measure a shard (small and picklable)."""

    detector: DetectorSpec
    image: ImageParams
    agreement_checkpoint: str | None

    @property
    def versions(self) -> dict[str, str]:
        return {
            "image": self.image.version,
            "caption": CAPTION_MEASURER_VERSION,
            "agreement": _agreement_version(self.agreement_checkpoint),
        }


def _agreement_version(checkpoint: str | None) -> str:
    return "none" if checkpoint is None else file_digest(checkpoint)


def detector_spec(config: CleanConfig) -> DetectorSpec:
    backend = config.detector
    if backend == "auto":
        backend = "insightface" if config.insightface_model else "retinaface"
    if backend == "insightface" and config.insightface_model is None:
        raise ValueError("--detector insightface needs --insightface-model pointing at a local det_*.onnx file")
    model = str(config.insightface_model.resolve()) if backend == "insightface" else None
    return DetectorSpec(
        backend=backend, model_path=model, max_side=config.detector_max_side,
        min_score=config.detector_min_score, threads=config.detector_threads, gpu=config.gpu,
    )


def measure_settings(config: CleanConfig) -> MeasureSettings:
    spec = detector_spec(config)
    image = ImageParams(spec.identity, config.max_image_pixels, config.crop_size, config.crop_margin)
    checkpoint = str(config.agreement_checkpoint.resolve()) if config.agreement_checkpoint else None
    return MeasureSettings(spec, image, checkpoint)


# ---------------------------------------------------------------- measuring (runs on Dask workers)


def measure_shard(raw_path: str, out_path: str, settings: MeasureSettings) -> dict[str, Any]:
    """Measure one raw shard into its measurements shard; recompute only stale groups."""
    current = {"raw": raw_fingerprint(Path(raw_path)), **settings.versions}
    stored = stored_versions(Path(out_path))
    stale = [g for g in ("image", "caption", "agreement") if stored.get(g) != current[g] or stored.get("raw") != current["raw"]]
    if not stale:
        return {"shard": Path(raw_path).name, "rows": pq.ParquetFile(raw_path).metadata.num_rows, "remeasured": []}
    raw = read_raw_rows(Path(raw_path))
    columns: dict[str, list] = {}
    if len(stale) < 3:
        previous = read_measurements(Path(out_path))
        columns = {name: previous.column(name).to_pylist() for name in previous.column_names}
    ids = raw.column("SAMPLE_ID").to_pylist()
    texts = [caption_text(t)[0] for t in raw.column("TEXT").to_pylist()]
    columns["SAMPLE_ID"], columns["text"] = ids, texts
    if "image" in stale:
        columns.update(_measure_images(raw, settings))
    if "caption" in stale:
        columns.update(measure_captions(raw.column("TEXT").to_pylist()))
    if "agreement" in stale:
        columns["agreement"] = _agreement_scores(columns["crop"], texts, settings.agreement_checkpoint)
    write_measurements(columns, Path(out_path), current)
    return {"shard": Path(raw_path).name, "rows": raw.num_rows, "remeasured": stale}


def _measure_images(raw: pa.Table, settings: MeasureSettings) -> dict[str, list]:
    detector = detector_for(settings.detector)  # cached: built once per worker process
    rows = []
    statuses = raw.column("fetch_status").to_pylist()
    errors = raw.column("fetch_error").to_pylist()
    for data, status, error in zip(raw.column("image").to_pylist(), statuses, errors):
        if data is None and status != "ok":
            row = empty_measurement()
            row["image_error_rule"] = "undecodable_image"
            row["image_error"] = f"not fetched ({status}: {error})" if error else f"not fetched ({status})"
        else:
            row = measure_image(data, detector, settings.image)
        rows.append(row)
    return {name: [r[name] for r in rows] for name in GROUP_FIELDS["image"]}


def _agreement_scores(crops: list, texts: list[str], checkpoint: str | None) -> list[float | None]:
    """Cosine similarity of each face crop and its caption under a trained FVLP model."""
    if checkpoint is None:
        return [None] * len(crops)
    encoder = _encoder(checkpoint)
    present = [i for i, (c, t) in enumerate(zip(crops, texts)) if c is not None and t.strip()]
    scores: list[float | None] = [None] * len(crops)
    if present:
        images = encoder.encode_images([crops[i] for i in present])  # PNG bytes: the encoder decodes them
        captions = encoder.encode_texts([texts[i] for i in present])
        similarity = (np.asarray(images) * np.asarray(captions)).sum(axis=1)
        for i, value in zip(present, similarity):
            scores[i] = float(value)
    return scores


_ENCODERS: dict[str, Any] = {}


def _encoder(checkpoint: str):
    if checkpoint not in _ENCODERS:
        from fvlp_core.embed import FVLPEncoder

        _ENCODERS[checkpoint] = FVLPEncoder.load(checkpoint)
    return _ENCODERS[checkpoint]


# ---------------------------------------------------------------- Prefect tasks


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


@contextmanager
def dask_client(config: CleanConfig) -> Iterator[Any]:
    """A client on the configured scheduler, or on a LocalCluster that lives for the block."""
    from distributed import Client, LocalCluster

    # The scheduler's INFO chatter (every worker and connection) would drown the flow's own log.
    chatter = logging.getLogger("distributed")
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    try:
        if config.dask_address:
            with Client(config.dask_address) as client:
                yield client
            return
        with LocalCluster(
            n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster, Client(cluster) as client:
            yield client
    finally:
        chatter.setLevel(level)


@task(name="measure-shards", cache_policy=NO_CACHE)
def measure_shards(config: CleanConfig, jobs: list[ShardJob]) -> list[dict[str, Any]]:
    """Map :func:`measure_shard` over the shards on Dask; a failed shard fails the task naming it."""
    logger = get_run_logger()
    settings = measure_settings(config)
    if config.recompute:
        for job in jobs:
            job.measurement_path.unlink(missing_ok=True)
    with dask_client(config) as client:
        futures = client.map(
            measure_shard, [str(j.raw_path) for j in jobs], [str(j.measurement_path) for j in jobs],
            settings=settings, pure=False,
        )
        results = []
        for job, future in zip(jobs, futures):
            try:
                results.append(future.result())
            except Exception as err:
                raise RuntimeError(f"measuring raw shard {job.raw_path} failed: {err}") from err
    remeasured = sum(r["rows"] for r in results if r["remeasured"])
    logger.info("measured %d shards (%d rows re-measured, %d reused) with %s",
                len(results), remeasured, sum(r["rows"] for r in results) - remeasured, settings.detector.identity)
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
    _, distance = image_duplicates(phashes)
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
    per_shard = []
    for job in jobs:
        rows = measurements[measurements["shard"] == job.index]
        decisions = pa.table({
            "SAMPLE_ID": rows["SAMPLE_ID"].to_numpy(dtype=np.int64),
            "raw_shard": rows["raw_shard"].tolist(),
            "kept": rows["kept"].to_numpy(dtype=bool),
            "reasons": rows["reasons"].tolist(),
            "measurements": rows["measurements"].tolist(),
            "rule_version": [version] * len(rows),
        })
        write_decisions(decisions, config.paths.clean_dir, job.index)
        kept_rows = rows[rows["kept"]]
        write_faces(_faces_table(job, kept_rows, attributes, config), config.paths.clean_dir, job.index)
        kept = int(kept_rows.shape[0])
        raw_rows = pq.ParquetFile(job.raw_path).metadata.num_rows
        if len(rows) != raw_rows:
            raise AssertionError(f"{job.raw_path}: {raw_rows} input rows but {len(rows)} decisions")
        per_shard.append({"shard": job.raw_path.name, "input_rows": len(rows), "kept": kept, "rejected": len(rows) - kept})
    previous_versions = _previous_rule_versions(config)
    changed_rules = sorted(r for r in RULE_NAMES if previous_versions.get(r) != versions[r])
    write_clean_manifest(config.paths.clean_dir, {
        "rule_versions": versions, "rule_version": version, "measurement_versions": settings.versions,
        "detector": settings.detector.identity, "shards": per_shard,
    })
    totals = {k: sum(s[k] for s in per_shard) for k in ("input_rows", "kept", "rejected")}
    logger.info("decided %d rows: kept %d, rejected %d; rules re-evaluated: %s; %d decisions changed",
                totals["input_rows"], totals["kept"], totals["rejected"], changed_rules or "none", changed)
    return {**totals, "per_shard": per_shard, "changed_rules": changed_rules, "changed_decisions": changed,
            "rule_version": version, "attribute_source": attributes.source}


def _previous_decisions(config: CleanConfig) -> pd.DataFrame | None:
    try:
        return read_decisions(config.paths.clean_dir, ["raw_shard", "SAMPLE_ID", "kept"]).to_pandas()
    except FileNotFoundError:
        return None


def _previous_rule_versions(config: CleanConfig) -> dict[str, str]:
    return read_manifest(config.paths.clean_dir / "decisions").get("rule_versions", {})


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
        crops = _crops_by_id(jobs, set(missing) | (set(truth["SAMPLE_ID"].astype(int)) if truth is not None else set()))
        head = _attribute_head(config, truth, crops, set(missing))
        if head is None:
            logger.warning("%d kept rows have no ground-truth attributes and no attribute head is available: "
                           "their captions carry no attributes", len(missing))
        else:
            present = [s for s in missing if s in crops]
            probabilities = predict_probabilities(head, [crops[s] for s in present])
            predicted, genders = confident_attributes(probabilities, config.attribute_min_prob)
            for sid, attrs, gender in zip(present, predicted, genders):
                names[sid], male[sid] = attrs, gender
            source["attribute_head"] = len(present)
    return KeptAttributes(names, male, identity, source)


def _crops_by_id(jobs: list[ShardJob], wanted: set[int]) -> dict[int, np.ndarray]:
    crops = {}
    for job in jobs:
        table = read_measurements(job.measurement_path, ["SAMPLE_ID", "crop"])
        for sid, crop in zip(table.column("SAMPLE_ID").to_pylist(), table.column("crop").to_pylist()):
            if crop is not None and sid in wanted:
                crops[sid] = decode_png(crop)
    return crops


def _attribute_head(config: CleanConfig, truth: pd.DataFrame | None, crops: dict[int, np.ndarray], missing: set[int]):
    """A configured head, else one trained now on crops that have ground truth (saved for later runs)."""
    logger = get_run_logger()
    if config.attribute_head is not None:
        return load_attribute_head(config.attribute_head)
    train_ids = [] if truth is None else [int(s) for s in truth["SAMPLE_ID"] if int(s) in crops and int(s) not in missing]
    latest = config.paths.checkpoints_dir / "attribute_head" / "attribute_head.pt"
    if len(train_ids) < 32:
        if latest.exists():
            logger.info("using the attribute head saved at %s", latest)
            return load_attribute_head(latest)
        return None
    labels = dict(zip(truth["SAMPLE_ID"].astype(int), truth["attributes"]))
    head = train_attribute_head(
        [crops[s] for s in train_ids], [list(labels[s]) for s in train_ids],
        epochs=config.attribute_head_epochs, seed=config.seed,
    )
    save_attribute_head(head, latest)
    logger.info("trained the attribute head on %d ground-truth crops -> %s", len(train_ids), latest)
    return head


def _faces_table(job: ShardJob, kept: pd.DataFrame, attributes: KeptAttributes, config: CleanConfig) -> pa.Table:
    wanted = set(kept["SAMPLE_ID"].astype(int))
    table = read_measurements(job.measurement_path, ["SAMPLE_ID", "crop"])
    # A repeated SAMPLE_ID's later row (never fetched, no crop) must not replace the kept row's crop.
    crop_of = {
        s: c for s, c in zip(table.column("SAMPLE_ID").to_pylist(), table.column("crop").to_pylist())
        if s in wanted and c is not None
    }
    ids = kept["SAMPLE_ID"].astype(int).tolist()
    names = [attributes.names.get(s, []) for s in ids]
    return pa.table({
        "SAMPLE_ID": ids,
        "crop": [crop_of[s] for s in ids],
        "caption": [caption_for_sample(s, n, attributes.male.get(s), config.seed) for s, n in zip(ids, names)],
        "text": kept["text"].tolist(),
        "attributes": names,
        "det_score": kept["face_score"].astype(np.float32).tolist(),
        "box": [list(b) for b in kept["box"]],
        "landmarks": [None if l is None else list(l) for l in kept["landmarks"]],
        "identity_id": [attributes.identity.get(s, -1) for s in ids],
    })


@task(name="score-rules", cache_policy=NO_CACHE)
def score_rules(config: CleanConfig) -> list[dict[str, Any]]:
    """Per rule: rows kept/rejected by it and, against ground-truth noise, precision and recall."""
    decisions = read_decisions(config.paths.clean_dir, ["SAMPLE_ID", "kept", "reasons"]).to_pandas()
    truth = read_ground_truth_if_any(config.paths.source_dir)
    return score_against_noise(decisions, truth)


def format_stats(stats: list[dict[str, Any]]) -> str:
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    lines = [f"{'rule':24s} {'kept':>7s} {'rejected':>8s} {'precision':>9s} {'recall':>7s}"]
    lines += [f"{s['rule']:24s} {s['kept']:7d} {s['rejected']:8d} {pct(s['precision']):>9s} {pct(s['recall']):>7s}" for s in stats]
    return "\n".join(lines)


def dataset_fingerprint(jobs: list[ShardJob]) -> str:
    return hashlib.sha1(json.dumps([raw_fingerprint(j.raw_path) for j in jobs]).encode()).hexdigest()[:16]

