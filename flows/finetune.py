"""Finetune flow: sketch episodes + captions -> the SLFIR retrieval model (ITC + ITSC + ITM).

``fvlp finetune`` starts from ``--pretrained-checkpoint`` (default: the latest pretraining
run), makes sure the drawing episodes exist (FS2K-SDE via ``--fs2k-sde``, else generated
from the cleaned faces) and trains the multi-scale fusion model as a subprocess. Each
example is (photo, one random step of its sketch episode, caption).
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from fvlp_core.config import FinetuneConfig
from fvlp_core.train.checkpoint import latest_checkpoint
from storage.episodes import photos_dir, sketches_dir
from storage.results import ResultsStore, new_run_id
from tasks.episodes import ensure_episodes
from tasks.train import dataset_fingerprint, is_resume, metric_rows, run_training, with_run_id

STAGE = "finetune"


def resolve_start(config: FinetuneConfig) -> FinetuneConfig:
    """Fix the starting weights in the config, so the run's config.json says what it started from."""
    if config.pretrained_checkpoint or config.init_checkpoint:
        return config
    latest = latest_checkpoint(config.paths.checkpoints_dir, "pretrain")
    if latest is None:
        raise FileNotFoundError(
            f"no finished pretraining run under {config.paths.checkpoints_dir / 'pretrain'}: run `fvlp pretrain` "
            "first, or pass --pretrained-checkpoint / --init-checkpoint"
        )
    return config.model_copy(update={"pretrained_checkpoint": latest})


@flow(name="finetune")
def finetune_flow(config: FinetuneConfig = FinetuneConfig()) -> dict[str, Any]:
    """Returns ``{"run_id", "checkpoint", "episodes_dir", "metrics"}``."""
    logger = get_run_logger()
    config = resolve_start(with_run_id(config, STAGE))
    episodes = ensure_episodes(config.paths, steps=config.steps_per_episode, fs2k_sde=config.fs2k_sde)
    store_run_id = new_run_id(STAGE) if is_resume(config, STAGE) else config.run_id
    store = ResultsStore(config.paths.results_store)
    episodes_dir = config.paths.episodes_dir
    with store.run(STAGE, config=config.model_dump(mode="json"), run_id=store_run_id,
                   dataset_fingerprint=dataset_fingerprint(photos_dir(episodes_dir), sketches_dir(episodes_dir)),
                   model_fingerprint=str(config.pretrained_checkpoint or config.init_checkpoint)) as results_run:
        done = run_training(STAGE, config)
        store.record_results(results_run, metrics=metric_rows(done["metrics"], "test", STAGE),
                             artifacts=[{"kind": "checkpoint", "path": done["checkpoint"]}])
    logger.info("finetune run %s on %s episodes: %s", config.run_id, episodes["source"], done["metrics"])
    return {"run_id": config.run_id, "checkpoint": done["checkpoint"], "episodes_dir": str(episodes_dir),
            "metrics": done["metrics"]}
