"""`fvlp status`: the last runs in the results store, newest first (read-only).

Failed runs show the error they stored, which names the offending record or shard;
finished runs show their flow's headline (see :func:`recent_runs`).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from fvlp_core.config import ConfigError, Paths, resolve_config
from storage.results import ResultsStore

RECENT_RUNS_SQL = """
SELECT run_id, flow, status, started_at, finished_at, error
FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?
"""
LABELS = {"m_at_A": "m@A", "m_at_B": "m@B"}
RUN_METRICS_SQL = """
SELECT run_id, split, variant, name, value FROM metrics
WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, variant, name
"""
CLEAN_TOTALS_SQL = """
SELECT run_id, kept, rejected FROM cleaning_stats
WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND rule = 'all_rules'
"""
# Per flow: the metrics (split, name) that make its one-line result, and how each is labelled.
HEADLINE_METRICS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "pretrain": (
        ("heldout", "heldout_t2i_r_at_1", "held-out text->image R@1 {:.1f}"),
        ("heldout", "chance_r_at_1", "(chance {:.1f})"),
        ("heldout", "heldout_itm_accuracy", "ITM acc {:.1f}"),
    ),
    "finetune": (("validation", "m_at_B", "validation m@B {:.2f}"), ("validation", "selected_epoch", "epoch {:.0f}")),
}


def recent_runs(store: ResultsStore, limit: int = 10, split: str = "test") -> list[dict[str, Any]]:
    """The newest ``limit`` runs, each with ``headline``: what the run produced (m@A/m@B per
    variant for evaluations, rows fetched for ingest, kept rows for clean, held-out retrieval
    for pretraining, the selected epoch for fine-tuning, stages reused for the pipeline) or
    the error of a failed run."""
    runs = [
        dict(zip(("run_id", "flow", "status", "started_at", "finished_at", "error"), row))
        for row in store.query(RECENT_RUNS_SQL, [limit])
    ]
    ids = [r["run_id"] for r in runs]
    metrics: dict[str, list[tuple[str, str, str, float]]] = {}
    for run_id, *row in store.query(RUN_METRICS_SQL, [ids]):
        metrics.setdefault(run_id, []).append(tuple(row))  # type: ignore[arg-type]
    cleaned = {run_id: (kept, rejected) for run_id, kept, rejected in store.query(CLEAN_TOTALS_SQL, [ids])}
    for run in runs:
        if run["status"] == "failed":
            run["headline"] = run["error"] or ""
        else:
            run["headline"] = _headline(run["flow"], metrics.get(run["run_id"], []), cleaned.get(run["run_id"]), split)
    return runs


def _headline(
    flow: str, metrics: list[tuple[str, str, str, float]], cleaned: tuple[int, int] | None, split: str
) -> str:
    if flow == "evaluate":
        by_variant: dict[str, dict[str, float]] = {}
        for metric_split, variant, name, value in metrics:
            if metric_split == split and name in LABELS:
                by_variant.setdefault(variant, {})[name] = value
        return "; ".join(
            f"{variant} " + " ".join(f"{LABELS[name]} {value:.2f}" for name, value in sorted(values.items()))
            for variant, values in sorted(by_variant.items())
        )
    if flow == "clean" and cleaned:
        kept, rejected = cleaned
        return f"kept {kept} of {kept + rejected} rows"
    if flow == "ingest":
        counts = {name: int(value) for _, variant, name, value in metrics if variant == "fetch_status"}
        listed = ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"{sum(counts.values())} rows: {listed}" if counts else ""
    if flow == "pipeline":
        reused = [variant for _, variant, name, value in metrics if name == "reused" and value]
        return f"reused {len(reused)} of {len(metrics)} stages" + (f" ({', '.join(reused)})" if reused else "")
    values = {(metric_split, name): value for metric_split, _, name, value in metrics}
    return " ".join(
        label.format(values[(metric_split, name)])
        for metric_split, name, label in HEADLINE_METRICS.get(flow, ())
        if (metric_split, name) in values
    )


def _duration(started: datetime, finished: datetime | None) -> str:
    return f"{(finished - started).total_seconds():.0f}s" if finished else "-"


def format_runs(runs: list[dict[str, Any]]) -> str:
    header = ("started (UTC)", "flow", "status", "took", "run id", "result")
    rows = [
        (
            f"{r['started_at']:%Y-%m-%d %H:%M:%S}",
            r["flow"],
            r["status"],
            _duration(r["started_at"], r["finished_at"]),
            r["run_id"],
            r["headline"],
        )
        for r in runs
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + str(row[-1])
        for row in [header, *rows]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fvlp status", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, help="Data root (default: FVLP_DATA_ROOT or ./fvlp-data)")
    parser.add_argument("--results-path", type=Path, help="Results store (default: <data-root>/results.duckdb)")
    parser.add_argument("--limit", type=int, default=10, help="How many runs to show")
    parser.add_argument("--split", default="test", help="Split whose metrics make the headline")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"data_root": args.data_root, "results_path": args.results_path}.items() if v}
    try:
        store = ResultsStore(resolve_config(Paths, overrides).results_store)
        runs = recent_runs(store, args.limit, args.split)
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    print(format_runs(runs) if runs else f"no runs in {store.path} yet")
    return 0
