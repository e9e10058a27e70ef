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
from dataclasses import dataclass

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


# Similarities within this many float ulps of the true item's count as ties: the true
# similarity is computed once (in float64) and every other item's by a matrix kernel whose
# rounding depends on its shape, so an exact comparison could split a genuine tie.
TIE_ULPS = 16
QUERY_BLOCK = 2048
GALLERY_BLOCK = 1024  # a 2048 x 1024 float32 tile (8 MiB) keeps compare + count near the GEMM


@dataclass
class SimilarityScan:
    """What one blocked pass over queries x gallery similarities found, per query."""

    ranks: np.ndarray  # (Q,) 1-based rank of the true item, ties ranking it last
    top_rows: np.ndarray  # (Q, k) gallery rows of the k most similar items, best first
    top_scores: np.ndarray  # (Q, k) their similarities


def _true_similarities(
    queries: torch.Tensor, gallery: torch.Tensor, true_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's similarity to its own item in float64, and |query| * |item| (the scale of
    its rounding error), computed block by block so memory stays small."""
    sims = torch.empty(queries.shape[0], dtype=torch.float64, device=queries.device)
    scale = torch.empty_like(sims)
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        stop = start + QUERY_BLOCK
        q, g = queries[start:stop].double(), gallery[true_index[start:stop]].double()
        sims[start:stop] = (q * g).sum(dim=1)
        scale[start:stop] = q.norm(dim=1) * g.norm(dim=1)
    return sims, scale


def _count_per_row(mask: torch.Tensor) -> torch.Tensor:
    """How many entries of each row of a (n, m) bool tensor are True."""
    if mask.shape[1] % 8 == 0 and mask.shape[1] // 8 <= 255:
        # Eight bools per int64: summing m/8 of them adds each byte lane at most 255 times,
        # so no carry crosses lanes; then the eight lanes are added. ~30x cheaper than a
        # byte-wise sum, which would otherwise cost a third of the tile's matrix product.
        lanes = mask.view(torch.int64).sum(dim=1)
        return lanes.view(torch.uint8).reshape(-1, 8).sum(dim=1, dtype=torch.int64)
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int64)


def scan_similarities(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    true_index: np.ndarray | torch.Tensor,
    top_k: int = 0,
    query_block: int = QUERY_BLOCK,
    gallery_block: int = GALLERY_BLOCK,
) -> SimilarityScan:
    """Rank each query's true gallery item, and optionally find its ``top_k`` items, in one
    pass over the (Q x N) similarities, ``query_block x gallery_block`` at a time.

    ``queries``: (Q, D); ``gallery``: (N, D), read one block of rows at a time (a memory-mapped
    array works) and never copied or transposed whole; ``true_index``: (Q,) gallery rows.
    Rank = 1 + the number of OTHER items whose similarity is >= the true item's (less
    ``TIE_ULPS`` ulps), so ties rank the true item last. Memory added over the inputs is one
    tile and its mask, whatever N is.
    """
    q = _as_tensor(queries)
    g = _as_tensor(gallery, q.device).to(q.dtype)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} disagree on the embedding size")
    target = _as_tensor(
        np.asarray(true_index, dtype=np.int64) if not isinstance(true_index, torch.Tensor) else true_index, q.device
    ).long()
    if target.shape != (q.shape[0],):
        raise ValueError(f"true_index shape {tuple(target.shape)} does not match {q.shape[0]} queries")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= g.shape[0]):
        raise ValueError(f"true_index values must lie in 0..{g.shape[0] - 1}")
    k = min(top_k, g.shape[0])

    true_sim, scale = _true_similarities(q, g, target)
    threshold = (true_sim - TIE_ULPS * torch.finfo(q.dtype).eps * scale).to(q.dtype)
    ahead = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    top_scores = torch.empty((q.shape[0], k), dtype=q.dtype, device=q.device)
    top_rows = torch.empty((q.shape[0], k), dtype=torch.int64, device=q.device)
    tile_shape = (min(query_block, q.shape[0]), min(gallery_block, g.shape[0]))
    tile = torch.empty(tile_shape, dtype=q.dtype, device=q.device)
    mask = torch.empty(tile_shape, dtype=torch.bool, device=q.device)
    for q_start in range(0, q.shape[0], query_block):
        q_rows = q[q_start : q_start + query_block]
        n = q_rows.shape[0]
        block_threshold = threshold[q_start : q_start + n, None]
        block_target = target[q_start : q_start + n]
        count = torch.zeros(n, dtype=torch.int64, device=q.device)
        best_scores = torch.empty((n, 0), dtype=q.dtype, device=q.device)
        best_rows = torch.empty((n, 0), dtype=torch.int64, device=q.device)
        for g_start in range(0, g.shape[0], gallery_block):
            g_rows = g[g_start : g_start + gallery_block]
            m = g_rows.shape[0]
            sims, above = tile[:n, :m], mask[:n, :m]
            torch.mm(q_rows, g_rows.t(), out=sims)  # the transposed view, not a copy
            torch.ge(sims, block_threshold, out=above)
            count += _count_per_row(above)
            # The true item itself is the "1 +" of the rank: take it back out of the count.
            own = ((block_target >= g_start) & (block_target < g_start + m)).nonzero().squeeze(1)
            count[own] -= above[own, block_target[own] - g_start].long()
            if k:
                scores, rows = torch.topk(sims, min(k, m), dim=1)
                merged = torch.cat([best_scores, scores], dim=1)
                best_scores, picked = torch.topk(merged, min(k, merged.shape[1]), dim=1)
                best_rows = torch.gather(torch.cat([best_rows, rows + g_start], dim=1), 1, picked)
        ahead[q_start : q_start + n] = count
        top_scores[q_start : q_start + n] = best_scores
        top_rows[q_start : q_start + n] = best_rows
    return SimilarityScan((ahead + 1).cpu().numpy(), top_rows.cpu().numpy(), top_scores.cpu().numpy())


def rank_true_items(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    true_index: np.ndarray | torch.Tensor | Sequence[int],
    query_block: int = QUERY_BLOCK,
    gallery_block: int = GALLERY_BLOCK,
) -> np.ndarray:
    """1-based rank of each query's true gallery item (``scan_similarities``), for queries of
    any leading shape, e.g. (episodes, steps, D); ``true_index`` is shaped like the leading
    query dimensions or like the first one (one per episode, broadcast over steps)."""
    q = _as_tensor(queries)
    lead = q.shape[:-1]
    target = _as_tensor(
        np.asarray(true_index, dtype=np.int64) if not isinstance(true_index, torch.Tensor) else true_index, q.device
    ).long()
    if target.shape != lead:
        if target.ndim == 1 and len(lead) >= 1 and target.shape[0] == lead[0]:
            target = target.reshape(-1, *([1] * (len(lead) - 1))).expand(lead)
        else:
            raise ValueError(f"true_index shape {tuple(target.shape)} does not match queries {tuple(lead)}")
    scan = scan_similarities(q.reshape(-1, q.shape[-1]), gallery, target.reshape(-1), 0, query_block, gallery_block)
    return scan.ranks.reshape(tuple(lead))


@dataclass
class CaptionPhotoRanking:
    """Caption->photo and photo->caption ranks (and top-k candidates) from one blocked pass each.

    A photo's caption rank is its best-placed own caption's; photos without a caption are not
    queries, so ``image_to_text`` has one row per entry of ``image_rows``.
    """

    text_to_image: SimilarityScan  # one row per caption; the true item is the photo it describes
    image_rows: np.ndarray  # gallery rows of the photos that have a caption
    image_to_text: SimilarityScan  # one row per such photo; the true item is its best own caption


def rank_captions_and_photos(
    text_embeddings: np.ndarray | torch.Tensor,
    image_embeddings: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | Sequence[int],
    top_k: int = 0,
) -> CaptionPhotoRanking:
    """``text_to_image[i]`` is the image row that text ``i`` describes (an image may have
    several texts, or none)."""
    mapping = np.asarray(text_to_image, dtype=np.int64)
    texts = _as_tensor(text_embeddings)
    images = _as_tensor(image_embeddings, texts.device).to(texts.dtype)
    if mapping.shape != (texts.shape[0],):
        raise ValueError(f"text_to_image needs one entry per text ({texts.shape[0]}), got shape {mapping.shape}")
    t2i = scan_similarities(texts, images, mapping, top_k)
    # The own caption an image is most similar to is the one its rank is counted against.
    own = _true_similarities(texts, images, torch.from_numpy(mapping).to(texts.device))[0].cpu().numpy()
    order = np.lexsort((-own, mapping))
    first = order[np.r_[True, mapping[order][1:] != mapping[order][:-1]]] if len(order) else order
    image_rows = mapping[first]
    queries = images if len(image_rows) == images.shape[0] else images[torch.from_numpy(image_rows).to(texts.device)]
    return CaptionPhotoRanking(t2i, image_rows, scan_similarities(queries, texts, first, top_k))


def recall_at(t2i: np.ndarray, i2t: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """R@K (percent) from caption->photo and photo->caption ranks."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_r_at_{k}"] = 100.0 * float((t2i <= k).mean())
        out[f"i2t_r_at_{k}"] = 100.0 * float((i2t <= k).mean())
    return out


def text_image_recall(
    text_embeddings: np.ndarray | torch.Tensor,
    image_embeddings: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | Sequence[int],
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Text->image and image->text R@K (percent), with the same ">=" tie rule: an image counts
    as found at K when ANY of its texts ranks within K; images without a text are skipped."""
    ranking = rank_captions_and_photos(text_embeddings, image_embeddings, text_to_image)
    return recall_at(ranking.text_to_image.ranks, ranking.image_to_text.ranks, ks)


def matching_scores(positive: np.ndarray, negative: np.ndarray) -> dict[str, float]:
    """Image-text matching on balanced held-out pairs: accuracy at P(match) = 0.5 and ROC AUC
    (the chance a matching pair outscores a non-matching one, ties counting half), in percent.
    Balanced pairs make both 50 for a head that knows nothing (a constant prior included)."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    accuracy = (np.sum(positive > 0.5) + np.sum(negative <= 0.5)) / (len(positive) + len(negative))
    ranks = rankdata(np.concatenate([positive, negative]))  # ties get their average rank
    wins = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2  # Mann-Whitney U
    return {"accuracy": 100.0 * float(accuracy), "auc": 100.0 * float(wins / (len(positive) * len(negative)))}


def _reranked(scan: SimilarityScan, logits: np.ndarray, is_true: np.ndarray) -> np.ndarray:
    """The true item's place among the re-scored candidates (ITM logit + similarity), else its
    similarity rank: an item outside the top k keeps its order below them."""
    rescored = logits + scan.top_scores
    true_score = np.where(is_true, rescored, -np.inf).max(axis=1, initial=-np.inf)
    return np.where(is_true.any(axis=1), (rescored >= true_score[:, None]).sum(axis=1), scan.ranks)


def reranked_text_image_recall(
    ranking: CaptionPhotoRanking,
    text_to_image: np.ndarray | Sequence[int],
    text_to_image_logits: np.ndarray,
    image_to_text_logits: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """R@K after the reference's re-ranking: each query's top-k candidates (``ranking``'s) are
    re-ordered by ITM logit + similarity; the rest keep their order below. The logits are the
    ITM head's for ``ranking.text_to_image.top_rows`` [C, k] and ``ranking.image_to_text.top_rows``
    [P, k]. Ties rank the true item last, as everywhere."""
    mapping = np.asarray(text_to_image, dtype=np.int64)
    t2i_scan, i2t_scan = ranking.text_to_image, ranking.image_to_text
    t2i = _reranked(t2i_scan, text_to_image_logits, t2i_scan.top_rows == mapping[:, None])
    i2t = _reranked(i2t_scan, image_to_text_logits, mapping[i2t_scan.top_rows] == ranking.image_rows[:, None])
    return recall_at(t2i, i2t, ks)
