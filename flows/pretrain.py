"""Pretrain flow: cleaned face crops + captions -> FVLP backbone (ITC with momentum queues + ITM).

``fvlp pretrain`` trains an open_clip model (``--model``, default the CPU-sized
``fvlp-vit-tiny``; ``ViT-B-16`` on GPU, optionally from ``--init-checkpoint``) on
``clean_dir/faces``. Training runs as a subprocess (torchrun with ``--nproc-per-node``);
passing the ``--run-id`` of an interrupted run resumes it from its last checkpoint.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from fvlp_core.config import PretrainConfig
from storage.results import ResultsStore, new_run_id
from storage.training_data import faces_dir
from tasks.train import dataset_fingerprint, is_resume, metric_rows, run_training, with_run_id

STAGE = "pretrain"


@flow(name="pretrain")
def pretrain_flow(config: PretrainConfig = PretrainConfig()) -> dict[str, Any]:
    """Returns ``{"run_id", "checkpoint", "metrics"}``; the run id names the checkpoint folder and results row."""
    logger = get_run_logger()
    config = with_run_id(config, STAGE)
    # A resumed run already has its results row: the resumption gets its own, pointing at the same run.
    store_run_id = new_run_id(STAGE) if is_resume(config, STAGE) else config.run_id
    store = ResultsStore(config.paths.results_store)
    with store.run(STAGE, config=config.model_dump(mode="json"), run_id=store_run_id,
                   dataset_fingerprint=dataset_fingerprint(faces_dir(config.paths.clean_dir)),
                   model_fingerprint=config.model) as results_run:
        done = run_training(STAGE, config)
        store.record_results(results_run, metrics=metric_rows(done["metrics"], "heldout", STAGE),
                             artifacts=[{"kind": "checkpoint", "path": done["checkpoint"]}])
    logger.info("pretrain run %s: %s", config.run_id, done["metrics"])
    return {"run_id": config.run_id, "checkpoint": done["checkpoint"], "metrics": done["metrics"]}
