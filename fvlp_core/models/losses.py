"""Loss pieces shared by pretraining and fusion fine-tuning (distributed-aware)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _distributed() else 0


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


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, groups_a: torch.Tensor, groups_b: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised ``a`` and ``b``, negatives gathered from all ranks."""
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    all_groups_a, all_groups_b = gather_no_grad(groups_a), gather_no_grad(groups_b)
    a_to_b = logit_scale * a @ all_b.T
    b_to_a = logit_scale * b @ all_a.T
    return 0.5 * (
        soft_cross_entropy(a_to_b, positive_targets(groups_a, all_groups_b))
        + soft_cross_entropy(b_to_a, positive_targets(groups_b, all_groups_a))
    )


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor, same_group: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """For each row, one column drawn with probability softmax(similarity), never a positive.

    Rows whose every other column is a positive (all captions identical) fall back to
    uniform sampling over the other columns.
    """
    weights = F.softmax(similarity.float(), dim=1).masked_fill(same_group, 0.0).cpu()
    empty = weights.sum(dim=1) <= 0
    if empty.any():
        others = ~torch.eye(*weights.shape, dtype=torch.bool)
        weights[empty] = others[empty].float()
    return torch.multinomial(weights, 1, generator=generator).squeeze(1).to(similarity.device)


def matching_loss(logits: torch.Tensor, positives: int) -> torch.Tensor:
    """Binary image-text matching: the first ``positives`` rows match, the rest do not."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:positives] = 1
    return F.cross_entropy(logits.float(), labels)
