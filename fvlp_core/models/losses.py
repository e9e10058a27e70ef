"""Loss pieces shared by pretraining and fusion fine-tuning (distributed-aware)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, gradients flowing back to each rank's own rows (negatives across GPUs)."""
    if not _distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def positive_targets(row_groups: torch.Tensor, column_groups: torch.Tensor) -> torch.Tensor:
    """Row-normalised targets: every column sharing the row's group (e.g. identical caption) is a positive."""
    same = (row_groups[:, None] == column_groups[None, :]).float()
    return same / same.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1).mean()


def feature_bank(columns: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """[D, N + Q]: every rank's batch ``columns`` [N, D] beside the momentum ``queue`` [D, Q]."""
    return torch.cat([columns.T, queue.to(columns.dtype)], dim=1)


def queued_contrastive(
    rows: torch.Tensor, columns: torch.Tensor, queue: torch.Tensor, logit_scale: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """InfoNCE of ``rows`` [B, D] against every rank's ``columns`` [N, D] plus the momentum
    ``queue`` [D, Q] (Q may be 0), with ``targets`` [B, N + Q] (hard or soft)."""
    return soft_cross_entropy(logit_scale * rows @ feature_bank(columns, queue), targets)


def soft_targets(
    momentum_rows: torch.Tensor,
    momentum_bank: torch.Tensor,
    logit_scale: torch.Tensor,
    hard: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """ALBEF's distillation targets: the momentum model's similarities (weight ``alpha``) mixed
    with the hard positives."""
    if alpha == 0:
        return hard
    return alpha * F.softmax(logit_scale * momentum_rows @ momentum_bank, dim=1) + (1 - alpha) * hard


def clamped_logit_scale(logit_scale: nn.Parameter, temperature_range: tuple[float, float]) -> torch.Tensor:
    """exp(logit_scale) after clamping the learnable temperature into ``temperature_range``."""
    low, high = temperature_range
    with torch.no_grad():
        logit_scale.clamp_(math.log(1 / high), math.log(1 / low))
    return logit_scale.exp()


@torch.no_grad()
def ema_update(online: nn.Module, ema: nn.Module, momentum: float) -> None:
    for online_param, ema_param in zip(online.parameters(), ema.parameters()):
        ema_param.mul_(momentum).add_(online_param.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def enqueue(queues: list[torch.Tensor], values: list[torch.Tensor], pointer: torch.Tensor) -> None:
    """Write each of ``values`` (one row per example) into its ring buffer in ``queues`` (slots
    along the last dimension) at ``pointer``, then advance the pointer."""
    size = queues[0].shape[-1]
    if size == 0:
        return
    count = values[0].shape[0]
    slots = (pointer + torch.arange(count, device=pointer.device)) % size
    for queue, value in zip(queues, values):
        queue[..., slots] = value.movedim(0, -1).to(queue.dtype)
    pointer.fill_(int((pointer + count) % size))


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor, same_group: torch.Tensor, generator: torch.Generator, hardness: float = 1.0
) -> torch.Tensor:
    """For each row, one column drawn with probability ``hardness`` * softmax(similarity) +
    (1 - ``hardness``) * uniform, never a positive.

    Rows whose every other column is a positive (all captions identical) fall back to
    uniform sampling over the other columns. Drawn where ``similarity`` lives, with
    ``generator`` on that device, and without reading anything back to the host: a training
    step on a GPU does not wait here.
    """
    others = (~same_group).float()
    uniform = others / others.sum(dim=1, keepdim=True).clamp_min(1.0)
    weights = hardness * F.softmax(similarity.float(), dim=1).masked_fill(same_group, 0.0) + (1 - hardness) * uniform
    not_self = ~torch.eye(*weights.shape, dtype=torch.bool, device=weights.device)
    weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, not_self.float())
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def matching_loss(logits: torch.Tensor, positives: int) -> torch.Tensor:
    """Binary image-text matching: the first ``positives`` rows match, the rest do not."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:positives] = 1
    return F.cross_entropy(logits.float(), labels)
