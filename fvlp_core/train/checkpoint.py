"""Training checkpoints: atomic writes, contents loadable with ``torch.load(weights_only=True)``.

Layout: ``<checkpoints_dir>/<stage>/<run_id>/checkpoint.pt`` + ``config.json``, and
``<checkpoints_dir>/<stage>/LATEST`` holding the id of the latest finished run.
A checkpoint holds only tensors, numbers, strings and plain containers: the config is
stored as its JSON text, so loading one never executes code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from storage.shards import remove_orphan_temp_files

FORMAT = "fvlp-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
LATEST_NAME = "LATEST"


def run_dir(checkpoints_dir: Path, stage: str, run_id: str) -> Path:
    return Path(checkpoints_dir) / stage / run_id


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    remove_orphan_temp_files(path)  # half-written checkpoints of killed runs (same temp naming)


def write_text_atomic(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode()))


def write_run_config(folder: Path, config_json: str) -> Path:
    """``config.json`` of a run: the resolved config that produced its checkpoints."""
    path = Path(folder) / CONFIG_NAME
    write_text_atomic(path, json.dumps(json.loads(config_json), indent=2, sort_keys=True) + "\n")
    return path


def save_checkpoint(path: Path, *, stage: str, model_name: str, config_json: str, model: dict,
                    optimizer: dict, scheduler: dict, step: int, total_steps: int,
                    metrics: dict[str, float] | None = None) -> Path:
    payload = {
        "format": FORMAT,
        "stage": stage,
        "model_name": model_name,
        "config": config_json,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "step": step,
        "total_steps": total_steps,
        "metrics": metrics or {},
    }
    _atomic_write_bytes(Path(path), lambda handle: torch.save(payload, handle))
    return Path(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (refuses anything that needs unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    loaded = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        raise ValueError(f"{path}: not an fvlp checkpoint (format {loaded.get('format') if isinstance(loaded, dict) else type(loaded).__name__!r})")
    return loaded


def checkpoint_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return json.loads(checkpoint["config"])


def mark_latest(checkpoints_dir: Path, stage: str, run_id: str) -> None:
    write_text_atomic(Path(checkpoints_dir) / stage / LATEST_NAME, run_id + "\n")


def latest_checkpoint(checkpoints_dir: Path, stage: str) -> Path | None:
    """The checkpoint of the latest finished ``stage`` run, or None when there is none."""
    latest = Path(checkpoints_dir) / stage / LATEST_NAME
    if not latest.is_file():
        return None
    path = run_dir(checkpoints_dir, stage, latest.read_text().strip()) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{latest} names run {latest.read_text().strip()!r} but {path} is missing")
    return path
