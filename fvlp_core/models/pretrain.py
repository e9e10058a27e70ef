"""FVLP pretraining model: ITC with momentum encoders, feature queues and soft targets, plus ITM."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fvlp_core.models.factory import create_backbone, encode_image_tokens, encode_text_tokens
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

# open_clip's temperature bounds (logit scale <= 100); the reference recipe uses (0.001, 0.5).
DEFAULT_TEMPERATURE_RANGE = (0.01, 1.0)
# Group id that never matches a real one: marks queue slots not filled yet.
EMPTY_GROUP = -(2**62)


class FVLPPretrain(nn.Module):
    """``backbone`` (open_clip CLIP), its EMA copy ``momentum_backbone``, queues and the ITM encoder."""

    image_queue: torch.Tensor
    text_queue: torch.Tensor
    group_queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        model_name: str,
        init_checkpoint: Path | None = None,
        queue_size: int = 1024,
        momentum: float = 0.995,
        alpha: float = 0.4,
        temperature_range: tuple[float, float] = DEFAULT_TEMPERATURE_RANGE,
    ):
        super().__init__()
        self.model_name = model_name
        self.momentum = momentum
        self.alpha = alpha
        self.temperature_range = (float(temperature_range[0]), float(temperature_range[1]))
        self.backbone = create_backbone(model_name, init_checkpoint)
        self.grounded = ImageGroundedTextEncoder.for_backbone(self.backbone)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        for param in self.momentum_backbone.parameters():
            param.requires_grad_(False)
        dim = self.backbone.text_projection.shape[1]
        self.register_buffer("image_queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("group_queue", torch.full((queue_size,), EMPTY_GROUP, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        groups: torch.Tensor,
        seed: int,
        alpha: float | None = None,
        hardness: float = 1.0,
        match: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch. ``groups``: equal ids mark pairs with the same caption; ``seed`` drives
        the hard-negative draw so a resumed run samples exactly what an uninterrupted one did;
        ``alpha`` overrides the soft-target weight (the trainer ramps it up over the first epoch);
        ``hardness`` weighs similarity-drawn against uniform ITM negatives; ``match=False`` skips
        the ITM loss (and its forward pass)."""
        alpha = self.alpha if alpha is None else alpha
        image_emb, image_tokens, _ = encode_image_tokens(self.backbone, images)
        text_emb, _ = encode_text_tokens(self.backbone, text)
        image_feat = F.normalize(image_emb.float(), dim=-1)
        text_feat = F.normalize(text_emb.float(), dim=-1)
        logit_scale = clamped_logit_scale(self.backbone.logit_scale, self.temperature_range)

        # ITC: this batch's columns (all ranks) are the ONLINE features, so both towers get
        # gradients from the start as in CLIP; the queue adds older momentum features as extra
        # negatives. Soft targets mix the momentum model's similarities (weight alpha) with the
        # caption-group positives. (ALBEF puts momentum features in the batch columns too; with
        # a few hundred steps the momentum model is still mostly its random init, and
        # aligning to it stalls learning.)
        image_all, text_all = gather_with_grad(image_feat), gather_with_grad(text_feat)
        with torch.no_grad():
            groups_all = gather_no_grad(groups)
            targets = positive_targets(groups, torch.cat([groups_all, self.group_queue]))
            i2t_targets = t2i_targets = targets
            # Without soft targets and queue the momentum model feeds nothing: skip its forward pass.
            if alpha > 0 or self.image_queue.shape[1] > 0:
                ema_update(self.backbone, self.momentum_backbone, self.momentum)
                image_m = F.normalize(encode_image_tokens(self.momentum_backbone, images)[0].float(), dim=-1)
                text_m = F.normalize(encode_text_tokens(self.momentum_backbone, text)[0].float(), dim=-1)
                image_m_all, text_m_all = gather_no_grad(image_m), gather_no_grad(text_m)
                image_m_bank = feature_bank(image_m_all, self.image_queue)
                text_m_bank = feature_bank(text_m_all, self.text_queue)
                i2t_targets = soft_targets(image_m, text_m_bank, logit_scale, targets, alpha)
                t2i_targets = soft_targets(text_m, image_m_bank, logit_scale, targets, alpha)
        itc = 0.5 * (
            queued_contrastive(image_feat, text_all, self.text_queue, logit_scale, i2t_targets)
            + queued_contrastive(text_feat, image_all, self.image_queue, logit_scale, t2i_targets)
        )
        if alpha > 0 or self.image_queue.shape[1] > 0:
            # After the loss read the queues: this batch must not be its own queued negative.
            enqueue(
                [self.image_queue, self.text_queue, self.group_queue],
                [image_m_all, text_m_all, groups_all],
                self.queue_ptr,
            )
        if not match:
            return {"itc": itc}
        with torch.no_grad():
            similarity = logit_scale * image_feat @ text_feat.T
        itm = self.grounded.hard_negative_loss(self.backbone, text, image_tokens, similarity, groups, seed, hardness)
        return {"itc": itc, "itm": itm}

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups for the optimizer (no separate head learning rate in pretraining)."""
        return {"backbone": [p for n, p in self.named_parameters() if p.requires_grad]}
