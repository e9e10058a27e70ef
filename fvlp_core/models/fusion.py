"""Fusion fine-tuning model: multi-scale ViT features -> conv -> spatial attention -> embedding.

Photos and partial sketches go through the SAME image encoder and fusion head; a caption's
projected embedding is added to the sketch's (then L2-normalised) to form the query.
Reference sizes for ViT-B-16: 4 x 768 x 14 x 14 -> 3x3/2 conv 2048 -> attention 512 -> 256.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fvlp_core.checkpoint import is_fvlp_checkpoint
from fvlp_core.models.factory import (
    CheckpointError,
    create_backbone,
    encode_image_tokens,
    encode_text_tokens,
    fusion_layer_indices,
    read_weights,
    vision_width,
)
from fvlp_core.models.grounded import ImageGroundedTextEncoder
from fvlp_core.models.losses import contrastive_loss, matching_loss, rank, sample_hard_negatives
from fvlp_core.models.pretrain import MAX_LOGIT_SCALE

REFERENCE_WIDTH = 768
REFERENCE_CONV_CHANNELS = 2048
REFERENCE_ATTENTION_CHANNELS = 512
REFERENCE_EMBED_DIM = 256


class SpatialAttention(nn.Module):
    """1x1 conv -> BN -> ReLU -> 1x1 conv -> softmax over positions; x + x*mask; global max pool."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        mask = F.softmax(self.score(x).view(batch, -1), dim=1).view(batch, 1, height, width)
        return torch.amax(x + x * mask, dim=(2, 3))


class MultiScaleFusion(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_maps: int = 4,
        conv_channels: int = REFERENCE_CONV_CHANNELS,
        attention_channels: int = REFERENCE_ATTENTION_CHANNELS,
        embed_dim: int = REFERENCE_EMBED_DIM,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels * num_maps, conv_channels, kernel_size=3, stride=2, padding=1)
        self.attention = SpatialAttention(conv_channels, attention_channels)
        self.proj = nn.Linear(conv_channels, embed_dim)

    def pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The attention-pooled vector before projection ([B, conv_channels])."""
        return self.attention(self.conv(torch.cat(maps, dim=1)))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.proj(self.pooled(maps))


def default_fusion_widths(width: int) -> tuple[int, int]:
    """Reference conv/attention widths scaled by the ViT width (768 -> 2048/512)."""
    conv = max(16, round(REFERENCE_CONV_CHANNELS * width / REFERENCE_WIDTH))
    return conv, max(4, conv * REFERENCE_ATTENTION_CHANNELS // REFERENCE_CONV_CHANNELS)


class FVLPFusion(nn.Module):
    """The fine-tuned retrieval model; ``encode_*`` give the shared, L2-normalised embedding space."""

    def __init__(
        self,
        model_name: str,
        init_checkpoint: Path | None = None,
        fusion_layers: list[int] | None = None,
        conv_channels: int | None = None,
        attention_channels: int | None = None,
        embed_dim: int = REFERENCE_EMBED_DIM,
    ):
        super().__init__()
        self.model_name = model_name
        # A pretraining checkpoint initialises backbone + ITM encoder together (see load_pretrained).
        self.backbone = create_backbone(model_name, None)
        self.grounded = ImageGroundedTextEncoder.for_backbone(self.backbone)
        width = vision_width(self.backbone)
        self.fusion_layers = list(
            fusion_layers or fusion_layer_indices(len(self.backbone.visual.transformer.resblocks))
        )
        default_conv, default_attention = default_fusion_widths(width)
        self.fusion = MultiScaleFusion(
            width,
            num_maps=len(self.fusion_layers),
            conv_channels=conv_channels or default_conv,
            attention_channels=attention_channels or default_attention,
            embed_dim=embed_dim,
        )
        self.text_proj = nn.Linear(self.backbone.text_projection.shape[1], embed_dim)
        if init_checkpoint is not None:
            self.load_pretrained(init_checkpoint)
        # Images embed through the fusion head, so the CLIP image projection gets no gradient
        # (DistributedDataParallel refuses parameters that never receive one).
        self.backbone.visual.proj.requires_grad_(False)

    def load_pretrained(self, path: Path) -> None:
        """Backbone (and ITM encoder, when present) from an fvlp pretraining or open_clip checkpoint."""
        loaded = read_weights(path)
        if is_fvlp_checkpoint(loaded):
            state = {k: v for k, v in loaded["model"].items() if k.startswith(("backbone.", "grounded."))}
            missing, unexpected = self.load_state_dict(state, strict=False)
            missing = [k for k in missing if k.startswith(("backbone.", "grounded."))]
            if missing or unexpected:
                raise CheckpointError(
                    f"{path}: pretraining checkpoint does not fit {self.model_name}: "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        else:
            self.backbone = create_backbone(self.model_name, path)

    def head_parameters(self) -> list[nn.Parameter]:
        """The fusion conv/attention head, trained with its own (higher) learning rate."""
        return list(self.fusion.conv.parameters()) + list(self.fusion.attention.parameters())

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        head = {id(p) for p in self.head_parameters()}
        return {
            "backbone": [p for p in self.parameters() if p.requires_grad and id(p) not in head],
            "head": self.head_parameters(),
        }

    def _image_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unnormalised fused embedding, final patch tokens)."""
        _, tokens, maps = encode_image_tokens(self.backbone, images, self.fusion_layers)
        return self.fusion([m.float() for m in maps]), tokens

    def _text_forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.text_proj(encode_text_tokens(self.backbone, text)[0].float())

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._image_forward(images)[0], dim=-1)

    def encode_texts(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._text_forward(text), dim=-1)

    def encode_sketches(self, sketches: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        sketch = self._image_forward(sketches)[0]
        return F.normalize(sketch if text is None else sketch + self._text_forward(text), dim=-1)

    def forward(
        self, photos: torch.Tensor, sketches: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, seed: int
    ) -> dict[str, torch.Tensor]:
        """ITC (photo<->text) + ITSC (sketch+text <-> photo, both directions) + ITM.

        ``groups`` marks identical captions (positives for ITC); each photo is its own ITSC class.
        """
        batch = photos.shape[0]
        embeds, tokens = self._image_forward(torch.cat([photos, sketches]))
        photo_emb, sketch_emb = embeds[:batch], embeds[batch:]
        photo_tokens = tokens[:batch]
        text_emb = self._text_forward(text)
        with torch.no_grad():
            self.backbone.logit_scale.clamp_(0, torch.log(torch.tensor(MAX_LOGIT_SCALE)).item())
        logit_scale = self.backbone.logit_scale.exp()

        photo_feat = F.normalize(photo_emb, dim=-1)
        text_feat = F.normalize(text_emb, dim=-1)
        query_feat = F.normalize(sketch_emb + text_emb, dim=-1)
        identity = torch.arange(batch, device=photos.device) + batch * rank()
        itc = contrastive_loss(photo_feat, text_feat, logit_scale, groups, groups)
        itsc = contrastive_loss(query_feat, photo_feat, logit_scale, identity, identity)

        generator = torch.Generator().manual_seed(seed)
        same = groups[:, None] == groups[None, :]
        with torch.no_grad():
            similarity = photo_feat @ text_feat.T * logit_scale
        negative_text = sample_hard_negatives(similarity, same, generator)
        negative_photo = sample_hard_negatives(similarity.T, same, generator)
        logits = self.grounded(
            self.backbone,
            torch.cat([text, text[negative_text], text]),
            torch.cat([photo_tokens, photo_tokens, photo_tokens[negative_photo]]),
        )
        itm = matching_loss(logits, positives=batch)
        return {"loss": itc + itsc + itm, "itc": itc.detach(), "itsc": itsc.detach(), "itm": itm.detach()}
