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
    """Exact search: every gallery embedding scored against the query; with ``approximate``
    (a faiss index over the same embeddings, for large galleries) the top photos come from it."""

    photo_ids: Sequence[str]
    embeddings: np.ndarray  # [N, D], L2-normalised
    approximate: Any = None  # faiss index, inner product, rows in gallery order

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.photo_ids):
            raise ValueError(f"{len(self.photo_ids)} photo ids but embeddings of shape {self.embeddings.shape}")

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.embeddings @ np.asarray(query, dtype=np.float32)

    def top(self, query: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` best photos, best first (ties keep gallery order, as evaluation's ranks count them)."""
        if self.approximate is not None:
            return self._top_approximate(query, k)
        return self.top_exact(query, k)

    def _top_approximate(self, query: np.ndarray, k: int) -> list[Hit]:
        k = max(0, min(k, len(self.photo_ids)))
        if k == 0:
            return []
        scores, rows = self.approximate.search(np.asarray(query, dtype=np.float32)[None, :], k)
        found = [(float(score), int(row)) for score, row in zip(scores[0], rows[0]) if row >= 0]
        return [Hit(row, score, rank) for rank, (score, row) in enumerate(found, start=1)]

    def top_exact(self, query: np.ndarray, k: int) -> list[Hit]:
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


def build_hnsw(embeddings: np.ndarray, neighbours: int = 32, ef_construction: int = 80, ef_search: int = 128) -> Any:
    """An HNSW graph (faiss, inner product) over normalised embeddings, rows in gallery order."""
    import faiss

    index = faiss.IndexHNSWFlat(embeddings.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    index.hnsw.efSearch = ef_search
    return index


def approximate_recall(search: GallerySearch, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-``k`` photos the approximate index also returns, over ``queries``."""
    found = 0
    for query in queries:
        exact = {hit.row for hit in search.top_exact(query, k)}
        found += len(exact & {hit.row for hit in search.top(query, k)})
    return found / (len(queries) * min(k, len(search.photo_ids)))


def probe_queries(embeddings: np.ndarray, count: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Queries near gallery photos to measure recall with: a photo's embedding plus a random
    offset of length ``noise`` (a drawing is near its photo, not on it), renormalised."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(embeddings), size=min(count, len(embeddings)), replace=False)
    offsets = rng.standard_normal((len(rows), embeddings.shape[1])).astype(np.float32)
    offsets *= noise / np.linalg.norm(offsets, axis=1, keepdims=True)
    queries = embeddings[rows] + offsets
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)
