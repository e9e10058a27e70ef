"""Finetune flow: sketch episodes + captions -> the SLFIR retrieval model (ITC + ITSC + ITM).

``fvlp finetune`` starts from ``--pretrained-checkpoint`` (default: the latest pretraining
run) and trains the multi-scale fusion model as a subprocess on the episodes the episodes
stage built (``--episodes``, default ``<data_root>/episodes``); it reads them and never
builds or changes them. Each example is (photo, one random step of its sketch episode,
caption).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from fvlp_core.config import FinetuneConfig, flow_config
from storage.checkpoints import latest_checkpoint
from storage.episodes import read_episodes_reference
from tasks.train import train_and_record, with_run_id

STAGE = "finetune"


def resolve_start(config: FinetuneConfig) -> FinetuneConfig:
    """Fix the starting weights in the config, so the run's config.json says what it started from."""
    if config.pretrained_checkpoint or config.init_checkpoint or config.from_scratch:
        return config
    latest = latest_checkpoint(config.paths.checkpoints_dir, "pretrain")
    if latest is None:
        raise FileNotFoundError(
            f"no finished pretraining run under {config.paths.checkpoints_dir / 'pretrain'}: run `fvlp pretrain` "
            "first, or pass --pretrained-checkpoint / --init-checkpoint"
        )
    return config.model_copy(update={"pretrained_checkpoint": latest})


@flow(name="finetune")
def finetune_flow(config: FinetuneConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns ``{"run_id", "checkpoint", "episodes_dir", "metrics"}``.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(FinetuneConfig, config, data_root)
    config = resolve_start(with_run_id(config, STAGE))
    episodes = read_episodes_reference(config.episodes_dir)
    done = train_and_record(
        STAGE,
        config,
        dataset_fingerprint=episodes["fingerprint"],
        metrics_split=config.select_on,
    )
    get_run_logger().info("finetune run %s on %s episodes: %s", config.run_id, episodes["source"], done["metrics"])
    return {
        "run_id": config.run_id,
        "checkpoint": done["checkpoint"],
        "episodes_dir": episodes["episodes_dir"],
        "metrics": done["metrics"],
    }
