"""`fvlp status`: the last runs in the results store, newest first (read-only).

Failed runs show the error they stored, which names the offending record or shard;
finished evaluations show their headline m@A / m@B per variant.
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
HEADLINE_SQL = """
SELECT run_id, variant, name, value FROM metrics
WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND split = ? AND name IN ('m_at_A', 'm_at_B')
ORDER BY run_id, variant, name
"""


def recent_runs(store: ResultsStore, limit: int = 10, split: str = "test") -> list[dict[str, Any]]:
    """The newest ``limit`` runs, each with ``headline``: m@A/m@B per variant or the error."""
    runs = [
        dict(zip(("run_id", "flow", "status", "started_at", "finished_at", "error"), row))
        for row in store.query(RECENT_RUNS_SQL, [limit])
    ]
    headlines: dict[str, dict[str, dict[str, float]]] = {}
    for run_id, variant, name, value in store.query(HEADLINE_SQL, [[r["run_id"] for r in runs], split]):
        headlines.setdefault(run_id, {}).setdefault(variant, {})[name] = value
    for run in runs:
        if run["status"] == "failed":
            run["headline"] = run["error"] or ""
        else:
            run["headline"] = "; ".join(
                f"{variant} " + " ".join(f"{LABELS[name]} {value:.2f}" for name, value in sorted(values.items()))
                for variant, values in sorted(headlines.get(run["run_id"], {}).items())
            )
    return runs


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
