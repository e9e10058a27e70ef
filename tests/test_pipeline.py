"""The pipeline flow: stage order, references between stages, reuse of finished stages.

The fast tests swap the six stage flows for small Prefect flows that write a file
and count their calls, so the orchestration (subflows in cached tasks, the
references passed on, the resume after a failure) is checked in seconds. The slow
test runs the real stages end to end on a tiny embedded corpus.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect import flow

import flows.pipeline as pipeline
from fvlp_core.codec import encode_png
from fvlp_core.config import PipelineConfig, resolve_config
from storage.results import ResultsStore
from tasks.train import SHARING_CPU

STAGES = ["ingest", "clean", "pretrain", "episodes", "finetune", "evaluate"]
# Pretraining and the episodes build read only the clean stage's outputs: they run at once,
# so their relative order is not fixed.
CONCURRENT = {"pretrain", "episodes"}


def _config(data_root: Path, **overrides: Any) -> PipelineConfig:
    paths = {"paths": {"data_root": str(data_root)}}
    values = {stage: {**paths, **overrides.get(stage, {})} for stage in STAGES}
    return resolve_config(PipelineConfig, {**values, **{k: v for k, v in overrides.items() if k not in STAGES}})


class FakeStages:
    """Stand-in stage flows; each writes one output and returns the contract's keys."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        # Whether each stage's training children would find the CPU shared with another stage.
        self.sharing_cpu: dict[str, bool] = {}
        self.fail_once: set[str] = set()
        # When set, passed only when pretraining and the episodes build are in their flows together.
        self.together: threading.Barrier | None = None

    def _output(self, config: Any, name: str) -> Path:
        path = Path(config.paths.data_root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
        return path

    def flows(self) -> dict[str, Any]:
        def stage(name: str, body):
            @flow(name=f"fake-{name}")
            def run(config):
                self.calls.append((name, config))
                self.sharing_cpu[name] = SHARING_CPU.get()
                if name in CONCURRENT and self.together is not None:
                    self.together.wait()
                if name in self.fail_once:
                    self.fail_once.discard(name)
                    raise RuntimeError(f"{name}: shard-00001.parquet row 7 (SAMPLE_ID 1007) is not an image")
                return body(config)

            return run

        return {
            "ingest": stage(
                "ingest", lambda c: {"raw_dir": str(self._output(c, "raw/shard-00000.parquet").parent), "rows": 10}
            ),
            "clean": stage(
                "clean", lambda c: {"run_id": "clean-1", "clean_dir": str(self._output(c, "clean/decisions"))}
            ),
            "pretrain": stage(
                "pretrain",
                lambda c: {"run_id": f"pre-{c.seed}", "checkpoint": str(self._output(c, f"ckpt/pre-{c.seed}.pt"))},
            ),
            "episodes": stage(
                "episodes", lambda c: {"episodes_dir": str(self._output(c, "episodes/manifest.json").parent)}
            ),
            "finetune": stage(
                "finetune", lambda c: {"run_id": "ft-1", "checkpoint": str(self._output(c, "ckpt/ft.pt"))}
            ),
            "evaluate": stage("evaluate", lambda c: {"run_id": "ev-1", "metrics": {"m_at_A": 90.0}}),
        }


@pytest.fixture
def fake_stages(monkeypatch):
    fakes = FakeStages()
    monkeypatch.setattr(pipeline, "STAGE_FLOWS", fakes.flows())
    return fakes


def subflow_names(pipeline_run_id) -> list[str]:
    """Names of the pipeline run's subflows, in start order, as the Prefect API records them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_run_id])),
                sort=FlowRunSort.START_TIME_ASC,
            )
            flows = {f.id: f.name for f in await client.read_flows()}
            return [flows[run.flow_id] for run in runs]

    return asyncio.run(read())


def in_stage_order(started: list[str]) -> list[str]:
    """Stage (or ``fake-`` stage flow) names in start order, the concurrent stages (either may
    start first) put in STAGES order where they stand."""

    def stage(name: str) -> str:
        return name.removeprefix("fake-")

    concurrent = sorted((name for name in started if stage(name) in CONCURRENT), key=lambda n: STAGES.index(stage(n)))
    return [concurrent.pop(0) if stage(name) in CONCURRENT else name for name in started]


def _ran(fakes: FakeStages) -> list[str]:
    """Stages run since the last call, in start order (see :func:`in_stage_order`)."""
    ran = in_stage_order([name for name, _ in fakes.calls])
    fakes.calls.clear()
    return ran


def test_stages_run_in_order_and_rerun_only_when_their_inputs_change(prefect_harness, fake_stages, tmp_path):
    fake_stages.together = threading.Barrier(len(CONCURRENT), timeout=30)
    state = pipeline.pipeline_flow(_config(tmp_path), return_state=True)
    first = state.result()
    fake_stages.together = None
    configs = dict(fake_stages.calls)
    assert _ran(fake_stages) == STAGES
    assert in_stage_order(subflow_names(state.state_details.flow_run_id)) == [f"fake-{stage}" for stage in STAGES]
    assert first["reused"] == []
    # Only the wave of two stages shares the CPU: the others' training children may spin-wait.
    assert fake_stages.sharing_cpu == {stage: stage in CONCURRENT for stage in STAGES}
    # references, not data, flow down: each training stage gets the checkpoint above it
    assert configs["finetune"].pretrained_checkpoint == Path(first["pretrain"]["checkpoint"])
    assert configs["evaluate"].checkpoint == Path(first["finetune"]["checkpoint"])
    assert configs["finetune"].episodes == configs["evaluate"].episodes == Path(first["episodes"]["episodes_dir"])
    assert first["evaluate"] == {"run_id": "ev-1", "metrics": {"m_at_A": 90.0}}

    second = pipeline.pipeline_flow(_config(tmp_path))
    assert _ran(fake_stages) == []
    assert second["reused"] == STAGES
    assert {s: second[s] for s in STAGES} == {s: first[s] for s in STAGES}

    changed = pipeline.pipeline_flow(_config(tmp_path, pretrain={"seed": 1}))
    assert _ran(fake_stages) == ["pretrain", "finetune", "evaluate"]
    assert changed["reused"] == ["ingest", "clean", "episodes"]

    refreshed = pipeline.pipeline_flow(_config(tmp_path, pretrain={"seed": 1}, refresh=True))
    assert _ran(fake_stages) == STAGES
    assert refreshed["reused"] == []


def test_interrupted_pipeline_resumes_at_the_failed_stage(prefect_harness, fake_stages, tmp_path):
    fake_stages.fail_once.add("finetune")
    with pytest.raises(RuntimeError, match=r"shard-00001.parquet row 7 \(SAMPLE_ID 1007\)"):
        pipeline.pipeline_flow(_config(tmp_path))
    assert _ran(fake_stages) == ["ingest", "clean", "pretrain", "episodes", "finetune"]

    resumed = pipeline.pipeline_flow(_config(tmp_path))
    assert _ran(fake_stages) == ["finetune", "evaluate"]
    assert resumed["reused"] == ["ingest", "clean", "pretrain", "episodes"]

    # a cached stage whose outputs were deleted runs again, and so does everything reading them
    Path(resumed["pretrain"]["checkpoint"]).unlink()
    again = pipeline.pipeline_flow(_config(tmp_path))
    assert _ran(fake_stages) == ["pretrain", "finetune", "evaluate"]
    assert again["reused"] == ["ingest", "clean", "episodes"]


def test_a_failed_stage_lets_its_concurrent_sibling_finish_and_keep_its_result(prefect_harness, fake_stages, tmp_path):
    fake_stages.fail_once.add("pretrain")
    with pytest.raises(RuntimeError, match="SAMPLE_ID 1007"):
        pipeline.pipeline_flow(_config(tmp_path))
    assert _ran(fake_stages) == ["ingest", "clean", "pretrain", "episodes"]

    resumed = pipeline.pipeline_flow(_config(tmp_path))
    assert _ran(fake_stages) == ["pretrain", "finetune", "evaluate"]
    assert resumed["reused"] == ["ingest", "clean", "episodes"]


def test_stages_must_share_one_data_root(tmp_path):
    with pytest.raises(ValueError, match="one data root"):
        PipelineConfig.model_validate({"clean": {"paths": {"data_root": str(tmp_path / "elsewhere")}}})


def test_a_deployment_run_resolves_unset_fields_from_the_running_process_environment(tmp_path, monkeypatch):
    """What a deployment run passes is only what its form or --param set: the rest comes from
    the FVLP_* environment of the process running it (was: the defaults frozen at deploy time)."""
    from fvlp_core.config import CleanConfig, flow_config

    monkeypatch.setenv("FVLP_DATA_ROOT", str(tmp_path / "from-env"))
    monkeypatch.setenv("FVLP_WORKERS", "3")
    bare = flow_config(CleanConfig, None, None)
    assert (bare.paths.data_root, bare.workers) == (tmp_path / "from-env", 3)
    form = CleanConfig.model_validate({"workers": 1})  # a form that set one field
    assert flow_config(CleanConfig, form, None).workers == 1
    assert flow_config(CleanConfig, form, None).paths.data_root == tmp_path / "from-env"
    # one data_root parameter reaches all six stages of the pipeline and wins over the config's
    pipeline = flow_config(PipelineConfig, {"clean": {"workers": 1}}, tmp_path / "param")
    assert {getattr(pipeline, stage).paths.data_root for stage in STAGES} == {tmp_path / "param"}
    assert pipeline.clean.workers == 1


# A corpus and training budget small enough for CI on two CPU cores, with a corpus seed,
# crop margin and episode length other than the defaults: later stages must take them from
# what the earlier stages recorded, not from their own defaults.
TINY = {
    "ingest": {"rows": 60, "identities": 12, "shard_size": 30, "seed": 7},
    "clean": {"workers": 1, "crop_margin": 0.15},
    "pretrain": {"epochs": 1, "batch_size": 8},
    "episodes": {"steps_per_episode": 5},
    "finetune": {"epochs": 1, "batch_size": 4, "select_on": "test"},  # too few train photos to carve a validation split
}
RUNS_SQL = "SELECT flow, run_id, status, parent_run_id FROM runs WHERE flow <> 'pipeline' ORDER BY started_at"
ROWS_SQL = """
SELECT r.flow, (SELECT count(*) FROM metrics m WHERE m.run_id = r.run_id),
       (SELECT count(*) FROM curves c WHERE c.run_id = r.run_id),
       (SELECT count(*) FROM cleaning_stats s WHERE s.run_id = r.run_id)
FROM runs r ORDER BY r.started_at
"""


@pytest.mark.slow
def test_real_stages_end_to_end_then_a_rerun_that_reuses_them(prefect_harness, tmp_path):
    from flows.status import format_runs, recent_runs

    config = _config(tmp_path, **TINY)
    state = pipeline.pipeline_flow(config, return_state=True)
    first = state.result()

    assert in_stage_order(subflow_names(state.state_details.flow_run_id)) == STAGES
    assert first["ingest"]["rows"] == 60
    assert first["clean"]["kept"] + first["clean"]["rejected"] == 60
    assert first["finetune"]["checkpoint"] == str(
        config.evaluate.paths.checkpoints_dir / "finetune" / first["finetune"]["run_id"] / "selected.pt"
    )  # the selected epoch's weights, what evaluate scores

    store = ResultsStore(config.evaluate.paths.results_store)
    runs = store.query(RUNS_SQL)
    # Every stage that records a run links to the pipeline run that started it.
    assert runs == [
        (stage, first[stage]["run_id"], "finished", first["run_id"])
        for stage in ("ingest", "clean", "pretrain", "finetune", "evaluate")
    ]
    pipeline_row = store.query("SELECT flow, status FROM runs WHERE run_id = ?", [first["run_id"]])
    assert pipeline_row == [("pipeline", "finished")]
    curves = store.query(
        "SELECT DISTINCT metric FROM training_curves WHERE run_id = ? ORDER BY metric", [first["pretrain"]["run_id"]]
    )
    assert {"loss", "itc", "lr", "samples_per_s"} <= {metric for (metric,) in curves}
    fingerprints = dict(store.query("SELECT flow, model_fingerprint FROM runs WHERE flow IN ('finetune', 'evaluate')"))
    assert fingerprints["finetune"] == fingerprints["evaluate"]  # the model evaluate scored, by content
    assert all(Path(path).is_absolute() for (path,) in store.query("SELECT path FROM artifacts"))
    assert first["evaluate"]["metrics"]["dataset/steps"] == 5
    _assert_episodes_drawn_from_the_recorded_corpus(config, first["episodes"])
    rows = {flow: counts for flow, *counts in store.query(ROWS_SQL)}
    assert rows["clean"][2] > 0  # cleaning stats per rule
    assert rows["evaluate"][0] > 0 and rows["evaluate"][1] > 0  # metrics and acc@K curves
    assert "m@A" in format_runs(recent_runs(store))
    _assert_the_readme_analyst_command_opens_the_store(config, tmp_path / "analyst")
    _assert_the_ui_gets_artifacts_it_can_render()

    rerun = pipeline.pipeline_flow(config, return_state=True)
    assert rerun.result()["reused"] == STAGES
    assert subflow_names(rerun.state_details.flow_run_id) == []
    assert store.query(RUNS_SQL) == runs  # nothing ran twice


REPO = Path(__file__).resolve().parents[1]


def _assert_the_ui_gets_artifacts_it_can_render() -> None:
    """Tables for ingest and cleaning, progress for clean shards, and the curve plot inside its
    artifact (a file:// link showed broken in the UI of any other machine)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts() if a.key}
    assert {"ingest-status-counts", "cleaning-rules", "clean-measured-shards", "evaluation-curves"} <= set(artifacts)
    assert artifacts["evaluation-curves"].type == "markdown"
    assert "](data:image/png;base64," in str(artifacts["evaluation-curves"].data)


def _assert_the_readme_analyst_command_opens_the_store(config: PipelineConfig, workdir: Path) -> None:
    """The README's analyst command, exactly as written, run where the README's paths hold:
    a checkout (its .venv) beside the data root ``fvlp-data``."""
    guide = (REPO / "README.md").read_text().split("## Analyst guide", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", guide, re.S).group(1).strip()
    workdir.mkdir()
    (workdir / ".venv").symlink_to(REPO / ".venv")
    (workdir / "fvlp-data").symlink_to(config.evaluate.paths.data_root.resolve())
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=workdir,
        input="SELECT flow || ':' || status FROM runs WHERE flow = 'evaluate';\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "evaluate:finished" in done.stdout


def _assert_episodes_drawn_from_the_recorded_corpus(config: PipelineConfig, episodes: dict[str, Any]) -> None:
    """Each sketch is its identity's strokes from the ingested corpus (seed 7), placed with the
    crop margin the clean stage used (0.15): both read from the upstream manifests."""
    from fvlp_core.codec import decode_image
    from fvlp_core.corpus import EmbeddedCorpus, face_strokes
    from fvlp_core.episodes import corpus_episode
    from storage.clean import read_clean_manifest, read_face_index
    from storage.episodes import iter_sketch_chunks

    manifest = read_clean_manifest(config.clean.paths.clean_dir)
    assert manifest["corpus"] == {"rows": 60, "identities": 12, "seed": 7}
    assert manifest["settings"]["crop_margin"] == 0.15
    assert episodes["steps"] == 5 and episodes["photos"] > 0
    identity = dict(
        zip(
            *(read_face_index(config.clean.paths.clean_dir).column(c).to_pylist() for c in ("SAMPLE_ID", "identity_id"))
        )
    )
    corpus = EmbeddedCorpus(60, 12, seed=7)
    chunk = next(iter_sketch_chunks(Path(episodes["episodes_dir"])))
    photo_id, last = chunk["photo_id"][4].as_py(), decode_image(chunk["image"][4].as_py())
    assert chunk["step"][4].as_py() == 4
    size = last.shape[1]
    frames, aligned = corpus_episode(face_strokes(corpus.identity_params(identity[int(photo_id)]), size), size, 5, 0.15)
    assert aligned
    assert np.array_equal(decode_image(encode_png(frames[-1])), last)
