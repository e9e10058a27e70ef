"""Ingest flow: LAION-style metadata + an image source -> raw Parquet shards + manifest.json.

``fvlp ingest`` reads metadata Parquet (SAMPLE_ID, URL, TEXT, WIDTH, HEIGHT, similarity, and
any extras), gets each row's image from the chosen source (``embedded`` generator, a
``folder`` or ``tar`` of ``<SAMPLE_ID>.<ext>`` files, or ``url`` over http/https), and
writes fixed-size shards to ``<data-root>/raw`` with a fetch status per row. With
``--source embedded`` and no ``--metadata`` the corpus is generated first (``--rows``,
``--identities``, ``--seed``). Re-running skips complete shards; see ``tasks/ingest.py``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from tqdm.auto import tqdm

from fvlp_core.config import IngestConfig
from fvlp_core.fetch import open_fetcher
from tasks.ingest import check_failures, ingest_shard, plan_ingest, prepare_embedded_source, write_ingest_manifest


@flow(name="ingest")
def ingest_flow(config: IngestConfig = IngestConfig()) -> dict[str, Any]:
    """Returns ``{"raw_dir", "rows", "shards", "written_shards", "status_counts"}``."""
    logger = get_run_logger()
    corpus, metadata_paths = None, list(config.metadata)
    if config.source == "embedded":
        corpus, metadata_paths = prepare_embedded_source(config)
    plan = plan_ingest(metadata_paths, config)
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
    try:
        with tqdm(total=plan.metadata.total_rows, initial=done_rows, unit="row", desc="ingest") as bar:
            for spec in plan.pending:
                written[spec.index] = ingest_shard(plan, spec, fetcher)
                bar.set_postfix(shards=f"{len(plan.shards) - len(plan.pending) + len(written)}/{len(plan.shards)}")
                bar.update(spec.rows)
    finally:
        fetcher.close()
    status_counts = write_ingest_manifest(plan, written)["status_counts"]
    logger.info("raw dataset %s: %d rows, %s", plan.raw_dir, plan.metadata.total_rows, status_counts)
    check_failures(status_counts, plan.metadata.total_rows, config.max_failed_fraction)
    return {
        "raw_dir": str(plan.raw_dir),
        "rows": plan.metadata.total_rows,
        "shards": len(plan.shards),
        "written_shards": len(written),
        "status_counts": status_counts,
    }
