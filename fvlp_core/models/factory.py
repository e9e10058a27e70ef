"""open_clip backbones: creation by config name, checkpoint loading, token-level forward passes.

The FVLP image and text encoders are an open_clip ``CLIP`` model. Our small configs in
``fvlp_core/model_configs/`` are registered with open_clip on import, so ``fvlp-vit-tiny``
works everywhere ``ViT-B-16`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import text_global_pool
from safetensors.torch import load_file as load_safetensors
from torch import nn

from fvlp_core.checkpoint import is_fvlp_checkpoint

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

# Depths the reference reads multi-scale features from, for a 12-layer ViT (0-based blocks).
REFERENCE_FUSION_LAYERS = (3, 5, 7, 11)
REFERENCE_VIT_LAYERS = 12

IMAGE_MEAN = OPENAI_DATASET_MEAN
IMAGE_STD = OPENAI_DATASET_STD


class CheckpointError(ValueError):
    """A checkpoint file that cannot initialise the requested model."""


def model_config(model_name: str) -> dict:
    config = open_clip.get_model_config(model_name)
    if config is None:
        known = ", ".join(m for m in open_clip.list_models() if "vit" in m.lower())
        raise ValueError(f"unknown open_clip model config {model_name!r}; ViT configs: {known}")
    return config


def fusion_layer_indices(num_layers: int) -> list[int]:
    """Blocks 3/5/7/11 of a 12-layer ViT, scaled to ``num_layers`` (6 layers -> 1/2/3/5)."""
    indices = [i * num_layers // REFERENCE_VIT_LAYERS for i in REFERENCE_FUSION_LAYERS]
    if len(set(indices)) != len(indices):
        raise ValueError(f"a {num_layers}-layer ViT is too shallow for four distinct fusion depths")
    return indices


def read_weights(path: Path) -> dict[str, Any]:
    """Tensors from a ``.safetensors`` file or a ``torch.save`` file, never executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; all mean "not a safe weights file"
        raise CheckpointError(f"{path}: not loadable with torch.load(weights_only=True): {err}") from err


def backbone_state_dict(loaded: dict) -> dict[str, torch.Tensor]:
    """The open_clip state dict inside an open_clip file or an fvlp training checkpoint."""
    if is_fvlp_checkpoint(loaded):
        prefix = "backbone."
        return {k[len(prefix) :]: v for k, v in loaded["model"].items() if k.startswith(prefix)}
    state = loaded.get("state_dict", loaded)
    if state and next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def create_backbone(model_name: str, init_checkpoint: Path | None = None) -> open_clip.CLIP:
    """An open_clip CLIP model by config name; weights from ``init_checkpoint`` or random init."""
    model_config(model_name)
    model = open_clip.create_model(model_name, pretrained=None)
    if init_checkpoint is not None:
        state = backbone_state_dict(read_weights(init_checkpoint))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensor shapes of another architecture
            raise CheckpointError(f"{init_checkpoint} does not fit {model_name}: {err}") from err
        if missing or unexpected:
            raise CheckpointError(
                f"{init_checkpoint} does not fit {model_name}: missing {sorted(missing)[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
            )
    return model


def get_tokenizer(model_name: str):
    return open_clip.get_tokenizer(model_name)


def image_size(model: open_clip.CLIP) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple) else int(size)


def vision_width(model: open_clip.CLIP) -> int:
    return model.visual.transformer.width


def encode_image_tokens(
    model: open_clip.CLIP, images: torch.Tensor, indices: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One ViT pass giving (projected pooled feature, final patch tokens, NCHW maps at ``indices``)."""
    visual = model.visual
    batch, _, height, width = images.shape
    x = visual._embeds(images)
    if indices:
        x, intermediates = visual.transformer.forward_intermediates(x, indices=indices)
    else:
        x, intermediates = visual.transformer(x), []
    grid_h, grid_w = height // visual.patch_size[0], width // visual.patch_size[1]
    maps = [y[:, 1:].reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2) for y in intermediates]
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, tokens, maps


def encode_text_tokens(model: open_clip.CLIP, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected pooled text feature, token states after the final LayerNorm)."""
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    tokens = model.ln_final(x)
    pooled = text_global_pool(tokens, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
    return pooled, tokens
