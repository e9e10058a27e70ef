"""Pretrain flow: cleaned face crops + captions -> FVLP backbone (ITC with momentum queues + ITM).

``fvlp pretrain`` trains an open_clip model (``--model``, default the CPU-sized
``fvlp-vit-tiny``; ``ViT-B-16`` on GPU, optionally from ``--init-checkpoint``) on the clean
stage's faces. Training runs as a subprocess (torchrun with ``--nproc-per-node``); passing
the ``--run-id`` of an interrupted run resumes it from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from fvlp_core.config import PretrainConfig, flow_config
from storage.clean import faces_dir
from storage.shards import dataset_fingerprint
from tasks.train import train_and_record, with_run_id

STAGE = "pretrain"


@flow(name="pretrain")
def pretrain_flow(config: PretrainConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns ``{"run_id", "checkpoint", "metrics"}``; the run id names the checkpoint folder and results row.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(PretrainConfig, config, data_root)
    config = with_run_id(config, STAGE)
    done = train_and_record(
        STAGE,
        config,
        dataset_fingerprint=dataset_fingerprint(faces_dir(config.paths.clean_dir)),
        metrics_split="heldout",
    )
    get_run_logger().info("pretrain run %s: %s", config.run_id, done["metrics"])
    return {"run_id": config.run_id, "checkpoint": done["checkpoint"], "metrics": done["metrics"]}
