"""Ingest flow: LAION-style metadata + an image source -> raw Parquet shards + manifest.json.

``fvlp ingest`` reads LAION-style metadata (Parquet, CSV, TSV, JSON lines; see
``storage/raw.py`` for the columns), gets each row's image from the chosen source
(``embedded`` generator, a ``folder`` or ``tar`` set of images named by SAMPLE_ID or with
img2dataset sidecars, or ``url`` over http/https), and writes fixed-size shards to
``<data-root>/raw`` with a fetch status per row, a ``runs`` row in the results store and
status-count artifacts. With
``--source embedded`` and no ``--metadata`` the corpus is generated first (``--rows``,
``--identities``, ``--seed``). Re-running skips complete shards; see ``tasks/ingest.py``.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, wait
from prefect.utilities.annotations import quote
from tqdm.auto import tqdm

from fvlp_core.config import IngestConfig, flow_config
from fvlp_core.fetch import open_fetcher
from storage.raw import ShardSpec
from storage.results import ResultsStore
from tasks.ingest import (
    IngestPlan,
    check_failures,
    ingest_shard,
    plan_ingest,
    prepare_embedded_source,
    write_ingest_manifest,
)
from tasks.lineage import run_lineage


@flow(name="ingest")
def ingest_flow(config: IngestConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns ``{"run_id", "raw_dir", "rows", "shards", "written_shards", "status_counts"}``.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(IngestConfig, config, data_root)
    logger = get_run_logger()
    store = ResultsStore(config.paths.results_store)
    with store.run("ingest", config=config.model_dump(mode="json"), lineage=run_lineage()) as run_id:
        corpus, metadata_paths = None, list(config.metadata)
        if config.source == "embedded":
            corpus, metadata_paths = prepare_embedded_source(config)
        plan = plan_ingest(metadata_paths, config)
        store.set_fingerprints(run_id, dataset_fingerprint=f"ingest-plan:{plan.fingerprint}")
        written = fetch_pending_shards(plan, config, corpus)
        status_counts = write_ingest_manifest(plan, written)["status_counts"]
        logger.info("raw dataset %s: %d rows, %s", plan.raw_dir, plan.metadata.total_rows, status_counts)
        publish_status_counts(status_counts, plan.metadata.total_rows)
        store.record_results(
            run_id,
            metrics=[
                {"split": "raw", "variant": "fetch_status", "name": status, "value": float(n)}
                for status, n in status_counts.items()
            ],
        )
        check_failures(status_counts, plan.metadata.total_rows, config.max_failed_fraction)
    return {
        "run_id": run_id,
        "raw_dir": str(plan.raw_dir),
        "rows": plan.metadata.total_rows,
        "shards": len(plan.shards),
        "written_shards": len(written),
        "status_counts": status_counts,
    }


def fetch_pending_shards(plan: IngestPlan, config: IngestConfig, corpus: Any) -> dict[int, dict[str, int]]:
    """Fetch and write every shard the plan still needs; returns status counts per written shard."""
    fetcher = open_fetcher(
        config.source,
        images=plan.images,
        max_bytes=config.max_image_bytes,
        http=config.http,
        id_field=plan.metadata.columns["SAMPLE_ID"] or "SAMPLE_ID",
        corpus=corpus,
        render_workers=config.render_workers,
    )
    written: dict[int, dict[str, int]] = {}
    done_rows = plan.metadata.total_rows - sum(spec.rows for spec in plan.pending)
    progress = create_progress_artifact(
        progress=100.0 * done_rows / max(plan.metadata.total_rows, 1),
        key="ingest-progress",
        description="Share of the input rows in complete raw shards",
    )
    # Up to parallel_shards shard tasks run at once (threads: fetching waits on files and
    # sockets, Parquet writing releases the GIL); results are taken in plan order.
    running: deque[tuple[ShardSpec, PrefectFuture]] = deque()
    try:
        with tqdm(total=plan.metadata.total_rows, initial=done_rows, unit="row", desc="ingest") as bar:

            def finish_oldest() -> None:
                nonlocal done_rows
                spec, future = running.popleft()
                written[spec.index] = future.result()
                bar.set_postfix(shards=f"{len(plan.shards) - len(plan.pending) + len(written)}/{len(plan.shards)}")
                bar.update(spec.rows)
                done_rows += spec.rows
                update_progress_artifact(progress, progress=100.0 * done_rows / max(plan.metadata.total_rows, 1))

            for spec in plan.pending:
                # quote: Prefect would walk the whole plan (every shard spec) for each shard task.
                running.append((spec, ingest_shard.submit(quote(plan), spec, quote(fetcher))))
                if len(running) >= config.parallel_shards:
                    finish_oldest()
            while running:
                finish_oldest()
    finally:
        wait([future for _, future in running])  # after a failure: no shard still reads from the fetcher
        fetcher.close()
    return written


def publish_status_counts(status_counts: dict[str, int], rows: int) -> None:
    """The fetch outcome of every row, as a table in the Prefect UI."""
    create_table_artifact(
        key="ingest-status-counts",
        table=[
            {"fetch_status": status, "rows": n, "share": f"{n / max(rows, 1):.1%}"}
            for status, n in sorted(status_counts.items(), key=lambda item: -item[1])
        ],
        description=f"Fetch status of the {rows} input rows",
    )
