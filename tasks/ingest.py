"""Prefect tasks of the ingest stage: plan the shards, then fetch and write one shard at a time.

Idempotence comes from the plan: the input rows, in order, cut into fixed-size shards, with
a fingerprint of the inputs and settings stored in every shard. A shard that exists under
its final name with the plan's fingerprint and its full row count is done and skipped; a
shard cut short by a crash only ever exists as a dot-prefixed temp file, which is ignored
and rewritten. Shards from a different plan in the same folder stop the run with an error
instead of being mixed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.config import IngestConfig
from fvlp_core.corpus import EmbeddedCorpus
from fvlp_core.fetch import Fetcher, FetchRequest, FetchResult
from storage.files import expand_paths, tree_fingerprint
from storage.raw import (
    COLUMN_CANDIDATES,
    FAILED_STATUSES,
    IMPLIED_COLUMNS,
    METADATA_SUFFIXES,
    STAGED_DIR,
    MetadataError,
    MetadataFiles,
    ShardSpec,
    foreign_shards,
    open_metadata,
    plan_shards,
    shard_is_complete,
    shard_status_counts,
    write_raw_manifest,
    write_raw_shard,
)
from storage.shards import shard_path
from storage.source import (
    GROUND_TRUTH_SCHEMA,
    METADATA_FILE,
    METADATA_SCHEMA,
    read_ground_truth,
    read_source_metadata,
    write_embedded_source,
)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class IngestPlan:
    raw_dir: Path
    source: str
    metadata: MetadataFiles
    images: list[Path]  # the image folder or every tar, expanded
    shard_size: int
    shards: list[ShardSpec]
    pending: list[ShardSpec]
    fingerprint: str
    # global input row -> (file, row) of the earlier row with the same SAMPLE_ID
    duplicates: dict[int, tuple[str, int]]
    # the embedded corpus's settings (recorded for the stages that redraw its faces), or None
    corpus: dict[str, int] | None


def image_paths(config: IngestConfig) -> list[Path]:
    """The image folder, or every tar the ``--images`` entries name (files, folders, globs)."""
    if config.source == "tar":
        return expand_paths(config.images, TAR_SUFFIXES, "--images")
    return list(config.images)


def build_plan(metadata_paths: Sequence[Path], config: IngestConfig) -> IngestPlan:
    """Validate the metadata, cut it into shards and find which shards still need writing."""
    raw_dir = config.paths.raw_dir
    paths = expand_paths(metadata_paths, METADATA_SUFFIXES, "--metadata")
    metadata = open_metadata(paths, config.column_names, raw_dir / STAGED_DIR)
    if config.source in ("folder", "tar") and metadata.columns["SAMPLE_ID"] is None:
        raise MetadataError(
            f"{paths[0]}: no id column (looked for {' or '.join(COLUMN_CANDIDATES['SAMPLE_ID'])}), and "
            f"source={config.source} finds images by id; name it with --id-col"
        )
    images = image_paths(config)
    # Where the images are and what is there: images added to a folder, or a tar replaced,
    # between an interrupted run and its rerun make a different plan.
    image_state = [f"{p.resolve()}:{tree_fingerprint(p)}" for p in images]
    fingerprint = metadata.fingerprint(shard_size=config.shard_size, source=config.source, images=image_state)
    shards = plan_shards(metadata.total_rows, config.shard_size)
    foreign = foreign_shards(raw_dir, fingerprint, len(shards))
    if foreign:
        raise RuntimeError(
            f"{raw_dir} already holds shards from a different ingest (other metadata, source, images "
            f"or shard size), e.g. {foreign[0].name}; use another --data-root or remove {raw_dir}"
        )
    pending = [spec for spec in shards if not shard_is_complete(raw_dir, spec, fingerprint)]
    # Every page is decoded and every SAMPLE_ID compared up front (skipped when nothing is left
    # to write): a corrupt row group stops the plan, not the run after some shards.
    if pending:
        metadata.check_readable()
    duplicates = metadata.duplicate_rows() if pending else {}
    corpus = (
        {"rows": config.rows, "identities": config.identities, "seed": config.seed}
        if config.source == "embedded"
        else None
    )
    return IngestPlan(
        raw_dir, config.source, metadata, images, config.shard_size, shards, pending, fingerprint, duplicates, corpus
    )


# NO_CACHE: inputs are live objects (tables, fetchers) that must not be hashed or stored.
@task(name="plan-ingest", cache_policy=NO_CACHE)
def plan_ingest(metadata_paths: Sequence[Path], config: IngestConfig) -> IngestPlan:
    plan = build_plan(metadata_paths, config)
    logger = get_run_logger()
    mapped = {c: n for c, n in plan.metadata.columns.items() if n != c}
    if mapped:
        logger.info("columns: %s", ", ".join(f"{c} <- {n or IMPLIED_COLUMNS[c]}" for c, n in mapped.items()))
    logger.info(
        "%d input rows in %d file(s) -> %d shard(s) of %d; %d to write, %d duplicate SAMPLE_ID row(s)",
        plan.metadata.total_rows,
        len(plan.metadata.files),
        len(plan.shards),
        plan.shard_size,
        len(plan.pending),
        len(plan.duplicates),
    )
    return plan


def fetch_shard(plan: IngestPlan, spec: ShardSpec, fetcher: Fetcher) -> dict[str, int]:
    """Fetch every row of ``spec`` and write the shard; returns the shard's status counts."""
    rows = plan.metadata.read_rows(spec.start, spec.stop)
    sample_ids = rows.column("SAMPLE_ID").to_pylist()
    urls = rows.column("URL").to_pylist()
    results: list[FetchResult | None] = [None] * spec.rows
    to_fetch: list[int] = []
    for offset in range(spec.rows):
        first = plan.duplicates.get(spec.start + offset)
        if first is None:
            to_fetch.append(offset)
        else:
            results[offset] = FetchResult(
                "duplicate_id", error=f"SAMPLE_ID {sample_ids[offset]} already at {first[0]} row {first[1]}"
            )
    fetched = fetcher.fetch([FetchRequest(sample_ids[i], urls[i]) for i in to_fetch])
    for offset, result in zip(to_fetch, fetched, strict=True):
        results[offset] = result
    write_raw_shard(
        plan.raw_dir,
        spec,
        with_measured_sizes(rows, [r.size if r else None for r in results]),
        images=[r.image for r in results],
        statuses=[r.status for r in results],
        errors=[r.error for r in results],
        metadata_schema=plan.metadata.schema,
        fingerprint=plan.fingerprint,
    )
    return dict(Counter(r.status for r in results))


def with_measured_sizes(rows: pa.Table, sizes: Sequence[tuple[int, int] | None]) -> pa.Table:
    """``rows`` with null WIDTH/HEIGHT filled from the fetched image's header (metadata without
    size columns, or a row without a size)."""
    for axis, name in enumerate(("WIDTH", "HEIGHT")):
        measured = pa.array([size[axis] if size else None for size in sizes], pa.int64())
        filled = pc.coalesce(rows.column(name), measured)
        rows = rows.set_column(rows.schema.get_field_index(name), name, filled)
    return rows


@task(name="ingest-shard", task_run_name="ingest-{spec.name}", cache_policy=NO_CACHE)
def ingest_shard(plan: IngestPlan, spec: ShardSpec, fetcher: Fetcher) -> dict[str, int]:
    counts = fetch_shard(plan, spec, fetcher)
    get_run_logger().info("%s: %d rows %s", spec.name, spec.rows, counts)
    return counts


@task(name="write-raw-manifest", cache_policy=NO_CACHE)
def write_ingest_manifest(plan: IngestPlan, written: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Summarise every complete shard; counts of shards skipped this run are read back from them."""
    status = {
        spec.index: written.get(spec.index) or shard_status_counts(shard_path(plan.raw_dir, spec.index))
        for spec in plan.shards
        if spec.index in written or shard_is_complete(plan.raw_dir, spec, plan.fingerprint)
    }
    return write_raw_manifest(
        plan.raw_dir, plan.metadata, plan.shards, plan.shard_size, plan.fingerprint, plan.source, status, plan.corpus
    )


class TooManyFailures(RuntimeError):
    """Most rows got no image: the run ends Failed (its shards stay, so a rerun resumes)."""


def check_failures(status_counts: dict[str, int], rows: int, max_failed_fraction: float) -> None:
    """Raise :class:`TooManyFailures` when more than ``max_failed_fraction`` of ``rows`` got no image."""
    failed = sum(n for status, n in status_counts.items() if status in FAILED_STATUSES)
    if rows and failed / rows > max_failed_fraction:
        counts = ", ".join(f"{status} {n}" for status, n in sorted(status_counts.items(), key=lambda kv: -kv[1]))
        raise TooManyFailures(
            f"{failed} of {rows} rows ({failed / rows:.0%}) got no image, over --max-failed-fraction "
            f"{max_failed_fraction:g} ({counts}); see fetch_error in the raw shards"
        )


def _same_source(source_dir: Path, corpus: EmbeddedCorpus) -> bool:
    """True when ``source_dir`` already holds exactly this corpus's metadata and ground truth."""
    try:
        on_disk = (read_source_metadata(source_dir), read_ground_truth(source_dir))
    except (FileNotFoundError, ValueError):
        return False
    wanted = (corpus.metadata(), corpus.ground_truth())
    return all(
        pa.Table.from_pandas(disk, schema=schema, preserve_index=False).equals(
            pa.Table.from_pandas(fresh, schema=schema, preserve_index=False)
        )
        for disk, fresh, schema in zip(on_disk, wanted, (METADATA_SCHEMA, GROUND_TRUTH_SCHEMA))
    )


@task(name="prepare-embedded-source", cache_policy=NO_CACHE)
def prepare_embedded_source(config: IngestConfig) -> tuple[EmbeddedCorpus, list[Path]]:
    """The embedded corpus and the metadata to ingest: ``config.metadata`` when given, else the
    corpus's own, written into ``source_dir`` unless that folder already holds exactly it."""
    logger = get_run_logger()
    corpus = EmbeddedCorpus(config.rows, config.identities, config.seed)
    if config.metadata:
        return corpus, list(config.metadata)
    source_dir = config.paths.source_dir
    if _same_source(source_dir, corpus):
        logger.info("embedded corpus (rows=%d, seed=%d) already in %s", config.rows, config.seed, source_dir)
    else:
        write_embedded_source(source_dir, corpus)
        logger.info("wrote embedded corpus (rows=%d, seed=%d) to %s", config.rows, config.seed, source_dir)
    return corpus, [source_dir / METADATA_FILE]
