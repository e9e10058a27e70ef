"""Where training runs keep their files: the one owner of the checkpoint folder layout.

``<checkpoints_dir>/<stage>/<run_id>/`` holds ``checkpoint.pt`` (the last step, what a
resumed run continues from), ``selected.pt`` (fine-tuning: the weights of the epoch model
selection kept), ``config.json`` (the resolved training config), ``launch-config.json``
(what the launcher handed the child) and ``metrics.json``; ``<checkpoints_dir>/<stage>/LATEST``
names the latest finished run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from storage.files import atomic_write, write_text_atomic

CHECKPOINT_NAME = "checkpoint.pt"
SELECTED_NAME = "selected.pt"
CONFIG_NAME = "config.json"
LAUNCH_CONFIG_NAME = "launch-config.json"
METRICS_NAME = "metrics.json"
STEPS_LOG_NAME = "steps.jsonl"  # one JSON record per optimizer step (loss parts, lr, samples/s)
LATEST_NAME = "LATEST"


def run_dir(checkpoints_dir: Path, stage: str, run_id: str) -> Path:
    return Path(checkpoints_dir) / stage / run_id


def checkpoint_path(checkpoints_dir: Path, stage: str, run_id: str) -> Path:
    return run_dir(checkpoints_dir, stage, run_id) / CHECKPOINT_NAME


def mark_latest(checkpoints_dir: Path, stage: str, run_id: str) -> None:
    write_text_atomic(Path(checkpoints_dir) / stage / LATEST_NAME, run_id + "\n")


def handed_on(folder: Path) -> Path:
    """The checkpoint a finished run hands to later stages: its selected epoch, else its last step."""
    selected = Path(folder) / SELECTED_NAME
    return selected if selected.is_file() else Path(folder) / CHECKPOINT_NAME


def latest_checkpoint(checkpoints_dir: Path, stage: str) -> Path | None:
    """What the latest finished ``stage`` run hands on (:func:`handed_on`), or None when no run finished."""
    latest = Path(checkpoints_dir) / stage / LATEST_NAME
    if not latest.is_file():
        return None
    run_id = latest.read_text().strip()
    path = handed_on(run_dir(checkpoints_dir, stage, run_id))
    if not path.is_file():
        raise FileNotFoundError(f"{latest} names run {run_id!r} but {path} is missing")
    return path


def finetuned_checkpoint(checkpoints_dir: Path, given: Path | None) -> Path:
    """``given``, or the latest finished fine-tuning run's checkpoint; a missing one is an error
    saying what to run."""
    checkpoint = given or latest_checkpoint(checkpoints_dir, "finetune")
    if checkpoint is None:
        raise FileNotFoundError(
            f"no finished finetune run under {Path(checkpoints_dir) / 'finetune'}: "
            "run `fvlp finetune` first or pass --checkpoint"
        )
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    return Path(checkpoint)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A weights file that loads without unpickling anything, written whole or not at all."""
    data = safetensors_bytes({name: tensor.contiguous() for name, tensor in tensors.items()})
    return atomic_write(Path(path), lambda handle: handle.write(data))
