"""Clean flow: raw shards -> face crops with attribute captions + one decision per input row.

``fvlp clean`` measures every raw shard on Dask (a LocalCluster, or ``--dask-address``),
applies the named face and caption rules, writes ``clean_dir/decisions`` and
``clean_dir/faces``, prints precision/recall of rejection per rule against the
embedded corpus's ground-truth noise and stores them in the results store. Re-running
with other thresholds re-decides from stored measurements; a new detector re-measures
only the image half (see ``tasks/clean.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from fvlp_core.config import CleanConfig, flow_config
from storage.results import ResultsStore
from storage.shards import dataset_fingerprint
from tasks.clean import (
    clean_writers_slot,
    decide_shards,
    format_stats,
    measure_shards,
    plan_clean,
    publish_stats,
    score_rules,
)
from tasks.clean_worker import measure_settings
from tasks.lineage import run_lineage


@flow(name="clean")
def clean_flow(config: CleanConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns ``{"run_id", "clean_dir", "input_rows", "kept", "rejected", ...}``.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(CleanConfig, config, data_root)
    # One run writes cleaning output at a time: an on-demand clean and the nightly re-clean
    # (or a pipeline's clean stage) on the same shards wait for each other.
    with clean_writers_slot():
        return _clean(config)


def _clean(config: CleanConfig) -> dict[str, Any]:
    logger = get_run_logger()
    jobs = plan_clean(config)
    store = ResultsStore(config.paths.results_store)
    with store.run(
        "clean",
        config=config.model_dump(mode="json"),
        dataset_fingerprint=dataset_fingerprint(config.paths.raw_dir),
        model_fingerprint=measure_settings(config).detector.identity,
        lineage=run_lineage(),
    ) as run_id:
        measured = measure_shards(config, jobs)
        summary = decide_shards(config, jobs)
        input_rows = sum(m["rows"] for m in measured)
        if summary["kept"] + summary["rejected"] != input_rows:
            raise AssertionError(f"kept {summary['kept']} + rejected {summary['rejected']} != {input_rows} input rows")
        stats = score_rules(config)
        print(format_stats(stats))
        publish_stats(stats)
        store.record_results(run_id, cleaning_stats=stats)
    logger.info("clean run %s: %d of %d rows kept", run_id, summary["kept"], input_rows)
    return {
        "run_id": run_id,
        "clean_dir": str(config.paths.clean_dir),
        "input_rows": input_rows,
        "kept": summary["kept"],
        "rejected": summary["rejected"],
        "remeasured_rows": sum(m["rows"] for m in measured if m["remeasured"]),
        "changed_rules": summary["changed_rules"],
        "changed_decisions": summary["changed_decisions"],
        "attribute_source": summary["attribute_source"],
        "caption_sources": summary["caption_sources"],
    }
