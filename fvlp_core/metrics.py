"""Sketch-less facial image retrieval metrics (m@A, m@B, wm@A, wm@B, acc@K) and ranking.

Definitions follow the reference evaluation (see docs/FVLP.md, "Metrics"): for an episode
of T steps, r_t >= 1 is the rank of the true photo among N gallery photos at step t,
counting every gallery item whose similarity is >= the true photo's (a tie ranks the
true photo LAST). Everything is reported in percent, averaged over episodes.

- m@B  = mean_t 1 / r_t                      (mean reciprocal rank over steps)
- m@A  = mean_t (N - r_t) / (N - 1)          (mean ranking percentile over steps)
- wm@* = mean_t w_t * (...), w_t = exp(1 - t/T) / e, t = 1..T, still divided by T
- acc@K at step t = share of episodes with r_t <= K (a curve over steps)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

ACC_KS = (1, 5, 10)
RECALL_KS = (1, 5, 10)


def step_weights(steps: int) -> np.ndarray:
    """w_t = exp(1 - t/T) / e for t = 1..T (early steps weigh more)."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    return np.exp(1.0 - t / steps) / math.e


def _check_ranks(ranks: np.ndarray, gallery_size: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] == 0 or ranks.shape[1] == 0:
        raise ValueError(f"ranks must have shape (episodes, steps) with both > 0, got {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be integers (1-based), got dtype {ranks.dtype}")
    if gallery_size < 2:
        raise ValueError(f"gallery_size must be >= 2 (m@A divides by N - 1), got {gallery_size}")
    low, high = int(ranks.min()), int(ranks.max())
    if low < 1 or high > gallery_size:
        bad = np.argwhere((ranks < 1) | (ranks > gallery_size))[0]
        raise ValueError(
            f"rank {int(ranks[tuple(bad)])} at episode {bad[0]}, step {bad[1]} is outside 1..{gallery_size}"
        )
    return ranks.astype(np.float64)


def sketch_retrieval_metrics(ranks: np.ndarray, gallery_size: int) -> dict[str, object]:
    """m@A, m@B, wm@A, wm@B (percent floats) and acc@1/5/10 (percent arrays over steps).

    ``ranks``: integer array (episodes, steps) of 1-based ranks of the true photo.
    """
    r = _check_ranks(ranks, gallery_size)
    steps = r.shape[1]
    weights = step_weights(steps)
    reciprocal = 1.0 / r
    percentile = (gallery_size - r) / (gallery_size - 1)
    out: dict[str, object] = {
        "m_at_A": 100.0 * float(percentile.mean()),
        "m_at_B": 100.0 * float(reciprocal.mean()),
        # Weighted, yet divided by T (not by sum(w)), as the reference does.
        "wm_at_A": 100.0 * float((percentile * weights).mean()),
        "wm_at_B": 100.0 * float((reciprocal * weights).mean()),
    }
    for k in ACC_KS:
        out[f"acc_at_{k}"] = 100.0 * (r <= k).mean(axis=0)
    return out


def step_curves(ranks: np.ndarray, gallery_size: int) -> dict[str, np.ndarray]:
    """Per-step means (percent): rank percentile (N - r)/(N - 1) and reciprocal rank 1/r."""
    r = _check_ranks(ranks, gallery_size)
    return {
        "rank_percentile": 100.0 * ((gallery_size - r) / (gallery_size - 1)).mean(axis=0),
        "reciprocal_rank": 100.0 * (1.0 / r).mean(axis=0),
    }


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return tensor.to(device) if device is not None else tensor


def rank_true_items(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    true_index: np.ndarray | torch.Tensor | Sequence[int],
    max_block_elements: int = 1 << 26,
) -> np.ndarray:
    """1-based rank of each query's true gallery item, for every query at once.

    ``queries``: (..., D) embeddings, e.g. (episodes, steps, D); ``gallery``: (N, D);
    ``true_index``: the gallery row of each query's true item, shaped like the leading
    query dimensions or like its first dimension (one per episode, broadcast over steps).
    Similarity is the dot product (embeddings are L2-normalised upstream). Rank = number
    of gallery items with similarity >= the true item's, so ties rank the true item last.

    Queries go through as matrix products in blocks of at most ``max_block_elements``
    similarities, so memory stays bounded at any gallery size.
    """
    q = _as_tensor(queries)
    g = _as_tensor(gallery, q.device).to(q.dtype)
    if g.ndim != 2 or q.shape[-1] != g.shape[1]:
        raise ValueError(f"queries (..., {q.shape[-1]}) and gallery {tuple(g.shape)} disagree on the embedding size")
    lead = q.shape[:-1]
    target = _as_tensor(
        np.asarray(true_index, dtype=np.int64) if not isinstance(true_index, torch.Tensor) else true_index, q.device
    ).long()
    if target.shape != lead:
        if target.ndim == 1 and len(lead) >= 1 and target.shape[0] == lead[0]:
            target = target.reshape(-1, *([1] * (len(lead) - 1))).expand(lead)
        else:
            raise ValueError(f"true_index shape {tuple(target.shape)} does not match queries {tuple(lead)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= g.shape[0]):
        raise ValueError(f"true_index values must lie in 0..{g.shape[0] - 1}")

    flat_q = q.reshape(-1, q.shape[-1])
    flat_t = target.reshape(-1)
    block = max(1, max_block_elements // max(1, g.shape[0]))
    ranks = torch.empty(flat_q.shape[0], dtype=torch.int64, device=q.device)
    g_t = g.T.contiguous()
    for start in range(0, flat_q.shape[0], block):
        sims = flat_q[start : start + block] @ g_t
        # The true similarity comes from the same product, so it ties with itself exactly.
        true_sim = sims.gather(1, flat_t[start : start + block, None])
        ranks[start : start + block] = (sims >= true_sim).sum(dim=1)
    return ranks.reshape(lead).cpu().numpy()


def text_image_recall(
    text_embeddings: np.ndarray | torch.Tensor,
    image_embeddings: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | Sequence[int],
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Text->image and image->text R@K (percent), with the same ">=" tie rule.

    ``text_to_image[i]`` is the image row that text ``i`` describes (an image may have
    several texts). Image->text counts an image as found at K when ANY of its texts ranks
    within K; images without a text are skipped.
    """
    mapping = np.asarray(text_to_image, dtype=np.int64)
    texts = _as_tensor(text_embeddings)
    images = _as_tensor(image_embeddings, texts.device).to(texts.dtype)
    if mapping.shape != (texts.shape[0],):
        raise ValueError(f"text_to_image needs one entry per text ({texts.shape[0]}), got shape {mapping.shape}")
    t2i = rank_true_items(texts, images, mapping)

    # Image -> text: rank each (image, own text) pair among all texts, keep the best per image.
    sims = (images @ texts.T).cpu().numpy()
    own = sims[mapping, np.arange(len(mapping))]
    pair_ranks = (sims[mapping] >= own[:, None]).sum(axis=1)
    best = np.full(images.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, mapping, pair_ranks)
    i2t = best[best != np.iinfo(np.int64).max]

    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_r_at_{k}"] = 100.0 * float((t2i <= k).mean())
        out[f"i2t_r_at_{k}"] = 100.0 * float((i2t <= k).mean())
    return out


def matching_scores(positive: np.ndarray, negative: np.ndarray) -> dict[str, float]:
    """Image-text matching on balanced held-out pairs: accuracy at P(match) = 0.5 and ROC AUC
    (the chance a matching pair outscores a non-matching one, ties counting half), in percent.
    Balanced pairs make both 50 for a head that knows nothing (a constant prior included)."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    accuracy = (np.sum(positive > 0.5) + np.sum(negative <= 0.5)) / (len(positive) + len(negative))
    ranks = rankdata(np.concatenate([positive, negative]))  # ties get their average rank
    wins = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2  # Mann-Whitney U
    return {"accuracy": 100.0 * float(accuracy), "auc": 100.0 * float(wins / (len(positive) * len(negative)))}


def reranked_text_image_recall(
    similarity: np.ndarray,
    text_to_image: np.ndarray | Sequence[int],
    t2i_match: tuple[np.ndarray, np.ndarray],
    i2t_match: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """R@K after the reference's re-ranking: each query's top-k candidates by ``similarity``
    (texts x images) are re-ordered by ITM logit + similarity; the rest keep their order below.

    ``t2i_match`` = (candidate image rows [T, k], their ITM logits [T, k]) per text;
    ``i2t_match`` = (candidate text rows [N, k], their logits [N, k]) per image. Ties rank the
    true item last, as everywhere.
    """
    mapping = np.asarray(text_to_image, dtype=np.int64)
    t2i_rows, t2i_logits = t2i_match
    i2t_rows, i2t_logits = i2t_match
    texts = np.arange(len(mapping))
    # Text -> image: the true image's place among the re-scored candidates, else its plain rank.
    plain_t2i = (similarity >= similarity[texts, mapping][:, None]).sum(axis=1)
    rescored = t2i_logits + np.take_along_axis(similarity, t2i_rows, axis=1)
    is_true = t2i_rows == mapping[:, None]
    true_score = np.where(is_true, rescored, -np.inf).max(axis=1)
    t2i = np.where(is_true.any(axis=1), (rescored >= true_score[:, None]).sum(axis=1), plain_t2i)

    # Image -> text: the best-placed of the image's own texts, the same way.
    columns = similarity.T  # images x texts
    images = np.unique(mapping)
    own = mapping[None, :] == images[:, None]  # images (with a text) x texts
    best_plain = np.where(own, columns[images], -np.inf).max(axis=1)
    plain_i2t = (columns[images] >= best_plain[:, None]).sum(axis=1)
    rows, logits = i2t_rows[images], i2t_logits[images]
    rescored_i2t = logits + np.take_along_axis(columns[images], rows, axis=1)
    is_own = mapping[rows] == images[:, None]
    best_own = np.where(is_own, rescored_i2t, -np.inf).max(axis=1)
    i2t = np.where(is_own.any(axis=1), (rescored_i2t >= best_own[:, None]).sum(axis=1), plain_i2t)

    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_r_at_{k}"] = 100.0 * float((t2i <= k).mean())
        out[f"i2t_r_at_{k}"] = 100.0 * float((i2t <= k).mean())
    return out
