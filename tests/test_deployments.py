"""prefect.yaml against a real local Prefect server, and `fvlp serve`'s reading of it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).parent / "prefect"
EXPECTED = {"pipeline", "ingest", "clean", "reclean-nightly", "pretrain", "episodes", "finetune", "evaluate"}


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
    }
    # the UI's run form: the flow's typed config, with field descriptions
    schema = by_name["pipeline"].parameter_openapi_schema
    assert schema["properties"]["config"]["$ref"].endswith("/PipelineConfig")
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
