"""Reading fvlp training checkpoints: weights plus the architecture that rebuilds them.

A checkpoint holds only tensors, numbers, strings and plain containers (``torch.load(
weights_only=True)`` reads it and never runs code): ``format``, ``stage``, ``architecture``
(JSON text: what :func:`fvlp_core.models.create_model` needs, as open_clip ships a model's
config beside its weights), ``config`` (JSON text of the whole training config), ``model``,
``optimizer``, ``scheduler``, ``step``, ``total_steps`` and ``metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FORMAT = "fvlp-checkpoint-v2"


def is_fvlp_checkpoint(loaded: object) -> bool:
    return isinstance(loaded, dict) and str(loaded.get("format", "")).startswith("fvlp-checkpoint")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by fvlp's training app (refuses anything that needs unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    loaded = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise ValueError(f"{path}: not an {FORMAT} checkpoint (format {found!r})")
    return loaded


def checkpoint_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The training config the checkpoint was written with."""
    return json.loads(checkpoint["config"])


def checkpoint_architecture(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model architecture the checkpoint's weights belong to."""
    return json.loads(checkpoint["architecture"])
