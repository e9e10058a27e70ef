"""prefect.yaml against a real local Prefect server, and `fvlp serve`'s reading of it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).parent / "prefect"
EXPECTED = {"pipeline", "ingest", "clean", "reclean-nightly", "pretrain", "episodes", "finetune", "evaluate", "index"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_server(tmp_path):
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME; yields the CLI environment."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _prefect(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(PREFECT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def _read_deployments(api_url: str):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        deployments = await client.read_deployments()
        flows = {f.id: f.name for f in await client.read_flows()}
        queue = await client.read_work_queue_by_name("clean-writers", work_pool_name="fvlp-cpu")
        return deployments, flows, queue


@pytest.mark.slow
def test_prefect_deploy_registers_every_deployment_on_a_local_server(local_server):
    _prefect(local_server, "work-pool", "create", "fvlp-cpu", "--type", "process")
    _prefect(local_server, "work-pool", "create", "fvlp-gpu", "--type", "process")
    _prefect(local_server, "work-queue", "create", "clean-writers", "--pool", "fvlp-cpu", "--limit", "1")
    _prefect(local_server, "--no-prompt", "deploy", "--all")

    deployments, flows, queue = asyncio.run(_read_deployments(local_server["PREFECT_API_URL"]))
    by_name = {d.name: d for d in deployments}
    assert set(by_name) == EXPECTED

    nightly = by_name["reclean-nightly"]
    assert flows[nightly.flow_id] == flows[by_name["clean"].flow_id]  # the same clean flow, scheduled
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
    assert all(not by_name[name].schedules for name in EXPECTED - {"reclean-nightly"})

    # cleaning never runs twice at once: per deployment and through their shared queue
    for name in ("clean", "reclean-nightly", "pipeline"):
        assert by_name[name].global_concurrency_limit.limit == 1
        assert by_name[name].concurrency_options.collision_strategy.value == "ENQUEUE"
    assert {by_name[n].work_queue_name for n in ("clean", "reclean-nightly")} == {"clean-writers"}
    assert queue.concurrency_limit == 1

    assert {n for n, d in by_name.items() if d.work_pool_name == "fvlp-gpu"} == {
        "pipeline",
        "pretrain",
        "finetune",
        "evaluate",
        "index",
    }
    # the UI's run form: one data root (`--param data_root=...` works), and the flow's typed
    # config, with field descriptions
    schema = by_name["pipeline"].parameter_openapi_schema
    assert "FVLP_DATA_ROOT" in schema["properties"]["data_root"]["description"]
    assert schema["properties"]["config"]["anyOf"][0]["$ref"].endswith("/PipelineConfig")
    assert "refresh" in schema["definitions"]["PipelineConfig"]["properties"]
    # no remote storage: runs start in this checkout
    assert by_name["evaluate"].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]


def test_serve_builds_the_same_deployments_from_prefect_yaml():
    from flows.serve import load_deployments

    deployments = {d.name: d for d in load_deployments()}
    assert set(deployments) == EXPECTED
    nightly = deployments["reclean-nightly"]
    assert nightly.flow_name == deployments["clean"].flow_name
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert deployments["clean"].concurrency_limit == 1
    assert deployments["clean"].concurrency_options.collision_strategy.value == "ENQUEUE"
    assert deployments["ingest"].concurrency_limit is None


def test_serve_names_an_unknown_deployment():
    from flows.serve import load_deployments

    with pytest.raises(ValueError, match=r"no deployment \['nightly'\]"):
        load_deployments(names=["nightly"])


async def _run_both_and_wait(api_url: str, names: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    """Start a run of each deployment at once (no parameters: what a cron or a bare
    `prefect deployment run` sends) and wait for all of them to end."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        deadline = time.monotonic() + timeout_s
        while True:  # `fvlp serve` registers the deployments once it is up
            found = {d.name: d for d in await client.read_deployments()}
            if set(names) <= set(found):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployments {names} never registered; found {sorted(found)}")
            await asyncio.sleep(1)
        runs = [await client.create_flow_run_from_deployment(found[name].id) for name in names]
        while True:
            states = [(await client.read_flow_run(run.id)).state for run in runs]
            if all(state.is_final() for state in states):
                return {"deployments": found, "states": dict(zip(names, states))}
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still going: {states}")
            await asyncio.sleep(2)


@pytest.mark.slow
def test_under_fvlp_serve_an_on_demand_clean_and_the_nightly_take_turns_in_the_env_data_root(local_server, tmp_path):
    """The two cleaning deployments started together: both finish, one after the other (the
    global concurrency limit in the flow), in the data root of serve's FVLP_DATA_ROOT, not
    in <serve's cwd>/fvlp-data."""
    from storage.results import ResultsStore
    from tests.clean_fixtures import PORTRAIT, group_faces, jpeg, write_raw_shards

    root = tmp_path / "served-root"
    rows = [
        {"SAMPLE_ID": 1, "TEXT": "Tom Hanks at the premiere of his new film", "image": PORTRAIT.read_bytes()},
        {"SAMPLE_ID": 2, "TEXT": "Portrait of a smiling woman at a party", "image": jpeg(group_faces()[0])},
    ]
    write_raw_shards(root / "raw", [rows])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**local_server, "FVLP_DATA_ROOT": str(root), "FVLP_WORKERS": "1"}
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "fvlp"), "serve", "clean", "reclean-nightly"],
        cwd=elsewhere,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        done = asyncio.run(_run_both_and_wait(env["PREFECT_API_URL"], ("clean", "reclean-nightly"), 420))
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        log.close()
    served_log = (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
    assert all(state.is_completed() for state in done["states"].values()), (done["states"], served_log)
    assert done["deployments"]["clean"].parameters["data_root"] == str(root)  # absolute, in the form
    assert not (elsewhere / "fvlp-data").exists()
    spans = ResultsStore(root / "results.duckdb").query(
        "SELECT started_at, finished_at FROM runs WHERE flow = 'clean' ORDER BY started_at"
    )
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], spans  # the second waited for the first to finish
