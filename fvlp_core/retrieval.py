"""Retrieval over a gallery index with the query evaluation scores.

A drawing step's query is exactly what evaluation computes for an episode step: the
sketch-only embedding without a description, the fused sketch+text embedding with one, both
from :meth:`fvlp_core.embed.FVLPEncoder.encode_sketch_queries` (the call evaluation's
``EpisodeEmbedder`` makes). Photos are ranked by cosine similarity, one matrix product over
the normalised gallery embeddings, as evaluation ranks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Hit:
    row: int  # position in the gallery
    score: float  # cosine similarity
    rank: int  # 1 = best


@dataclass
class GallerySearch:
    """Exact search: every gallery embedding scored against the query."""

    photo_ids: Sequence[str]
    embeddings: np.ndarray  # [N, D], L2-normalised

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.photo_ids):
            raise ValueError(f"{len(self.photo_ids)} photo ids but embeddings of shape {self.embeddings.shape}")

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.embeddings @ np.asarray(query, dtype=np.float32)

    def top(self, query: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` best photos, best first (ties keep gallery order, as evaluation's ranks count them)."""
        scores = self.scores(query)
        k = max(0, min(k, len(scores)))
        if k == 0:
            return []
        candidates = np.argpartition(-scores, k - 1)[:k]
        best = candidates[np.lexsort((candidates, -scores[candidates]))]
        return [Hit(int(row), float(scores[row]), rank) for rank, row in enumerate(best.tolist(), start=1)]

    def rank_of(self, query: np.ndarray, row: int) -> int:
        """The rank evaluation gives photo ``row``: 1 + the photos scoring higher, ties counted against it."""
        scores = self.scores(query)
        return int((scores >= scores[row]).sum())


def sketch_query(encoder: Any, sketch: Image.Image, description: str | None) -> np.ndarray:
    """The query of one drawing step: fused with ``description`` when there is one, else the sketch alone."""
    only, fused = encoder.encode_sketch_queries([sketch], [description or ""])
    chosen = fused if description else only
    return np.asarray(chosen.detach().cpu().numpy() if hasattr(chosen, "detach") else chosen, dtype=np.float32)[0]
