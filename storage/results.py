"""The DuckDB results store: one file holding every run, its metrics, curves and artifacts.

Concurrency model. DuckDB allows one read-write process per file, and a read-only
process (an analyst's ``duckdb -readonly results.duckdb``) blocks writers while it is
open. So writers open the file only for the duration of one write and close it
straight after; when the file is locked they retry with exponential backoff and,
after ``lock_timeout_s``, raise :class:`ResultsStoreLocked` saying who to ask.

Consistency. Every write is one transaction. A run row goes ``running`` ->
``finished`` or ``failed``. Results recorded during a run are held by the
:class:`ResultsStore` that started it and written in the transaction that marks the run
finished, so result rows exist only for finished runs: a run that fails, or whose final
write cannot get the file, leaves none. A run left ``running`` by a process that died is
marked ``failed`` by the next run started on the same host (``owner`` records host, pid and
the process's start time, so a reused pid is not mistaken for it).

Schema (see also :data:`SCHEMA_SQL`)::

    runs(run_id PK, flow, config JSON, code_version, dataset_fingerprint,
         model_fingerprint, started_at, finished_at, status, error, owner,
         flow_run_id, parent_run_id)                       parent: the pipeline run of a stage
    metrics(run_id, split, variant, name, value)           one row per scalar
    curves(run_id, variant, step, metric, value)           evaluation: step = 1..T
    training_curves(run_id, step, metric, value)           per optimizer step: loss parts, lr, samples_per_s
    cleaning_stats(run_id, rule, kept, rejected, precision, recall)
    artifacts(run_id, kind, path)                          absolute paths

Fingerprints: models are ``sha256:<digest of the weights file>`` (what a training run wrote,
what an evaluation scored), so an evaluation joins the training run that made its model.

Views: ``latest_metrics`` (newest finished evaluation per model fingerprint),
``early_stage_by_variant`` (wm@B, m@B and acc@10 at 20 % of the episode per run and
variant), ``cleaning_yield`` (kept share and precision/recall per rule, newest clean run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id              VARCHAR PRIMARY KEY,
    flow                VARCHAR NOT NULL,
    config              JSON,
    code_version        VARCHAR,
    dataset_fingerprint VARCHAR,
    model_fingerprint   VARCHAR,
    started_at          TIMESTAMP NOT NULL,
    finished_at         TIMESTAMP,
    status              VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    error               VARCHAR,
    owner               VARCHAR,
    flow_run_id         VARCHAR,
    parent_run_id       VARCHAR
);
-- Stores written before runs had these columns.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS flow_run_id VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS parent_run_id VARCHAR;
CREATE TABLE IF NOT EXISTS metrics (
    run_id  VARCHAR NOT NULL REFERENCES runs (run_id),
    split   VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    name    VARCHAR NOT NULL,
    value   DOUBLE,
    PRIMARY KEY (run_id, split, variant, name)
);
CREATE TABLE IF NOT EXISTS curves (
    run_id  VARCHAR NOT NULL REFERENCES runs (run_id),
    variant VARCHAR NOT NULL,
    step    INTEGER NOT NULL,
    metric  VARCHAR NOT NULL,
    value   DOUBLE,
    PRIMARY KEY (run_id, variant, step, metric)
);
CREATE TABLE IF NOT EXISTS training_curves (
    run_id  VARCHAR NOT NULL REFERENCES runs (run_id),
    step    INTEGER NOT NULL,
    metric  VARCHAR NOT NULL,
    value   DOUBLE,
    PRIMARY KEY (run_id, step, metric)
);
CREATE TABLE IF NOT EXISTS cleaning_stats (
    run_id    VARCHAR NOT NULL REFERENCES runs (run_id),
    rule      VARCHAR NOT NULL,
    kept      BIGINT NOT NULL,
    rejected  BIGINT NOT NULL,
    precision DOUBLE,
    recall    DOUBLE,
    PRIMARY KEY (run_id, rule)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id VARCHAR NOT NULL REFERENCES runs (run_id),
    kind   VARCHAR NOT NULL,
    path   VARCHAR NOT NULL
);

-- Newest finished evaluation per model fingerprint (NULL fingerprints form one group).
CREATE OR REPLACE VIEW latest_metrics AS
WITH ranked AS (
    SELECT r.run_id, r.model_fingerprint, r.finished_at,
           row_number() OVER (PARTITION BY r.model_fingerprint ORDER BY r.finished_at DESC, r.run_id DESC) AS recency
    FROM runs r
    WHERE r.status = 'finished' AND r.flow = 'evaluate'
      AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = r.run_id)
)
SELECT ranked.model_fingerprint, ranked.run_id, ranked.finished_at,
       m.split, m.variant, m.name, m.value
FROM ranked JOIN metrics m USING (run_id)
WHERE ranked.recency = 1;

-- Early-stage retrieval per finished run and variant: wm@B (early steps weigh more),
-- m@B for contrast, and acc@10 at 20 % of the episode (step ceil(T/5)).
CREATE OR REPLACE VIEW early_stage_by_variant AS
WITH finished AS (
    SELECT run_id, model_fingerprint, finished_at FROM runs WHERE status = 'finished'
), episode_length AS (
    SELECT run_id, variant, max(step) AS steps FROM curves GROUP BY run_id, variant
)
SELECT f.run_id, f.model_fingerprint, f.finished_at, m.split, m.variant,
       max(m.value) FILTER (WHERE m.name = 'wm_at_B') AS wm_at_B,
       max(m.value) FILTER (WHERE m.name = 'm_at_B')  AS m_at_B,
       max(m.value) FILTER (WHERE m.name = 'wm_at_A') AS wm_at_A,
       any_value(c.value) AS acc_at_10_at_20pct
FROM finished f
JOIN metrics m USING (run_id)
JOIN episode_length e ON e.run_id = f.run_id AND e.variant = m.variant
LEFT JOIN curves c ON c.run_id = f.run_id AND c.variant = m.variant
     AND c.metric = 'acc_at_10' AND c.step = CAST(ceil(e.steps / 5.0) AS INTEGER)
GROUP BY f.run_id, f.model_fingerprint, f.finished_at, m.split, m.variant;

-- Cleaning yield per rule for the newest finished clean run.
CREATE OR REPLACE VIEW cleaning_yield AS
WITH newest AS (
    SELECT r.run_id, r.finished_at FROM runs r
    WHERE r.status = 'finished' AND EXISTS (SELECT 1 FROM cleaning_stats s WHERE s.run_id = r.run_id)
    ORDER BY r.finished_at DESC, r.run_id DESC LIMIT 1
)
SELECT s.run_id, n.finished_at, s.rule, s.kept, s.rejected,
       100.0 * s.kept / nullif(s.kept + s.rejected, 0) AS yield_pct,
       s.precision, s.recall
FROM cleaning_stats s JOIN newest n USING (run_id)
ORDER BY s.rule;
"""

# Columns each row kind must carry (precision/recall may be None).
ROW_FIELDS: dict[str, tuple[str, ...]] = {
    "metrics": ("split", "variant", "name", "value"),
    "curves": ("variant", "step", "metric", "value"),
    "training_curves": ("step", "metric", "value"),
    "cleaning_stats": ("rule", "kept", "rejected", "precision", "recall"),
    "artifacts": ("kind", "path"),
}
RESULT_TABLES = tuple(ROW_FIELDS)
# Columns that identify a row of each kind within a run (the tables' primary keys).
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "metrics": ("split", "variant", "name"),
    "curves": ("variant", "step", "metric"),
    "training_curves": ("step", "metric"),
    "cleaning_stats": ("rule",),
    "artifacts": (),
}


@dataclass(frozen=True)
class RunLineage:
    """The orchestrator's ids of a run: its own flow run, and the flow run that started it
    (a pipeline's stage). The parent's row is found by its ``flow_run_id``."""

    flow_run_id: str | None = None
    parent_flow_run_id: str | None = None


class ResultsStoreLocked(TimeoutError):
    """The DuckDB file stayed locked by another process for longer than the allowed wait."""


def code_version(repo: Path | None = None) -> str:
    """``git describe``-style version of the checked-out code (``unknown`` outside git)."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def new_run_id(flow: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{flow}-{stamp}-{uuid.uuid4().hex[:8]}"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None when no such
    process runs; "" where /proc is not there to ask."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc").is_dir() else ""
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[19]


def process_owner(pid: int | None = None) -> str:
    """``host:pid:start``: names the process running a run, surviving pid reuse."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or ''}"


def _owner_is_gone(owner: str | None) -> bool:
    """True only when ``owner`` ran on this host and that process no longer runs."""
    if not owner:
        return False
    host, pid, start = owner.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    now = _process_start(int(pid))
    return now is None or bool(start and now and now != start)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_error(err: duckdb.Error) -> bool:
    text = str(err)
    return "lock" in text.lower() and ("Could not set lock" in text or "Conflicting lock" in text)


@dataclass(frozen=True)
class ResultsStore:
    """Handle on one results file; holds no connection between calls."""

    path: Path
    lock_timeout_s: float = 60.0
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    # Results of the runs this object started, written when each run finishes.
    _pending: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- connections -------------------------------------------------------------------
    @contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file, retrying while another process holds its lock; always close it."""
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"results store {self.path} does not exist yet (no run has written to it)")
        deadline = time.monotonic() + self.lock_timeout_s
        delay = self.initial_backoff_s
        while True:
            try:
                conn = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.Error as err:
                if not _is_lock_error(err):
                    raise
                if time.monotonic() + delay > deadline:
                    raise ResultsStoreLocked(
                        f"results store {self.path} is locked by another process after waiting "
                        f"{self.lock_timeout_s:.0f}s (an open `duckdb -readonly` session or notebook "
                        f"blocks writers: close it and rerun). DuckDB said: {err}"
                    ) from err
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connect() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def ensure_schema(self) -> None:
        with self._transaction() as conn:
            conn.execute(SCHEMA_SQL)

    # -- runs ------------------------------------------------------------------------------
    def start_run(
        self,
        flow: str,
        config: Mapping[str, Any] | None = None,
        dataset_fingerprint: str | None = None,
        model_fingerprint: str | None = None,
        run_id: str | None = None,
        code_version_: str | None = None,
        lineage: RunLineage | None = None,
    ) -> str:
        run_id = run_id or new_run_id(flow)
        lineage = lineage or RunLineage()
        with self._transaction() as conn:
            conn.execute(SCHEMA_SQL)
            self._reconcile(conn)
            parent = (
                conn.execute(
                    "SELECT run_id FROM runs WHERE flow_run_id = ? ORDER BY started_at DESC LIMIT 1",
                    [lineage.parent_flow_run_id],
                ).fetchone()
                if lineage.parent_flow_run_id
                else None
            )
            conn.execute(
                "INSERT INTO runs (run_id, flow, config, code_version, dataset_fingerprint, model_fingerprint, "
                "started_at, status, owner, flow_run_id, parent_run_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                [
                    run_id,
                    flow,
                    json.dumps(config or {}, default=str, sort_keys=True),
                    code_version_ or code_version(),
                    dataset_fingerprint,
                    model_fingerprint,
                    _utcnow(),
                    process_owner(),
                    lineage.flow_run_id,
                    parent[0] if parent else None,
                ],
            )
        self._pending[run_id] = {table: [] for table in RESULT_TABLES}
        return run_id

    @staticmethod
    def _reconcile(conn: duckdb.DuckDBPyConnection) -> None:
        """Mark failed the runs whose process on this host died while they were running."""
        running = conn.execute("SELECT run_id, owner FROM runs WHERE status = 'running'").fetchall()
        for run_id, owner in running:
            if _owner_is_gone(owner):
                for table in RESULT_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                conn.execute(
                    "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE run_id = ?",
                    [_utcnow(), f"the process running it ({owner}) ended without finishing it", run_id],
                )

    def set_fingerprints(
        self, run_id: str, dataset_fingerprint: str | None = None, model_fingerprint: str | None = None
    ) -> None:
        """Fill in fingerprints known only once the run has resolved its inputs."""
        with self._transaction() as conn:
            self._require_running(conn, run_id)
            conn.execute(
                "UPDATE runs SET dataset_fingerprint = coalesce(?, dataset_fingerprint), "
                "model_fingerprint = coalesce(?, model_fingerprint) WHERE run_id = ?",
                [dataset_fingerprint, model_fingerprint, run_id],
            )

    def finish_run(self, run_id: str) -> None:
        """Write the run's recorded results and mark it finished, in one transaction."""
        pending = self._pending.get(run_id, {})
        with self._transaction() as conn:
            self._require_running(conn, run_id)
            for table, rows in pending.items():
                if rows:
                    marks = ", ".join("?" * (len(ROW_FIELDS[table]) + 1))
                    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", [[run_id, *row] for row in rows])
            conn.execute("UPDATE runs SET status = 'finished', finished_at = ? WHERE run_id = ?", [_utcnow(), run_id])
        self._pending.pop(run_id, None)

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark ``run_id`` failed; its recorded results are dropped (none reach the file)."""
        self._pending.pop(run_id, None)
        with self._transaction() as conn:
            for table in RESULT_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE run_id = ?",
                [_utcnow(), error[:4000], run_id],
            )

    @contextmanager
    def run(
        self,
        flow: str,
        config: Mapping[str, Any] | None = None,
        dataset_fingerprint: str | None = None,
        model_fingerprint: str | None = None,
        run_id: str | None = None,
        lineage: RunLineage | None = None,
    ) -> Iterator[str]:
        """A run row for the body: ``finished`` with its results if it returns, ``failed``
        (no results) if it raises. When even marking it failed cannot get the file, the row
        stays ``running`` without results until the next run started here reconciles it."""
        run_id = self.start_run(flow, config, dataset_fingerprint, model_fingerprint, run_id, lineage=lineage)
        try:
            yield run_id
            self.finish_run(run_id)
        except BaseException as err:
            try:
                self.fail_run(run_id, f"{type(err).__name__}: {err}")
            except ResultsStoreLocked as locked:
                err.add_note(f"run {run_id} could not be marked failed either: {locked}")
            raise

    @staticmethod
    def _require_running(conn: duckdb.DuckDBPyConnection, run_id: str) -> None:
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise KeyError(f"results store has no run {run_id!r}")
        if row[0] != "running":
            raise ValueError(f"run {run_id!r} is {row[0]}; results can only be added to a running run")

    # -- results ---------------------------------------------------------------------------
    def record_results(
        self,
        run_id: str,
        metrics: Sequence[Mapping[str, Any]] = (),
        curves: Sequence[Mapping[str, Any]] = (),
        cleaning_stats: Sequence[Mapping[str, Any]] = (),
        artifacts: Sequence[Mapping[str, Any]] = (),
        training_curves: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, int]:
        """Add rows to ``run_id`` (a run this store started and has not ended): all of them or,
        when one is malformed or repeats a key, none. They reach the file when the run finishes."""
        if run_id not in self._pending:
            raise ValueError(
                f"run {run_id!r} is not open in this store (finished, failed, or started by another "
                "process); results are recorded while the run that owns them is running"
            )
        batches = {
            "metrics": metrics,
            "curves": curves,
            "training_curves": training_curves,
            "cleaning_stats": cleaning_stats,
            # absolute: an analyst opens the store from anywhere
            "artifacts": [_absolute_path(row) for row in artifacts],
        }
        prepared = {table: [self._row(table, i, row) for i, row in enumerate(rows)] for table, rows in batches.items()}
        pending = self._pending[run_id]
        for table, rows in prepared.items():
            key_columns = [ROW_FIELDS[table].index(k) for k in KEY_FIELDS[table]]
            if not key_columns:
                continue
            seen = {tuple(row[c] for c in key_columns) for row in pending[table]}
            for index, row in enumerate(rows):
                key = tuple(row[c] for c in key_columns)
                if key in seen:
                    raise ValueError(
                        f"{table} row {index} repeats {dict(zip(KEY_FIELDS[table], key))} for run {run_id}"
                    )
                seen.add(key)
        for table, rows in prepared.items():
            pending[table].extend(rows)
        return {table: len(rows) for table, rows in prepared.items()}

    @staticmethod
    def _row(table: str, index: int, row: Mapping[str, Any]) -> list[Any]:
        fields = ROW_FIELDS[table]
        optional = {"precision", "recall"}
        missing = [f for f in fields if f not in row and f not in optional]
        unknown = sorted(set(row) - set(fields))
        if missing or unknown:
            raise ValueError(
                f"{table} row {index} ({dict(row)!r}): missing {missing or 'nothing'}, unknown {unknown or 'nothing'}"
            )
        return [row.get(f) for f in fields]

    # -- reading ---------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` on a read-only connection (opened and closed around the query)."""
        with self._connect(read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()

    def query_df(self, sql: str, params: Sequence[Any] | None = None):
        """Like :meth:`query`, as a pandas DataFrame."""
        with self._connect(read_only=True) as conn:
            return conn.execute(sql, params or []).df()


def _absolute_path(row: Mapping[str, Any]) -> Mapping[str, Any]:
    return {**row, "path": str(Path(row["path"]).resolve())} if "path" in row else row
