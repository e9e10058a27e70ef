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
    gather_no_grad,
    gather_with_grad,
    matching_loss,
    positive_targets,
    sample_hard_negatives,
    soft_cross_entropy,
)

MAX_LOGIT_SCALE = 100.0
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
    ):
        super().__init__()
        self.model_name = model_name
        self.momentum = momentum
        self.alpha = alpha
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

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for online, ema in zip(self.backbone.parameters(), self.momentum_backbone.parameters()):
            ema.mul_(self.momentum).add_(online.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, groups: torch.Tensor) -> None:
        size = self.image_queue.shape[1]
        if size == 0:
            return
        n = image_feat.shape[0]
        slots = (self.queue_ptr + torch.arange(n, device=groups.device)) % size
        self.image_queue[:, slots] = image_feat.T.to(self.image_queue.dtype)
        self.text_queue[:, slots] = text_feat.T.to(self.text_queue.dtype)
        self.group_queue[slots] = groups
        self.queue_ptr.fill_(int((self.queue_ptr + n) % size))

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, seed: int, alpha: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch. ``groups``: equal ids mark pairs with the same caption; ``seed`` drives
        the hard-negative draw so a resumed run samples exactly what an uninterrupted one did;
        ``alpha`` overrides the soft-target weight (the trainer ramps it up over the first epoch)."""
        alpha = self.alpha if alpha is None else alpha
        image_emb, image_tokens, _ = encode_image_tokens(self.backbone, images)
        text_emb, _ = encode_text_tokens(self.backbone, text)
        image_feat = F.normalize(image_emb.float(), dim=-1)
        text_feat = F.normalize(text_emb.float(), dim=-1)
        with torch.no_grad():
            self.backbone.logit_scale.clamp_(0, torch.log(torch.tensor(MAX_LOGIT_SCALE)).item())
        logit_scale = self.backbone.logit_scale.exp()

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
                self._momentum_update()
                image_m = F.normalize(encode_image_tokens(self.momentum_backbone, images)[0].float(), dim=-1)
                text_m = F.normalize(encode_text_tokens(self.momentum_backbone, text)[0].float(), dim=-1)
                image_m_all, text_m_all = gather_no_grad(image_m), gather_no_grad(text_m)
                image_m_bank = torch.cat([image_m_all.T, self.image_queue.float()], dim=1)
                text_m_bank = torch.cat([text_m_all.T, self.text_queue.float()], dim=1)
                i2t_targets = alpha * F.softmax(logit_scale * image_m @ text_m_bank, dim=1) + (1 - alpha) * targets
                t2i_targets = alpha * F.softmax(logit_scale * text_m @ image_m_bank, dim=1) + (1 - alpha) * targets
                self._enqueue(image_m_all, text_m_all, groups_all)
        text_bank = torch.cat([text_all.T, self.text_queue.float()], dim=1)
        image_bank = torch.cat([image_all.T, self.image_queue.float()], dim=1)
        itc = 0.5 * (
            soft_cross_entropy(logit_scale * image_feat @ text_bank, i2t_targets)
            + soft_cross_entropy(logit_scale * text_feat @ image_bank, t2i_targets)
        )

        itm = self._itm_loss(text, image_tokens, image_feat, text_feat, groups, logit_scale, seed)
        return {"loss": itc + itm, "itc": itc.detach(), "itm": itm.detach()}

    def _itm_loss(self, text, image_tokens, image_feat, text_feat, groups, logit_scale, seed) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        same = groups[:, None] == groups[None, :]
        with torch.no_grad():
            similarity = logit_scale * image_feat @ text_feat.T
        negative_text = sample_hard_negatives(similarity, same, generator)
        negative_image = sample_hard_negatives(similarity.T, same, generator)
        all_text = torch.cat([text, text[negative_text], text])
        all_tokens = torch.cat([image_tokens, image_tokens, image_tokens[negative_image]])
        logits = self.grounded(self.backbone, all_text, all_tokens)
        return matching_loss(logits, positives=text.shape[0])

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups for the optimizer (no separate head learning rate in pretraining)."""
        return {"backbone": [p for n, p in self.named_parameters() if p.requires_grad]}
