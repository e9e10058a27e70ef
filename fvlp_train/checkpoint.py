"""Writing training checkpoints (the format is :mod:`fvlp_core.checkpoint`'s; the folder
layout :mod:`storage.checkpoints`'), each file whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fvlp_core.checkpoint import FORMAT
from storage.checkpoints import CONFIG_NAME
from storage.files import atomic_write, write_text_atomic


def write_run_config(folder: Path, config_json: str) -> Path:
    """``config.json`` of a run: the resolved config that produced its checkpoints."""
    return write_text_atomic(
        Path(folder) / CONFIG_NAME, json.dumps(json.loads(config_json), indent=2, sort_keys=True) + "\n"
    )


def save_checkpoint(
    path: Path,
    *,
    stage: str,
    architecture: dict[str, Any],
    config_json: str,
    model: dict,
    optimizer: dict,
    scheduler: dict,
    step: int,
    total_steps: int,
    metrics: dict[str, float] | None = None,
    selection: dict[str, Any] | None = None,
) -> Path:
    payload = {
        "format": FORMAT,
        "stage": stage,
        "architecture": json.dumps(architecture, sort_keys=True),
        "config": config_json,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "step": step,
        "total_steps": total_steps,
        "metrics": metrics or {},
        # fine-tuning's model selection so far ({} elsewhere): a resumed run keeps choosing from it
        "selection": selection or {},
    }
    return atomic_write(Path(path), lambda handle: torch.save(payload, handle))
