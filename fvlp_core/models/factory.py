"""open_clip backbones: creation by config name, checkpoint loading, token-level forward passes.

The FVLP image and text encoders are an open_clip ``CLIP`` model. Our small configs in
``fvlp_core/model_configs/`` are registered with open_clip on import, so ``fvlp-vit-tiny``
works everywhere ``ViT-B-16`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from open_clip.transformer import text_global_pool
from safetensors.torch import load_file as load_safetensors
from torch import nn

from fvlp_core.checkpoint import is_fvlp_checkpoint
from fvlp_core.torchscript import is_torchscript_archive

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

# Depths the reference reads multi-scale features from, for a 12-layer ViT (0-based blocks).
REFERENCE_FUSION_LAYERS = (3, 5, 7, 11)
REFERENCE_VIT_LAYERS = 12

# Entries of OpenAI's CLIP state dicts that are no weights (their presence marks OpenAI weights).
OPENAI_MARKER_KEYS = ("input_resolution", "context_length", "vocab_size")
# Tensors a scripted or traced model carries (at any depth) that open_clip rebuilds instead of loading.
NON_PERSISTENT_KEYS = ("attn_mask",)

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
    if is_torchscript_archive(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (OpenAI's original CLIP format), whose code fvlp never runs: "
            f"convert it once with `fvlp convert-checkpoint {path} {path.with_suffix('.safetensors')}`"
        )
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


@dataclass(frozen=True)
class BackboneWeights:
    """An open_clip state dict and what is known of the activation it was trained with."""

    state: dict[str, torch.Tensor]
    quick_gelu: bool | None  # None: the file does not say


def _declared_quick_gelu(path: Path) -> bool | None:
    """open_clip ships ``open_clip_config.json`` beside its weights; its model config names the activation."""
    config = Path(path).parent / "open_clip_config.json"
    if not config.is_file():
        return None
    model_cfg = json.loads(config.read_text()).get("model_cfg", {})
    return bool(model_cfg.get("quick_gelu", False))


def read_backbone_weights(path: Path) -> BackboneWeights:
    """The backbone weights in ``path``. OpenAI's state dicts carry ``input_resolution``,
    ``context_length`` and ``vocab_size`` entries (dropped here), which mark QuickGELU weights."""
    state = dict(backbone_state_dict(read_weights(path)))
    openai = any(key in state for key in OPENAI_MARKER_KEYS)
    state = {
        key: value
        for key, value in state.items()
        if key not in OPENAI_MARKER_KEYS and key.rsplit(".", 1)[-1] not in NON_PERSISTENT_KEYS
    }
    return BackboneWeights(state, True if openai else _declared_quick_gelu(path))


def _check_activation(model_name: str, weights: BackboneWeights, path: Path) -> None:
    """QuickGELU weights in a GELU model (or the reverse) load without error and compute wrong features."""
    builds_quick_gelu = bool(model_config(model_name).get("quick_gelu", False))
    if weights.quick_gelu is None or weights.quick_gelu == builds_quick_gelu:
        return
    if weights.quick_gelu:
        right = f"{model_name}-quickgelu"
        hint = f"--model {right}" if open_clip.get_model_config(right) else "a -quickgelu model config"
        raise CheckpointError(
            f"{path} holds weights trained with QuickGELU (OpenAI CLIP) but {model_name} builds GELU layers: use {hint}"
        )
    right = model_name.removesuffix("-quickgelu")
    raise CheckpointError(f"{path} declares GELU weights but {model_name} builds QuickGELU layers: use --model {right}")


def create_backbone(model_name: str, init_checkpoint: Path | None = None) -> open_clip.CLIP:
    """An open_clip CLIP model by config name; weights from ``init_checkpoint`` or random init.

    As open_clip's own loader does, position embeddings of weights trained at another image
    size (or context length) are interpolated to the model's.
    """
    model_config(model_name)
    model = open_clip.create_model(model_name, pretrained=None)
    if init_checkpoint is not None:
        weights = read_backbone_weights(init_checkpoint)
        _check_activation(model_name, weights, init_checkpoint)
        state = dict(weights.state)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
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


class Tokenizer:
    """open_clip's tokenizer, each batch cut after its longest caption's end-of-text token.

    The text towers here pool the end-of-text token (the highest id) under a causal mask, so
    nothing after it reaches the pooled feature or the matching head: the padding is compute
    for nothing (a 20-token caption in a 77-token context is three quarters padding). Cutting
    here, on the CPU, needs no device sync in the training step.
    """

    # Distinct texts whose token rows are kept: evaluation asks for each caption with every one
    # of its 50 sketch steps and 256 match candidates (open_clip's BPE is about 0.1 ms a text).
    CACHE_SIZE = 65_536

    def __init__(self, model_name: str):
        self.tokenize = open_clip.get_tokenizer(model_name)
        self.trims = model_config(model_name)["text_cfg"].get("pool_type", "argmax") == "argmax"
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        # open_clip tokenizes each text on its own, so rows kept from earlier calls are the same.
        missing = [text for text in dict.fromkeys(texts) if text not in self.rows]
        if missing:
            if len(self.rows) + len(missing) > self.CACHE_SIZE:
                self.rows.clear()
            self.rows.update(zip(missing, self.tokenize(missing)))
        tokens = torch.stack([self.rows[text] for text in texts]) if texts else self.tokenize(texts)
        if not self.trims or tokens.numel() == 0:
            return tokens
        return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


def get_tokenizer(model_name: str) -> Tokenizer:
    return Tokenizer(model_name)


def causal_text_input(
    backbone: open_clip.CLIP, text: torch.Tensor, detached: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token + position embeddings of ``text`` [B, L] (L up to the context length: see
    ``Tokenizer``) and the causal mask cut to L; ``detached`` reads the embeddings without
    gradient (the matching head's use of the shared text tower)."""
    cast_dtype = backbone.transformer.get_cast_dtype()
    length = text.shape[1]
    tokens, positions = backbone.token_embedding.weight, backbone.positional_embedding[:length]
    if detached:
        tokens, positions = tokens.detach(), positions.detach()
    mask = backbone.attn_mask
    return F.embedding(text, tokens).to(cast_dtype) + positions.to(cast_dtype), (
        None if mask is None else mask[:length, :length]
    )


def configured_image_size(model_name: str) -> int:
    """The input side of ``model_name``'s config (what a model built from it takes)."""
    size = model_config(model_name)["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, (list, tuple)) else int(size)


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
    x, mask = causal_text_input(model, text)
    x = model.transformer(x, attn_mask=mask)
    tokens = model.ln_final(x)
    pooled = text_global_pool(tokens, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
    return pooled, tokens
