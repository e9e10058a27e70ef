"""Crash and resume with real process kills.

Each scenario runs the real code in a child process that SIGKILLs *itself* at a chosen
point (no exception handlers, ``finally`` blocks or atexit hooks run, exactly as when the
OOM killer or a pre-empted node ends a worker): half-way through writing a raw shard's
bytes, between a finished temp file and its rename, half-way through writing a training
checkpoint, inside an open DuckDB transaction, and after a DuckDB commit but before the
file was checkpointed; and a Dask worker dies as it starts measuring a shard. A re-run (or,
for the worker, Dask's retry) must then end with exactly the rows/weights/results of an
uninterrupted run: nothing lost, nothing twice, no half-written file left behind.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fvlp_core.config import IngestConfig, Paths, PretrainConfig
from storage.shards import list_shards, read_dataset, read_manifest, read_shard

REPO = Path(__file__).resolve().parents[1]
MICRO_MODEL = "fvlp-test-micro"
# A tiny open_clip config registered only in the training child (seconds per run on CPU).
MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# ----------------------------------------------------------------------------- the child side


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(owner, name: str, should_die, before_death=None) -> None:
    """Replace ``owner.name`` so the call for which ``should_die(*args)`` holds kills the process."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if should_die(*args, **kwargs):
            if before_death is not None:
                before_death(real, *args, **kwargs)
            _die()
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def _nth_call(n: int):
    calls = {"n": 0}

    def should_die(*args, **kwargs) -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return should_die


def _install_crash_point(point: str) -> None:
    """``point`` = ``<where>:<n>``; see the scenarios below for what each one interrupts."""
    where, _, n = point.partition(":")
    if where == "shard_bytes":  # the n-th shard file is half written when the process dies
        import pyarrow.parquet as pq

        import storage.shards

        def write_half(real, table, target, **kwargs):
            buffer = io.BytesIO()
            real(table, buffer, **kwargs)
            data = buffer.getvalue()
            with open(target, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())

        _kill_on_call(storage.shards.pq, "write_table", _nth_call(int(n)), write_half)
        assert storage.shards.pq is pq
    elif where == "rename":  # the temp file of <n> (a file name) is complete; the rename never happens
        import storage.files

        _kill_on_call(storage.files, "commit", lambda tmp, final: Path(final).name == n)
    elif where == "checkpoint_bytes":  # the n-th torch.save writes half its bytes, then the process dies
        import torch

        def save_half(real, obj, handle, **kwargs):
            buffer = io.BytesIO()
            real(obj, buffer, **kwargs)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())

        _kill_on_call(torch, "save", _nth_call(int(n)), save_half)
    elif where in ("duckdb_mid_transaction", "duckdb_after_commit"):
        import storage.results

        real_connect = storage.results.duckdb.connect
        calls = {"n": 0}

        class Connection:
            """A DuckDB connection that dies on the n-th write connection's curve insert or commit."""

            def __init__(self, conn, doomed: bool):
                self._conn, self._doomed = conn, doomed

            def __getattr__(self, name):
                return getattr(self._conn, name)

            def executemany(self, sql, rows):
                result = self._conn.executemany(sql, rows)
                if self._doomed and where == "duckdb_mid_transaction" and "INTO curves" in sql:
                    _die()  # metrics and curves inserted, transaction still open
                return result

            def execute(self, sql, *args):
                result = self._conn.execute(sql, *args)
                if self._doomed and where == "duckdb_after_commit" and sql == "COMMIT":
                    _die()  # committed, never closed: the data lives only in DuckDB's WAL
                return result

            def close(self):
                self._conn.close()

        def connect(path, read_only=False):
            conn = real_connect(path, read_only=read_only)
            if read_only:
                return conn
            calls["n"] += 1
            return Connection(conn, calls["n"] == int(n))

        storage.results.duckdb = type(sys)("duckdb_with_crash_point")
        storage.results.duckdb.__dict__.update(
            {k: getattr(__import__("duckdb"), k) for k in ("Error", "DuckDBPyConnection")}, connect=connect
        )
    else:
        raise ValueError(f"unknown crash point {point!r}")


def child_main(argv: list[str]) -> None:
    """``python -c 'from tests.test_crash_resume import child_main; ...' SCENARIO ARG [CRASH_POINT]``.

    Only light modules are imported at the top of this file, so a child starts fast.
    """
    scenario, argument, *crash = argv
    if crash:
        _install_crash_point(crash[0])
    if scenario == "ingest":
        from flows.ingest import ingest_flow

        ingest_flow(IngestConfig.model_validate_json(Path(argument).read_text()))
    elif scenario == "train":
        import open_clip

        open_clip.add_model_config(Path(argument).parent / "model_configs")
        from fvlp_train.__main__ import main

        main(["pretrain", "--config", argument])
    elif scenario == "results":
        from storage.results import ResultsStore

        store = ResultsStore(Path(argument))
        for run in range(3):
            config = {"run": run}
            # Like the pipeline: a run whose inputs already have a finished run is not repeated.
            if store.path.exists() and store.query(
                "SELECT count(*) FROM runs WHERE status = 'finished' AND config::VARCHAR = ?", [json.dumps(config)]
            ) != [(0,)]:
                continue
            with store.run("evaluate", config=config, model_fingerprint=f"model-{run}") as run_id:
                store.record_results(run_id, **_evaluation_results(run))
    else:
        raise ValueError(f"unknown scenario {scenario!r}")


def _evaluation_results(run: int) -> dict:
    return {
        "metrics": [
            {"split": "test", "variant": v, "name": n, "value": run + i / 10}
            for i, (v, n) in enumerate((v, n) for v in ("sketch", "sketch+text") for n in ("m_at_A", "wm_at_B"))
        ],
        "curves": [
            {"variant": "sketch+text", "step": s, "metric": "acc_at_10", "value": run + s / 10} for s in range(1, 11)
        ],
    }


# ----------------------------------------------------------------------------- the test side


def start_child(scenario: str, argument: Path, crash_point: str | None = None, env: dict | None = None):
    args = [
        sys.executable,
        "-c",
        "import sys; from tests.test_crash_resume import child_main; child_main(sys.argv[1:])",
        scenario,
        str(argument),
    ] + ([crash_point] if crash_point else [])
    return subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def finish_child(child: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def run_child(scenario: str, argument: Path, crash_point: str | None = None, env: dict | None = None):
    return finish_child(start_child(scenario, argument, crash_point, env))


def assert_killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, f"expected SIGKILL, got {done.returncode}\n{done.stderr[-3000:]}"


def only_final_files(folder: Path) -> list[str]:
    """Every file in ``folder``; a crashed writer's temp file would show up here."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def ingest_inputs(tmp_path_factory) -> tuple[Path, Path]:
    from tests.test_ingest import image_folder, laion_table, write

    base = tmp_path_factory.mktemp("ingest-inputs")
    ids = list(range(1, 12))
    metadata = write(laion_table(ids), base / "metadata.parquet")
    return metadata, image_folder(base / "images", ids)


def ingest_config(data_root: Path, inputs: tuple[Path, Path]) -> IngestConfig:
    metadata, images = inputs
    return IngestConfig(
        paths=Paths(data_root=data_root), source="folder", metadata=[metadata], images=images, shard_size=3
    )


@pytest.fixture(scope="module")
def uninterrupted_ingest(ingest_inputs, tmp_path_factory, prefect_harness) -> Path:
    """The raw folder of an ingest that ran start to end."""
    from flows.ingest import ingest_flow

    config = ingest_config(tmp_path_factory.mktemp("uninterrupted"), ingest_inputs)
    ingest_flow(config)
    return config.paths.raw_dir


@pytest.fixture(scope="module")
def child_env(prefect_harness) -> dict:
    """The child flow reports to the session's test Prefect server."""
    from prefect.settings import get_current_settings

    return {"PREFECT_API_URL": str(get_current_settings().api.url)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_point",
    ["shard_bytes:3", "rename:shard-00002.parquet", "rename:manifest.json"],
    ids=["mid-shard-write", "before-shard-rename", "before-manifest-rename"],
)
def test_killed_ingest_reruns_to_the_same_rows(
    tmp_path: Path, ingest_inputs, uninterrupted_ingest, child_env, crash_point: str
):
    from flows.ingest import ingest_flow

    config = ingest_config(tmp_path, ingest_inputs)
    config_path = tmp_path / "ingest.json"
    config_path.write_text(config.model_dump_json())
    assert_killed(run_child("ingest", config_path, crash_point, child_env))

    raw_dir = config.paths.raw_dir
    leftovers = [name for name in only_final_files(raw_dir) if ".tmp-" in name]
    assert leftovers, "the kill should have left the interrupted temp file behind"
    # What a reader sees after the crash: complete shards only, each identical to the uninterrupted one.
    survivors = list_shards(raw_dir)
    assert len(survivors) == (2 if crash_point != "rename:manifest.json" else 4)
    for shard in survivors:
        assert read_shard(shard).equals(read_shard(uninterrupted_ingest / shard.name))

    result = ingest_flow(config)
    assert result["written_shards"] == 4 - len(survivors)  # complete shards are not fetched again
    assert read_dataset(raw_dir).equals(read_dataset(uninterrupted_ingest))
    assert read_manifest(raw_dir) == read_manifest(uninterrupted_ingest)
    assert only_final_files(raw_dir) == only_final_files(uninterrupted_ingest)  # no temp file is left


def write_training_inputs(root: Path) -> Path:
    from tests.test_checkpoint_safety import write_face_pairs

    (root / "model_configs").mkdir(parents=True)
    (root / "model_configs" / f"{MICRO_MODEL}.json").write_text(json.dumps(MICRO_CONFIG))
    data_root = root / "data"
    write_face_pairs(data_root / "clean", rows=12)
    config = PretrainConfig(
        paths=Paths(data_root=data_root),
        model=MICRO_MODEL,
        run_id="r1",
        epochs=2,
        batch_size=4,
        checkpoint_every=1,
        queue_size=8,
        warmup_steps=1,
        device="cpu",
        holdout_fraction=0.2,
    )
    path = root / "pretrain.json"
    path.write_text(config.model_dump_json())
    return path


def final_state(config_path: Path) -> dict:
    from fvlp_core.checkpoint import load_checkpoint

    config = PretrainConfig.model_validate_json(config_path.read_text())
    return load_checkpoint(config.paths.checkpoints_dir / "pretrain" / "r1" / "checkpoint.pt")


@pytest.mark.slow
def test_training_killed_mid_checkpoint_write_resumes_to_identical_weights(tmp_path: Path):
    import torch

    uninterrupted = write_training_inputs(tmp_path / "uninterrupted")
    crashed = write_training_inputs(tmp_path / "crashed")
    # checkpoint_every=1: saves after steps 1, 2, 3 and the final one; die half-way through step 3's.
    reference, doomed = start_child("train", uninterrupted), start_child("train", crashed, "checkpoint_bytes:3")
    done = finish_child(reference)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = final_state(uninterrupted)
    assert_killed(finish_child(doomed))
    run = tmp_path / "crashed" / "data" / "checkpoints" / "pretrain" / "r1"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2  # the last complete one
    done = run_child("train", crashed)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = final_state(crashed)

    assert resumed["step"] == expected["step"] == expected["total_steps"]
    assert resumed["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert resumed["metrics"] == expected["metrics"]
    steps = [json.loads(line)["step"] for line in done.stdout.splitlines() if '"event": "step"' in line]
    assert steps == [3, 4]  # the resumed run redid only the step whose checkpoint was cut short
    assert (run.parent / "LATEST").read_text().strip() == "r1"
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name], "the half-written checkpoint was left behind"


def store_contents(path: Path) -> dict:
    """Finished runs' results keyed by their config (run ids and times differ between stores)."""
    from storage.results import ResultsStore

    store = ResultsStore(path)
    finished = dict(store.query("SELECT run_id, config FROM runs WHERE status = 'finished'"))
    contents = {}
    for run_id, config in finished.items():
        contents[config] = {
            table: sorted(store.query(f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = ?", [run_id]))
            for table in ("metrics", "curves", "cleaning_stats", "artifacts")
        }
    return contents


@pytest.mark.slow
@pytest.mark.parametrize("crash_point", ["duckdb_mid_transaction:4", "duckdb_after_commit:4"])
def test_killed_results_write_leaves_all_or_nothing_and_rerun_matches(tmp_path: Path, crash_point: str):
    from storage.results import ResultsStore

    uninterrupted = tmp_path / "uninterrupted.duckdb"
    done = run_child("results", uninterrupted)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = store_contents(uninterrupted)
    assert len(expected) == 3

    crashed = tmp_path / "crashed.duckdb"
    # Write connections: start and finish (with the results) of run 0, start of run 1, then
    # (the 4th) run 1's finish, which carries its results.
    assert_killed(run_child("results", crashed, crash_point))
    store = ResultsStore(crashed)
    runs = store.query(
        "SELECT status, (SELECT count(*) FROM metrics m WHERE m.run_id = r.run_id) FROM runs r ORDER BY started_at"
    )
    killed_mid_write = crash_point.startswith("duckdb_mid_transaction")
    if killed_mid_write:
        assert runs == [("finished", 4), ("running", 0)]  # the open transaction vanished whole
    else:
        assert runs == [("finished", 4), ("finished", 4)]  # the commit survived in the WAL

    done = run_child("results", crashed)
    assert done.returncode == 0, done.stderr[-3000:]
    # Finished runs are not repeated, the others are: three finished runs holding exactly the
    # uninterrupted results. The killed process's run is marked failed by the rerun.
    assert store.query("SELECT count(*) FROM runs WHERE status = 'finished'") == [(3,)]
    assert store_contents(crashed) == expected
    failed = store.query("SELECT error FROM runs WHERE status <> 'finished'")
    assert len(failed) == int(killed_mid_write)
    assert all("ended without finishing it" in error for (error,) in failed)


def kill_once_while_measuring(marker: Path, delay_s: float = 0.05):
    """A Dask worker plugin: the first worker to start measuring a shard SIGKILLs itself as it begins."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillOnceWhileMeasuring(WorkerPlugin):
        name = "fvlp-kill-once-while-measuring"

        def transition(self, key, start, finish, **kwargs) -> None:
            import threading

            if finish == "executing" and "measure_shard" in str(key) and not marker.exists():
                marker.write_text(str(os.getpid()))
                threading.Timer(delay_s, _die).start()

    return KillOnceWhileMeasuring()


@pytest.mark.slow
def test_dask_worker_killed_mid_shard_is_replaced_and_decisions_match(tmp_path: Path, prefect_harness):
    from distributed import Client, LocalCluster

    from flows.clean import clean_flow
    from fvlp_core.config import CleanConfig
    from storage.clean import read_decisions, read_faces
    from tests.clean_fixtures import PORTRAIT, bad_images, write_raw_shards

    shards = [
        [
            {"SAMPLE_ID": 1, "TEXT": "Portrait of a smiling man with short hair", "image": PORTRAIT.read_bytes()},
            {
                "SAMPLE_ID": 2,
                "TEXT": "Young woman with glasses reading outdoors",
                "image": bad_images()["truncated_png"],
            },
        ],
        [{"SAMPLE_ID": 3, "TEXT": "Elderly gentleman wearing a hat in the park", "image": bad_images()["png_bomb"]}],
    ]
    for root in ("uninterrupted", "killed"):
        write_raw_shards(tmp_path / root / "raw", shards)
    marker = tmp_path / "killed-worker-pid"
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):

        def config(root: str) -> CleanConfig:
            return CleanConfig(paths=Paths(data_root=tmp_path / root), dask_address=cluster.scheduler_address)

        expected = clean_flow(config("uninterrupted"))
        client.register_plugin(kill_once_while_measuring(marker))
        result = clean_flow(config("killed"))
        survivors = set(client.run(os.getpid).values())
    assert marker.exists() and int(marker.read_text()) not in survivors  # a worker really died mid-task
    for key in ("input_rows", "kept", "rejected"):
        assert result[key] == expected[key]
    for read in (read_decisions, read_faces):
        assert read(tmp_path / "killed" / "clean").equals(read(tmp_path / "uninterrupted" / "clean"))
    measurements = tmp_path / "killed" / "clean" / "measurements"
    assert not [p.name for p in measurements.iterdir() if ".tmp-" in p.name]
