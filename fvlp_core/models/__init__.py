"""FVLP models on open_clip backbones: pretraining (ITC + ITM) and fusion fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from fvlp_core.models.factory import create_backbone, fusion_layer_indices, get_tokenizer
from fvlp_core.models.fusion import FVLPFusion, MultiScaleFusion
from fvlp_core.models.pretrain import FVLPPretrain

MODELS: dict[str, type[nn.Module]] = {"pretrain": FVLPPretrain, "finetune": FVLPFusion}


def create_model(stage: str, architecture: dict[str, Any], init_checkpoint: Path | None = None) -> nn.Module:
    """The model of training ``stage`` built from its ``architecture`` (the dict a checkpoint
    carries), with backbone weights from ``init_checkpoint`` or random ones."""
    if stage not in MODELS:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {tuple(MODELS)}")
    return MODELS[stage](init_checkpoint=init_checkpoint, **architecture)


__all__ = [
    "FVLPFusion",
    "FVLPPretrain",
    "MODELS",
    "MultiScaleFusion",
    "create_backbone",
    "create_model",
    "fusion_layer_indices",
    "get_tokenizer",
]
