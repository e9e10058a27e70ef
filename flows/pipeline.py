"""The whole DAG as one Prefect flow: ingest -> clean -> pretrain, episodes -> finetune -> evaluate.

Each stage runs as a subflow inside one cached task, so the UI shows the parent run
with one nested run per stage; stages that do not read each other's outputs (pretraining
and the episodes build) run at the same time, and a re-run with the same inputs finds each finished
stage in the cache instead of repeating it. A stage's cache key is its config plus
what its upstream stages returned and a fingerprint of the files those references name:
changing a stage's parameters, or an upstream stage rewriting its outputs, re-runs
everything below. Cache records live under the data root, beside the outputs they
describe. A stage interrupted mid-way has no cache record, so a re-run starts it again
and the stage resumes: ingest and clean skip their complete shards, and training runs
get a run id derived from the same key, so the re-run continues from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS
from prefect.futures import wait

from flows.clean import clean_flow
from flows.episodes import episodes_flow
from flows.evaluate import evaluate_flow
from flows.finetune import finetune_flow
from flows.ingest import ingest_flow
from flows.pretrain import pretrain_flow
from fvlp_core.config import PIPELINE_STAGES, PipelineConfig, StrictModel, flow_config
from storage.files import stat_fingerprint
from storage.results import ResultsStore
from tasks.lineage import run_lineage
from tasks.train import SHARING_CPU

# Stage name -> flow, in DAG order.
STAGE_FLOWS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "ingest": ingest_flow,
    "clean": clean_flow,
    "pretrain": pretrain_flow,
    "episodes": episodes_flow,
    "finetune": finetune_flow,
    "evaluate": evaluate_flow,
}
STAGES = PIPELINE_STAGES
# Stage -> the stages whose outputs it reads (its cache key includes their references).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "clean": ("ingest",),
    "pretrain": ("clean",),
    "episodes": ("clean",),
    "finetune": ("pretrain", "episodes"),
    "evaluate": ("finetune", "episodes"),
}
TRAINING_STAGES = ("pretrain", "finetune")

# Reference keys that name files or folders a later stage reads.
PATH_REFERENCES = ("raw_dir", "clean_dir", "checkpoint", "episodes_dir")


@task(
    name="stage",
    task_run_name="{stage}",
    cache_policy=INPUTS,
    persist_result=True,
    # A stage's I/O tasks retry themselves; what reaches here is a deterministic
    # failure (bad record, bad config), and repeating the whole stage would not help.
    retries=0,
)
def run_stage(stage: str, config: StrictModel, upstream: dict[str, Any]) -> dict[str, Any]:
    """Run one stage flow as a subflow. ``upstream`` (the upstream stages' references and
    output fingerprints) is not read: it is here to key the cache."""
    get_run_logger().info("running stage %s", stage)
    return STAGE_FLOWS[stage](config)


def output_fingerprint(reference: dict[str, Any]) -> dict[str, str]:
    """Stat fingerprint of every file a reference names, so a stage that rewrote its outputs
    in place still changes the cache key of the stages below it."""
    fingerprint = {}
    for key in PATH_REFERENCES:
        if reference.get(key) is None:
            continue
        root = Path(reference[key])
        # Hidden names are temp files and caches (content digests), not outputs.
        files = (
            sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
            if root.is_dir()
            else [root]
        )
        fingerprint[key] = stat_fingerprint(p for p in files if p.exists())
    return fingerprint


def missing_outputs(reference: dict[str, Any]) -> list[str]:
    """Paths a (cached) stage reference names that are no longer on disk."""
    return [
        f"{key}={reference[key]}"
        for key in PATH_REFERENCES
        if reference.get(key) is not None and not Path(reference[key]).exists()
    ]


def stage_config(
    config: PipelineConfig, stage: str, references: dict[str, dict[str, Any]], upstream: dict[str, Any]
) -> StrictModel:
    """The config ``stage`` runs with: its own, plus what the pipeline fills in.

    Fine-tuning starts from this run's pretraining checkpoint and trains on this run's
    episodes; evaluation scores this run's fine-tuned checkpoint on the same episodes,
    unless the config names them. A training stage without a run id
    gets one derived from its config and inputs, so a re-run after an interruption
    resumes the same checkpoint folder (``refresh`` asks for a new run instead).
    """
    own = getattr(config, stage)
    if stage == "finetune" and own.pretrained_checkpoint is None:
        own = own.model_copy(update={"pretrained_checkpoint": Path(references["pretrain"]["checkpoint"])})
    if stage == "evaluate" and own.checkpoint is None:
        own = own.model_copy(update={"checkpoint": Path(references["finetune"]["checkpoint"])})
    if stage in ("finetune", "evaluate") and own.episodes is None:
        own = own.model_copy(update={"episodes": Path(references["episodes"]["episodes_dir"])})
    if stage in TRAINING_STAGES and own.run_id is None and not config.refresh:
        inputs = json.dumps({"config": own.model_dump(mode="json"), "upstream": upstream}, sort_keys=True, default=str)
        own = own.model_copy(update={"run_id": f"{stage}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"})
    return own


def cache_dir(config: StrictModel) -> Path:
    return config.paths.data_root / "pipeline-cache"


def stage_waves() -> list[list[str]]:
    """:data:`STAGES` grouped so that a group's stages read only earlier groups' outputs: the
    stages of one group run at once (pretraining leaves a quarter of a 2-core CPU idle, and
    on a GPU it leaves the CPU to the episodes build)."""
    depth: dict[str, int] = {}
    for stage in STAGES:
        depth[stage] = 1 + max((depth[name] for name in UPSTREAM[stage]), default=-1)
    return [[stage for stage in STAGES if depth[stage] == level] for level in range(max(depth.values()) + 1)]


def cached_stage_task(config: StrictModel, refresh: bool):
    # Keys and results both under the data root: the cache travels with the outputs and
    # does not depend on which PREFECT_HOME (CLI, worker, test) ran the stage.
    cache = cache_dir(config)
    return run_stage.with_options(
        cache_policy=INPUTS.configure(key_storage=cache / "keys"),
        result_storage=cache / "results",
        refresh_cache=refresh,
    )


def run_or_reuse(
    stages: dict[str, tuple[StrictModel, dict[str, Any]]], refresh: bool
) -> dict[str, tuple[dict[str, Any], bool]]:
    """Run each of ``stages`` (name -> its config and upstream), all at once, or take its cached
    reference (re-running it if those outputs are gone).

    Returns each stage's reference and whether it came from the cache. When one stage fails,
    the others still finish (their outputs and cache records are kept) before the error is raised.
    """
    logger = get_run_logger()
    # Submitted tasks run in a copy of this context: a stage alone in its wave has the CPU.
    sharing = SHARING_CPU.set(len(stages) > 1)
    try:
        futures = {
            stage: cached_stage_task(config, refresh).submit(stage, config, upstream)
            for stage, (config, upstream) in stages.items()
        }
    finally:
        SHARING_CPU.reset(sharing)
    wait(list(futures.values()))
    done = {}
    for stage, future in futures.items():
        reference = future.result()
        if future.state.name != "Cached":
            done[stage] = (reference, False)
            continue
        missing = missing_outputs(reference)
        if not missing:
            logger.info("stage %s: same inputs as a finished run, reusing %s", stage, reference)
            done[stage] = (reference, True)
            continue
        logger.warning("stage %s: cached outputs are gone (%s); running it again", stage, ", ".join(missing))
        config, upstream = stages[stage]
        done[stage] = (cached_stage_task(config, refresh=True)(stage, config, upstream), False)
    return done


@flow(name="pipeline")
def pipeline_flow(config: PipelineConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """ingest -> clean -> pretrain, episodes -> finetune -> evaluate; returns each stage's references.

    ``reused`` lists the stages taken from the cache because their inputs had not changed.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(PipelineConfig, config, data_root)
    logger = get_run_logger()
    progress = create_progress_artifact(
        progress=0.0, key="pipeline-progress", description="Share of the stages finished in this run"
    )
    references: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, str]] = {}
    reused: list[str] = []
    store = ResultsStore(config.evaluate.paths.results_store)
    # The pipeline's own row: each stage run started inside it links to it (runs.parent_run_id).
    with store.run("pipeline", config=config.model_dump(mode="json"), lineage=run_lineage()) as run_id:
        for wave in stage_waves():
            stages = {}
            for stage in wave:
                upstream = {name: {"reference": references[name], "outputs": outputs[name]} for name in UPSTREAM[stage]}
                stages[stage] = (stage_config(config, stage, references, upstream), upstream)
            for stage, (reference, from_cache) in run_or_reuse(stages, config.refresh).items():
                references[stage] = reference
                outputs[stage] = output_fingerprint(reference)
                if from_cache:
                    reused.append(stage)
            update_progress_artifact(progress, progress=100.0 * len(references) / len(STAGES))
        store.record_results(
            run_id,
            metrics=[
                {"split": "pipeline", "variant": stage, "name": "reused", "value": float(stage in reused)}
                for stage in STAGES
            ],
        )
    create_table_artifact(
        key="pipeline-stages",
        table=[
            {
                "stage": s,
                "outcome": "reused" if s in reused else "ran",
                "references": json.dumps(references[s], default=str),
            }
            for s in STAGES
        ],
        description="What each stage returned in this pipeline run",
    )
    logger.info("pipeline finished; reused %s", ", ".join(reused) or "no stage")
    return {**references, "reused": reused, "run_id": run_id}
