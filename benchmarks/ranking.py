"""Ranking at gallery scale: time against the machine's GEMM rate, and memory added.

Evaluation ranks every sketch step (450 episodes x 50 steps = 22,500 queries, 256-d) against
the gallery; caption<->photo recall ranks every caption against every photo and back. Both
run through ``fvlp_core.metrics.scan_similarities``: tiles of the similarity matrix, a
comparison and a count per tile, the gallery read a block of rows at a time.

For each gallery size this prints, measured side by side in one process:

* ranking: ``rank_true_items`` (the evaluation's call);
* GEMM floor: the bare matrix products of the same tiles, nothing else (the physical limit:
  no ranking can do less arithmetic); ratio = ranking / floor;
* before: the previous implementation (queries in blocks of 2^26 similarities against one
  transposed copy of the whole gallery, then compare and count), for the before/after;
* memory added over the inputs: the process's peak resident set (Linux VmHWM, reset just
  before the call) minus its resident set before it, each method in a fresh child process.

Ranks are checked against the per-query loop in float64 on a sample of queries first.
``--recall`` adds caption<->photo recall (one caption per photo) at its own sizes.

Usage: python -m benchmarks.ranking [--sizes 45000 150000 450000] [--recall 10000 30000 100000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.isolated import peak_added_mib, run_isolated
from fvlp_core.metrics import (
    GALLERY_BLOCK,
    QUERY_BLOCK,
    rank_captions_and_photos,
    rank_true_items,
)

EPISODES, STEPS, DIM = 450, 50, 256


def _embeddings(rows: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


def _inputs(gallery_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    queries = _embeddings(EPISODES * STEPS, 1).reshape(EPISODES, STEPS, DIM)
    gallery = _embeddings(gallery_size, 2)
    true_index = torch.from_numpy(np.random.default_rng(0).choice(gallery_size, EPISODES, replace=False))
    return queries, gallery, true_index


def gemm_floor(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    flat = queries.reshape(-1, DIM)
    tile = torch.empty(QUERY_BLOCK, GALLERY_BLOCK)
    for q_start in range(0, flat.shape[0], QUERY_BLOCK):
        q_rows = flat[q_start : q_start + QUERY_BLOCK]
        for g_start in range(0, gallery.shape[0], GALLERY_BLOCK):
            g_rows = gallery[g_start : g_start + GALLERY_BLOCK]
            torch.mm(q_rows, g_rows.t(), out=tile[: q_rows.shape[0], : g_rows.shape[0]])


def before(queries: torch.Tensor, gallery: torch.Tensor, true_index: torch.Tensor) -> np.ndarray:
    """The implementation this benchmark replaced, kept here as the 'before' measurement."""
    flat = queries.reshape(-1, DIM)
    targets = true_index.repeat_interleave(STEPS)
    block = max(1, (1 << 26) // gallery.shape[0])
    ranks = torch.empty(flat.shape[0], dtype=torch.int64)
    g_t = gallery.T.contiguous()
    for start in range(0, flat.shape[0], block):
        sims = flat[start : start + block] @ g_t
        true_sim = sims.gather(1, targets[start : start + block, None])
        ranks[start : start + block] = (sims >= true_sim).sum(dim=1)
    return ranks.numpy()


def naive_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """One query at a time, as the reference evaluation loop does."""
    ranks = []
    for query, target in zip(queries, targets):
        similarities = gallery @ query
        ranks.append(int((similarities >= similarities[target]).sum()))
    return np.array(ranks)


def _child(method: str, size: int) -> None:
    """Measure one method's added memory in this fresh process; print it as JSON."""
    if method == "recall":
        images, texts = _embeddings(size, 3), _embeddings(size, 4)
        _, mib = peak_added_mib(lambda: rank_captions_and_photos(texts, images, np.arange(size)))
    else:
        queries, gallery, true_index = _inputs(size)
        run = {
            "ranking": lambda: rank_true_items(queries, gallery, true_index),
            "before": lambda: before(queries, gallery, true_index),
        }
        _, mib = peak_added_mib(run[method])
    print(json.dumps({"added_mib": mib}))


def added_memory(method: str, size: int) -> float:
    return float(run_isolated("benchmarks.ranking", method, size)["added_mib"])


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_ranking(size: int, repeats: int) -> None:
    queries, gallery, true_index = _inputs(size)
    sample = torch.arange(0, EPISODES * STEPS, 23)  # 979 queries across every episode
    flat = queries.reshape(-1, DIM)[sample].double()
    targets = true_index.repeat_interleave(STEPS)[sample]
    checked = rank_true_items(flat, gallery.double(), targets)
    if not np.array_equal(checked, naive_ranks(flat, gallery.double(), targets)):
        raise AssertionError("ranking disagrees with the per-query loop")

    times: dict[str, list[float]] = {"ranking": [], "floor": [], "before": []}
    for _ in range(repeats):  # interleaved, so load on the machine hits all alike
        times["ranking"].append(_timed(lambda: rank_true_items(queries, gallery, true_index)))
        times["floor"].append(_timed(lambda: gemm_floor(queries, gallery)))
        times["before"].append(_timed(lambda: before(queries, gallery, true_index)))
    best = {name: min(values) for name, values in times.items()}
    memory = {method: added_memory(method, size) for method in ("ranking", "before")}
    gflops = 2 * EPISODES * STEPS * size * DIM / best["floor"] / 1e9
    print(f"gallery {size:>7,} photos, {EPISODES * STEPS:,} queries, D={DIM} (ranks == per-query loop on 979)")
    print(f"  GEMM floor : {best['floor']:8.2f} s  ({gflops:.0f} GFLOP/s)")
    print(
        f"  ranking    : {best['ranking']:8.2f} s  {best['ranking'] / best['floor']:.2f}x the floor, "
        f"{memory['ranking']:7.0f} MiB added"
    )
    print(
        f"  before     : {best['before']:8.2f} s  {best['before'] / best['floor']:.2f}x the floor, "
        f"{memory['before']:7.0f} MiB added"
    )


def bench_recall(size: int) -> None:
    images, texts = _embeddings(size, 3), _embeddings(size, 4)
    seconds = _timed(lambda: rank_captions_and_photos(texts, images, np.arange(size)))
    inputs_mib = 2 * size * DIM * 4 / 2**20
    print(
        f"caption<->photo recall, {size:>7,} photos and captions: {seconds:7.2f} s both ways, "
        f"{added_memory('recall', size):5.0f} MiB added over {inputs_mib:.0f} MiB of embeddings "
        f"(a dense matrix: {size * size * 4 / 2**30:.1f} GiB)"
    )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[45_000, 150_000, 450_000])
    parser.add_argument("--recall", type=int, nargs="*", default=[10_000, 30_000, 100_000])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, tiles {QUERY_BLOCK} x {GALLERY_BLOCK}")
    for size in args.sizes:
        bench_ranking(size, args.repeats)
    for size in args.recall:
        bench_recall(size)


if __name__ == "__main__":
    main()
