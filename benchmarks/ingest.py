"""Ingest throughput (rows/s) next to pyarrow's raw Parquet write throughput for the same rows.

Builds ``--rows`` LAION-shaped metadata rows and a folder of JPEG files (a local source, so
no network time is measured), then times, on the same machine and the same data:

* pyarrow:      ``pq.write_table`` of the finished raw rows, already in memory, in the same
                shard sizes and compression: the floor any Parquet writer pays;
* ingest core:  the plan plus ``fetch_shard`` per shard without Prefect (metadata
                validation, file reads, image header checks, atomic shard writes);
* ingest flow:  ``ingest_flow`` end to end (Prefect task runs, progress bar, manifest),
                with the default ``parallel_shards`` and with one shard at a time.

Then what Prefect spends per shard task walking its parameters (dependency tracking and
input resolution) when the plan is LAION-sized (5,000 shards of 10,000 rows, 20,000
duplicate ids), passed as it is and wrapped in ``quote`` as the flow passes it.

Each figure is the best of ``--repeats`` runs into a fresh folder. The ratio is ingest rows/s
divided by pyarrow rows/s (1.0 would mean ingest costs no more than writing the bytes).

    .venv/bin/python benchmarks/ingest.py --rows 5000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would drown the table

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from fvlp_core.config import IngestConfig, Paths  # noqa: E402
from fvlp_core.fetch import open_fetcher  # noqa: E402
from storage.shards import column_compression, read_dataset  # noqa: E402
from tasks.ingest import build_plan, fetch_shard  # noqa: E402


def make_inputs(root: Path, rows: int) -> tuple[Path, Path]:
    """``rows`` metadata rows and one distinct 256x256 JPEG file per row."""
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for sample_id in range(rows):
        gradient = np.linspace(0, 255, 256, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, 3)
        pixels = gradient + rng.normal(0, 12, (256, 256, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / f"{sample_id}.jpg", quality=85)
    metadata = root / "metadata.parquet"
    pq.write_table(
        pa.table(
            {
                "SAMPLE_ID": pa.array(np.arange(rows), pa.int64()),
                "URL": [f"https://img.example/{i}.jpg" for i in range(rows)],
                "TEXT": [f"portrait photo number {i} of a smiling person" for i in range(rows)],
                "WIDTH": pa.array(np.full(rows, 256), pa.int64()),
                "HEIGHT": pa.array(np.full(rows, 256), pa.int64()),
                "similarity": rng.uniform(0.25, 0.4, rows),
                "LICENSE": ["?"] * rows,
                "NSFW": ["UNLIKELY"] * rows,
            }
        ),
        metadata,
    )
    return metadata, images


def best_seconds(run: Callable[[Path], None], scratch: Path, repeats: int) -> float:
    times = []
    for attempt in range(repeats):
        out = scratch / f"{run.__name__}-{attempt}"
        start = time.perf_counter()
        run(out)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest import ingest_flow

    with (
        tempfile.TemporaryDirectory(prefix="fvlp-bench-ingest-") as tmp,
        prefect_test_harness(server_startup_timeout=120),
    ):
        scratch = Path(tmp)
        metadata, images = make_inputs(scratch, args.rows)

        def config(out: Path, **settings) -> IngestConfig:
            return IngestConfig(
                paths=Paths(data_root=out),
                source="folder",
                metadata=[metadata],
                images=images,
                shard_size=args.shard_size,
                **settings,
            )

        def ingest_core(out: Path) -> None:
            cfg = config(out)
            plan = build_plan(cfg.metadata, cfg)
            fetcher = open_fetcher(cfg.source, images=cfg.images, max_bytes=cfg.max_image_bytes, http=cfg.http)
            for spec in plan.pending:
                fetch_shard(plan, spec, fetcher)
            fetcher.close()

        def ingest_prefect_flow(out: Path) -> None:
            ingest_flow(config(out))

        def ingest_flow_one_shard_at_a_time(out: Path) -> None:
            ingest_flow(config(out, parallel_shards=1))

        ingest_prefect_flow(scratch / "warm-up")  # starts the local Prefect server, outside the timings
        finished = read_dataset(config(scratch / "warm-up").paths.raw_dir)
        assert finished.num_rows == args.rows
        schema = finished.schema
        compression = column_compression(schema)  # as ingest writes: images stored as they came

        def pyarrow_write(out: Path) -> None:
            out.mkdir()
            for index, start in enumerate(range(0, args.rows, args.shard_size)):
                shard = finished.slice(start, args.shard_size)
                pq.write_table(shard.cast(schema), out / f"shard-{index:05d}.parquet", compression=compression)

        timings = {
            "pyarrow write": best_seconds(pyarrow_write, scratch, args.repeats),
            "ingest core": best_seconds(ingest_core, scratch, args.repeats),
            "ingest flow": best_seconds(ingest_prefect_flow, scratch, args.repeats),
            "flow, 1 shard": best_seconds(ingest_flow_one_shard_at_a_time, scratch, args.repeats),
        }

    image_mb = sum(len(b) for b in finished.column("image").to_pylist()) / 1e6
    baseline = args.rows / timings["pyarrow write"]
    print(f"{args.rows} rows, {image_mb:.1f} MB of JPEG, shards of {args.shard_size}, best of {args.repeats}")
    print(f"{'':16}{'seconds':>9}{'rows/s':>10}{'ratio to pyarrow':>18}")
    for name, seconds in timings.items():
        rate = args.rows / seconds
        print(f"{name:16}{seconds:9.3f}{rate:10.0f}{rate / baseline:18.3f}")
    print("Prefect's parameter walk per shard task, LAION-sized plan (5,000 shards):")
    for name, seconds in plan_walk_seconds().items():
        print(f"  {name:14}{seconds * 1000:10.2f} ms")


def plan_walk_seconds(shards: int = 5000, duplicates: int = 20_000, repeats: int = 3) -> dict[str, float]:
    """Seconds Prefect spends per shard-task submission walking a LAION-sized plan."""
    from prefect.utilities.annotations import quote
    from prefect.utilities.engine import collect_task_run_inputs_sync, resolve_inputs_sync

    from storage.raw import ShardSpec
    from tasks.ingest import IngestPlan

    specs = [ShardSpec(i, i * 10_000, (i + 1) * 10_000) for i in range(shards)]
    repeated = {i: ("part-0.parquet", i) for i in range(duplicates)}
    # No metadata files: only the walk is timed.
    plan = IngestPlan(Path("raw"), "url", None, [], 10_000, specs, specs, "plan", repeated, None)  # type: ignore[arg-type]
    seconds = {}
    for name, parameter in (("plan as it is", plan), ("quote(plan)", quote(plan))):
        started = time.perf_counter()
        for _ in range(repeats):
            collect_task_run_inputs_sync(parameter)
            resolve_inputs_sync({"plan": parameter})
        seconds[name] = (time.perf_counter() - started) / repeats
    return seconds


if __name__ == "__main__":
    main()
