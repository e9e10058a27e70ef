"""The DuckDB results store: schema, views, one-transaction writes, failed runs, lock handling."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from storage.results import ResultsStore, ResultsStoreLocked

ANALYST_QUERIES = Path(__file__).resolve().parents[1] / "docs" / "analyst_queries.sql"


def _evaluation_rows(wm_b: float) -> dict:
    metrics = [
        {"split": "test", "variant": variant, "name": name, "value": value}
        for variant in ("sketch", "sketch+text")
        for name, value in (("m_at_A", 90.0), ("m_at_B", 40.0), ("wm_at_A", 55.0), ("wm_at_B", wm_b))
    ]
    curves = [
        {"variant": variant, "step": step, "metric": "acc_at_10", "value": float(step * 10)}
        for variant in ("sketch", "sketch+text")
        for step in range(1, 11)
    ]
    return {"metrics": metrics, "curves": curves, "artifacts": [{"kind": "plot", "path": "/tmp/curve.png"}]}


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "results.duckdb", lock_timeout_s=2.0)


def test_schema_has_documented_tables_and_views(store: ResultsStore) -> None:
    store.ensure_schema()
    names = {row[0] for row in store.query("SELECT table_name FROM information_schema.tables")}
    assert {"runs", "metrics", "curves", "training_curves", "cleaning_stats", "artifacts"} <= names
    assert {"latest_metrics", "early_stage_by_variant", "cleaning_yield"} <= names
    columns = [
        row[0]
        for row in store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' ORDER BY ordinal_position"
        )
    ]
    assert columns == [
        "run_id",
        "flow",
        "config",
        "code_version",
        "dataset_fingerprint",
        "model_fingerprint",
        "started_at",
        "finished_at",
        "status",
        "error",
        "owner",
        "flow_run_id",
        "parent_run_id",
    ]


def test_finished_run_is_visible_in_views(store: ResultsStore) -> None:
    with store.run("evaluate", config={"split": "test"}, model_fingerprint="model-a") as old:
        store.record_results(old, **_evaluation_rows(wm_b=10.0))
    with store.run("evaluate", config={"split": "test"}, model_fingerprint="model-a") as new:
        store.record_results(new, **_evaluation_rows(wm_b=20.0))

    status, config, finished = store.query(
        "SELECT status, config->>'split', finished_at FROM runs WHERE run_id = ?", [new]
    )[0]
    assert (status, config) == ("finished", "test") and finished is not None

    latest = store.query("SELECT DISTINCT run_id FROM latest_metrics WHERE model_fingerprint = 'model-a'")
    assert latest == [(new,)]
    early = store.query(
        "SELECT variant, wm_at_B, acc_at_10_at_20pct FROM early_stage_by_variant WHERE run_id = ? ORDER BY variant",
        [new],
    )
    # T = 10 curve steps, so 20 % of the episode is step 2 (value 20).
    assert early == [("sketch", 20.0, 20.0), ("sketch+text", 20.0, 20.0)]


def test_cleaning_yield_view(store: ResultsStore) -> None:
    with store.run("clean") as run_id:
        store.record_results(
            run_id,
            cleaning_stats=[
                {"rule": "face_size", "kept": 75, "rejected": 25, "precision": 0.9, "recall": 0.8},
                {"rule": "language", "kept": 50, "rejected": 50},
            ],
        )
    rows = store.query("SELECT rule, yield_pct, precision, recall FROM cleaning_yield")
    assert rows == [("face_size", 75.0, 0.9, 0.8), ("language", 50.0, None, None)]


def test_bad_row_writes_nothing(store: ResultsStore) -> None:
    with store.run("evaluate") as run_id:
        rows = _evaluation_rows(wm_b=1.0)
        rows["curves"].append({"variant": "sketch", "stepp": 3, "metric": "acc_at_1", "value": 1.0})
        with pytest.raises(ValueError, match="curves row 20"):
            store.record_results(run_id, **rows)
        # A repeated key is refused with the whole batch, naming the row.
        duplicate = _evaluation_rows(wm_b=1.0)
        duplicate["curves"] = duplicate["curves"] + duplicate["curves"][:1]
        with pytest.raises(ValueError, match="curves row 20 repeats"):
            store.record_results(run_id, **duplicate)
        store.record_results(run_id, **_evaluation_rows(wm_b=1.0))
        # Nothing reaches the file before the run finishes.
        assert store.query("SELECT count(*) FROM metrics")[0][0] == 0
    expected = {table: len(rows) for table, rows in _evaluation_rows(wm_b=1.0).items()}
    for table, count in expected.items():
        assert store.query(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id])[0][0] == count, table


def test_crash_leaves_failed_run_and_no_results(store: ResultsStore) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with store.run("evaluate") as run_id:
            store.record_results(run_id, **_evaluation_rows(wm_b=5.0))
            raise RuntimeError("boom")
    assert store.query("SELECT status, error FROM runs WHERE run_id = ?", [run_id]) == [
        ("failed", "RuntimeError: boom")
    ]
    for table in ("metrics", "curves", "artifacts", "latest_metrics", "early_stage_by_variant"):
        assert store.query(f"SELECT count(*) FROM {table}")[0][0] == 0, table
    with pytest.raises(ValueError, match="is not open in this store"):
        store.record_results(run_id, **_evaluation_rows(wm_b=5.0))


def test_a_final_write_the_reader_blocks_leaves_no_results_and_is_reconciled(tmp_path: Path) -> None:
    """An analyst holding the file past the writer's patience: the run's results never appear
    beside a `running` row, and once that process is gone the next run marks it failed."""
    path = tmp_path / "results.duckdb"
    code = textwrap.dedent(f"""
        import sys
        from storage.results import ResultsStore
        store = ResultsStore({str(path)!r}, lock_timeout_s=0.5)
        with store.run("evaluate", run_id="blocked") as run_id:
            row = {{"split": "test", "variant": "sketch", "name": "m_at_B", "value": 1.0}}
            store.record_results(run_id, metrics=[row])
            print("recorded", flush=True)
            sys.stdin.readline()  # the test opens a reader here
    """)
    writer = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "recorded"
    reader = _hold_read_only(path, seconds=30)
    try:
        writer.stdin.write("\n")
        writer.stdin.flush()
        _, err = writer.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait()
    assert writer.returncode != 0 and "ResultsStoreLocked" in err and "could not be marked failed either" in err

    store = ResultsStore(path)
    assert store.query("SELECT status FROM runs WHERE run_id = 'blocked'") == [("running",)]
    assert store.query("SELECT count(*) FROM metrics")[0][0] == 0
    store.start_run("evaluate")  # the next writer reconciles the dead process's run
    status, error = store.query("SELECT status, error FROM runs WHERE run_id = 'blocked'")[0]
    assert status == "failed" and "ended without finishing it" in error


def test_a_running_run_of_a_live_process_is_left_alone(store: ResultsStore) -> None:
    first = store.start_run("clean")
    store.start_run("evaluate")
    assert store.query("SELECT status FROM runs WHERE run_id = ?", [first]) == [("running",)]


def _hold_read_only(path: Path, seconds: float) -> subprocess.Popen:
    """An 'analyst' process holding the file read-only for ``seconds``."""
    code = textwrap.dedent(f"""
        import duckdb, sys, time
        conn = duckdb.connect({str(path)!r}, read_only=True)
        print("open", flush=True)
        time.sleep({seconds})
        conn.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_writer_waits_for_reader_then_succeeds(store: ResultsStore) -> None:
    store.ensure_schema()
    reader = _hold_read_only(store.path, seconds=0.5)
    try:
        run_id = store.start_run("evaluate")  # retries until the reader lets go
    finally:
        reader.wait()
    assert store.query("SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("running",)]


def test_writer_gives_up_with_clear_message(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.duckdb", lock_timeout_s=0.3)
    store.ensure_schema()
    reader = _hold_read_only(store.path, seconds=5)
    try:
        with pytest.raises(ResultsStoreLocked, match="locked by another process.*-readonly"):
            store.start_run("evaluate")
    finally:
        reader.kill()
        reader.wait()


def _analyst_snippets() -> list[str]:
    text = ANALYST_QUERIES.read_text()
    return [
        s.strip()
        for s in text.split(";")
        if any(line.strip() and not line.strip().startswith("--") for line in s.splitlines())
    ]


def test_analyst_guide_queries_run_as_written(store: ResultsStore) -> None:
    with store.run("clean") as clean_id:
        store.record_results(clean_id, cleaning_stats=[{"rule": "face_size", "kept": 3, "rejected": 1}])
    with store.run("finetune", model_fingerprint="sha256:m", dataset_fingerprint="episodes") as train_id:
        curve = [{"step": s, "metric": k, "value": v} for s in (1, 2) for k, v in (("loss", 2.0 / s), ("lr", 1e-4))]
        store.record_results(train_id, training_curves=curve)
    for wm_b in (7.0, 9.0):
        with store.run("evaluate", model_fingerprint="sha256:m") as eval_id:
            store.record_results(eval_id, **_evaluation_rows(wm_b=wm_b))
    with store.run("practice", {"photo_id": "p1"}, model_fingerprint="sha256:m") as practice_id:
        store.record_results(
            practice_id,
            metrics=[{"split": "practice", "variant": "human", "name": "m_at_B", "value": 50.0}],
            curves=[{"variant": "human", "step": s, "metric": "rank", "value": float(3 - s)} for s in (1, 2)],
        )
    snippets = _analyst_snippets()
    assert len(snippets) >= 11
    conn = duckdb.connect(str(store.path), read_only=True)
    try:
        results = [conn.execute(sql).fetchall() for sql in snippets]
    finally:
        conn.close()
    assert all(rows for rows in results), [sql for sql, rows in zip(snippets, results) if not rows]
    compared, loss_curve, provenance = results[7], results[8], results[9]
    assert ("test", "sketch", "wm_at_B", 7.0, 9.0, 2.0) in compared
    assert [(step, loss) for step, _, loss, *_ in loss_curve] == [(1, 2.0), (2, 1.0)]
    assert {row[7] for row in provenance} == {train_id}  # the training run that wrote the scored weights
    assert [(row[1], row[5], row[6]) for row in results[10]] == [("p1", 50.0, [2, 1])]  # a human episode


def test_the_analyst_cli_is_pinned_to_the_version_that_writes_the_store():
    """A DuckDB CLI older than the writer cannot open its files ("can only read" older storage)."""
    constraints = (Path(__file__).resolve().parents[1] / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in constraints if "==" in line)
    assert pins["duckdb-cli"] == pins["duckdb"] == duckdb.__version__
