"""An analyst reading the results store in a loop while runs write to it.

The reader is a separate process opening the DuckDB file read-only over and over (what a
notebook or ``duckdb -readonly`` does). Every snapshot it takes must show each run's results
all-or-nothing, and the writer must finish every run: it waits out the reader's lock with
backoff. The bounded wait and its message are in
tests/test_results_store.py::test_writer_gives_up_with_clear_message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.results import ResultsStore

REPO = Path(__file__).resolve().parents[1]
RUNS = 6
METRICS_PER_RUN = 40
CURVE_STEPS = 25

READER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from storage.results import ResultsStore

    path, stop, metrics_per_run, curve_rows = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # A keen analyst: retries quickly while a writer holds the file.
    store = ResultsStore(path, lock_timeout_s=30, max_backoff_s=0.05)
    snapshots, violations, statuses = 0, [], set()
    while not stop.exists():
        rows = store.query(
            "SELECT r.run_id, r.status,"
            " (SELECT count(*) FROM metrics m WHERE m.run_id = r.run_id),"
            " (SELECT count(*) FROM curves c WHERE c.run_id = r.run_id),"
            " (SELECT count(*) FROM latest_metrics l WHERE l.run_id = r.run_id)"
            " FROM runs r"
        )
        snapshots += 1
        for run_id, status, metrics, curves, visible in rows:
            statuses.add(status)
            complete = (metrics, curves) == (metrics_per_run, curve_rows)
            empty = (metrics, curves) == (0, 0)
            if status == "finished" and not complete:
                violations.append([run_id, status, metrics, curves])
            if status == "running" and not (complete or empty):
                violations.append([run_id, status, metrics, curves])
            if status != "finished" and visible:
                violations.append([run_id, status, "unfinished run in latest_metrics"])
        if snapshots == 1:
            print("ready", flush=True)
        time.sleep(0.005)
    print(json.dumps({"snapshots": snapshots, "violations": violations, "statuses": sorted(statuses)}), flush=True)
""")


def _results(run: int) -> dict:
    return {
        "metrics": [
            {"split": "test", "variant": "sketch+text", "name": f"m{i}", "value": run + i / 100}
            for i in range(METRICS_PER_RUN)
        ],
        "curves": [
            {"variant": "sketch+text", "step": s, "metric": "acc_at_10", "value": s / CURVE_STEPS}
            for s in range(1, CURVE_STEPS + 1)
        ],
    }


@pytest.mark.slow
def test_reader_never_sees_partial_results_and_writer_always_finishes(tmp_path: Path):
    store = ResultsStore(tmp_path / "results.duckdb", lock_timeout_s=60)
    store.ensure_schema()
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store.path), str(stop), str(METRICS_PER_RUN), str(CURVE_STEPS)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "ready"
        finished = []
        for run in range(RUNS):
            with store.run("evaluate", model_fingerprint=f"model-{run % 3}") as run_id:
                time.sleep(0.1)  # the flow's work between opening its run and recording results
                store.record_results(run_id, **_results(run))
                time.sleep(0.1)
            finished.append(run_id)
        # A run that crashes after recording: its results must vanish with it, atomically.
        with pytest.raises(RuntimeError, match="crash after recording"):
            with store.run("evaluate", model_fingerprint="model-crash") as crashed:
                store.record_results(crashed, **_results(99))
                raise RuntimeError("crash after recording")
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["violations"] == []
    # The reader really interleaved with the writer: it caught runs while they were running.
    assert "running" in report["statuses"] and report["snapshots"] > RUNS, report

    counts = dict(store.query("SELECT run_id, count(*) FROM metrics GROUP BY run_id"))
    assert counts == {run_id: METRICS_PER_RUN for run_id in finished}
    assert store.query("SELECT status FROM runs WHERE run_id = ?", [crashed]) == [("failed",)]
