"""Fusion fine-tuning model: multi-scale ViT features -> conv -> spatial attention -> embedding.

Photos and partial sketches go through the SAME image encoder and fusion head; a caption's
projected embedding is added to the sketch's (then L2-normalised) to form the query.
Reference sizes for ViT-B-16: 4 x 768 x 14 x 14 -> 3x3/2 conv without padding 2048 x 6 x 6 -> attention 512 -> 256.
"""

from __future__ import annotations

import copy
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
from fvlp_core.models.losses import (
    clamped_logit_scale,
    ema_update,
    enqueue,
    feature_bank,
    gather_no_grad,
    gather_with_grad,
    positive_targets,
    queued_contrastive,
    soft_targets,
)
from fvlp_core.models.pretrain import DEFAULT_TEMPERATURE_RANGE, EMPTY_GROUP

REFERENCE_WIDTH = 768
REFERENCE_CONV_CHANNELS = 2048
REFERENCE_ATTENTION_CHANNELS = 512
REFERENCE_EMBED_DIM = 256
# State a checkpoint carries only to resume training.
TRAINING_ONLY_STATE = (
    "momentum_encoders.",
    "photo_queue",
    "text_queue",
    "query_queue",
    "photo_key_queue",
    "caption_group_queue",
    "queue_ptr",
)


def inference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without what only resuming training reads (:data:`TRAINING_ONLY_STATE`)."""
    return {name: value for name, value in state.items() if not name.startswith(TRAINING_ONLY_STATE)}


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
        self.conv = nn.Conv2d(in_channels * num_maps, conv_channels, kernel_size=3, stride=2)
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

    photo_queue: torch.Tensor
    text_queue: torch.Tensor
    query_queue: torch.Tensor
    photo_key_queue: torch.Tensor
    caption_group_queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        model_name: str,
        init_checkpoint: Path | None = None,
        fusion_layers: list[int] | None = None,
        conv_channels: int | None = None,
        attention_channels: int | None = None,
        embed_dim: int = REFERENCE_EMBED_DIM,
        queue_size: int = 0,
        momentum: float = 0.995,
        alpha: float = 0.0,
        temperature_range: tuple[float, float] = DEFAULT_TEMPERATURE_RANGE,
    ):
        super().__init__()
        self.model_name = model_name
        self.momentum = momentum
        self.alpha = alpha
        self.temperature_range = (float(temperature_range[0]), float(temperature_range[1]))
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
        # ALBEF-style momentum encoders and feature queues for ITC and ITSC, built only when
        # something reads them (a queue or soft targets), from the initial weights.
        self.momentum_encoders: nn.ModuleDict | None = None
        if queue_size > 0 or alpha > 0:
            self.momentum_encoders = copy.deepcopy(self._encoders())
            self.momentum_encoders.requires_grad_(False)
        for name in ("photo_queue", "text_queue", "query_queue"):
            self.register_buffer(name, F.normalize(torch.randn(embed_dim, queue_size), dim=0))
        self.register_buffer("photo_key_queue", torch.full((queue_size,), EMPTY_GROUP, dtype=torch.long))
        self.register_buffer("caption_group_queue", torch.full((queue_size,), EMPTY_GROUP, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def for_inference(cls, architecture: dict, state: dict[str, torch.Tensor]) -> FVLPFusion:
        """The trained model from its checkpoint ``state``, without the training-only momentum
        encoders and queues (half the memory of a ViT-B-16 with them)."""
        model = cls(**{**architecture, "queue_size": 0, "alpha": 0.0})
        missing, unexpected = model.load_state_dict(inference_state(state), strict=False)
        missing = [k for k in missing if not k.startswith(TRAINING_ONLY_STATE)]
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit its architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return model

    def _encoders(self) -> nn.ModuleDict:
        """The parts ``encode_*`` use: what the momentum copy mirrors."""
        return nn.ModuleDict({"backbone": self.backbone, "fusion": self.fusion, "text_proj": self.text_proj})

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
        return _fused_image(self.backbone, self.fusion, self.fusion_layers, images)

    def _text_forward(self, text: torch.Tensor) -> torch.Tensor:
        return _projected_text(self.backbone, self.text_proj, text)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._image_forward(images)[0], dim=-1)

    def encode_texts(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._text_forward(text), dim=-1)

    def encode_sketches(self, sketches: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        sketch = self._image_forward(sketches)[0]
        return F.normalize(sketch if text is None else sketch + self._text_forward(text), dim=-1)

    def forward(
        self,
        photos: torch.Tensor,
        sketches: torch.Tensor,
        text: torch.Tensor,
        groups: torch.Tensor,
        photo_keys: torch.Tensor,
        seed: int,
        alpha: float | None = None,
        hardness: float = 1.0,
        match: bool = True,
    ) -> dict[str, torch.Tensor]:
        """ITC (photo<->text), ITSC (sketch+text <-> photo, both directions) and ITM losses.

        ``groups`` marks identical captions (positives of each other in ITC); ``photo_keys``
        identify photos (the positives in ITSC, also across the queue); ``alpha`` overrides the
        soft-target weight (the trainer ramps it up over the first epoch); ``hardness`` weighs
        similarity-drawn against uniform ITM negatives; ``match=False`` skips the ITM loss (and
        its forward pass).
        """
        alpha = self.alpha if alpha is None else alpha
        batch = photos.shape[0]
        embeds, tokens = self._image_forward(torch.cat([photos, sketches]))
        photo_emb, sketch_emb = embeds[:batch], embeds[batch:]
        text_emb = self._text_forward(text)
        logit_scale = clamped_logit_scale(self.backbone.logit_scale, self.temperature_range)
        photo_feat = F.normalize(photo_emb, dim=-1)
        text_feat = F.normalize(text_emb, dim=-1)
        query_feat = F.normalize(sketch_emb + text_emb, dim=-1)
        photo_all, text_all, query_all = (gather_with_grad(f) for f in (photo_feat, text_feat, query_feat))

        with torch.no_grad():
            groups_all, keys_all = gather_no_grad(groups), gather_no_grad(photo_keys)
            caption_targets = positive_targets(groups, torch.cat([groups_all, self.caption_group_queue]))
            photo_targets = positive_targets(photo_keys, torch.cat([keys_all, self.photo_key_queue]))
            targets = {"i2t": caption_targets, "t2i": caption_targets, "q2p": photo_targets, "p2q": photo_targets}
            if self.momentum_encoders is not None:
                ema_update(self._encoders(), self.momentum_encoders, self.momentum)
                photo_m, text_m, query_m = self._momentum_features(photos, sketches, text)
                momentum_all = [gather_no_grad(f) for f in (photo_m, text_m, query_m)]
                photo_bank, text_bank, query_bank = (
                    feature_bank(f, queue)
                    for f, queue in zip(momentum_all, (self.photo_queue, self.text_queue, self.query_queue))
                )
                targets = {
                    "i2t": soft_targets(photo_m, text_bank, logit_scale, caption_targets, alpha),
                    "t2i": soft_targets(text_m, photo_bank, logit_scale, caption_targets, alpha),
                    "q2p": soft_targets(query_m, photo_bank, logit_scale, photo_targets, alpha),
                    "p2q": soft_targets(photo_m, query_bank, logit_scale, photo_targets, alpha),
                }
        itc = 0.5 * (
            queued_contrastive(photo_feat, text_all, self.text_queue, logit_scale, targets["i2t"])
            + queued_contrastive(text_feat, photo_all, self.photo_queue, logit_scale, targets["t2i"])
        )
        itsc = 0.5 * (
            queued_contrastive(query_feat, photo_all, self.photo_queue, logit_scale, targets["q2p"])
            + queued_contrastive(photo_feat, query_all, self.query_queue, logit_scale, targets["p2q"])
        )
        if self.momentum_encoders is not None:
            # After the losses read the queues: this batch must not be its own queued negative.
            enqueue(
                [self.photo_queue, self.text_queue, self.query_queue, self.photo_key_queue, self.caption_group_queue],
                [*momentum_all, keys_all, groups_all],
                self.queue_ptr,
            )
        if not match:
            return {"itc": itc, "itsc": itsc}
        with torch.no_grad():
            similarity = logit_scale * photo_feat @ text_feat.T
        itm = self.grounded.hard_negative_loss(self.backbone, text, tokens[:batch], similarity, groups, seed, hardness)
        return {"itc": itc, "itsc": itsc, "itm": itm}

    @torch.no_grad()
    def _momentum_features(
        self, photos: torch.Tensor, sketches: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Momentum photo, caption and sketch+caption query features (L2-normalised)."""
        assert self.momentum_encoders is not None
        encoders = self.momentum_encoders
        batch = photos.shape[0]
        embeds, _ = _fused_image(
            encoders["backbone"], encoders["fusion"], self.fusion_layers, torch.cat([photos, sketches])
        )
        text_emb = _projected_text(encoders["backbone"], encoders["text_proj"], text)
        return (
            F.normalize(embeds[:batch], dim=-1),
            F.normalize(text_emb, dim=-1),
            F.normalize(embeds[batch:] + text_emb, dim=-1),
        )


def _fused_image(
    backbone: nn.Module, fusion: nn.Module, layers: list[int], images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _, tokens, maps = encode_image_tokens(backbone, images, layers)
    return fusion([m.float() for m in maps]), tokens


def _projected_text(backbone: nn.Module, text_proj: nn.Module, text: torch.Tensor) -> torch.Tensor:
    return text_proj(encode_text_tokens(backbone, text)[0].float())
