"""The clean stage's Dask worker: measure one raw shard into its measurements shard.

Runs in Dask worker processes, so it imports no Prefect (a worker needs only this module,
``fvlp_core`` and ``storage``), and everything it is handed is small and picklable: two
paths and a :class:`MeasureSettings`. One detector session is built per worker process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fvlp_core.config import CleanConfig
from fvlp_core.detection.backends import DetectorSpec, detector_for
from fvlp_core.detection.measure import ImageParams, empty_measurement, measure_image
from fvlp_core.digest import file_digest
from fvlp_core.filters import CAPTION_MEASURER_VERSION, caption_text, measure_captions
from storage.clean import (
    GROUP_FIELDS,
    raw_fingerprint,
    read_measurements,
    read_raw_rows,
    stored_versions,
    write_measurements,
)
from storage.shards import shard_rows


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
        backend=backend,
        model_path=model,
        max_side=config.detector_max_side,
        min_score=config.detector_min_score,
        threads=config.detector_threads,
        gpu=config.gpu,
    )


def measure_settings(config: CleanConfig) -> MeasureSettings:
    spec = detector_spec(config)
    image = ImageParams(spec.identity, config.max_image_pixels, config.crop_size, config.crop_margin)
    checkpoint = str(config.agreement_checkpoint.resolve()) if config.agreement_checkpoint else None
    return MeasureSettings(spec, image, checkpoint)


def measure_shard(raw_path: str, out_path: str, settings: MeasureSettings) -> dict[str, Any]:
    """Measure one raw shard into its measurements shard; recompute only stale groups."""
    current = {"raw": raw_fingerprint(Path(raw_path)), **settings.versions}
    stored = stored_versions(Path(out_path))
    stale = [
        g
        for g in ("image", "caption", "agreement")
        if stored.get(g) != current[g] or stored.get("raw") != current["raw"]
    ]
    if not stale:
        return {"shard": Path(raw_path).name, "rows": shard_rows(Path(raw_path)), "remeasured": []}
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
            # Ingest refuses bombs and over-cap files unread as too_large: the same rule as a bomb found here.
            row["image_error_rule"] = "image_too_large" if status == "too_large" else "undecodable_image"
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
        images = encoder.encode_images([crops[i] for i in present])  # JPEG bytes: the encoder decodes them
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
