"""Batched ranking vs the naive per-sketch loop, and vs the bare similarity product.

Scales: FS2K-SDE1 test (450 photos x 50 steps, 256-d embeddings) and the same queries
against a gallery 100x larger (45,000 photos). For each scale it prints, measured side by
side on the same random L2-normalised embeddings:

* naive: the reference procedure, one sketch at a time (gallery @ q, count >=). At large
  scale it is timed on a sample of sketches and extrapolated linearly (it is a loop of
  identical iterations), which the output says;
* batched: ``fvlp_core.metrics.rank_true_items`` (block matrix products + one comparison);
* product: the bare (E*T x D) @ (D x N) similarity product, computed in the same blocks
  (the floor batched ranking must approach).

Usage: python -m benchmarks.ranking [--device cpu|cuda] [--repeats 3] [--naive-sample 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fvlp_core.metrics import rank_true_items

EPISODES, STEPS, DIM = 450, 50, 256


def _embeddings(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_of(repeats: int, run, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def naive_ranks(queries: torch.Tensor, gallery: torch.Tensor, true_index: torch.Tensor) -> torch.Tensor:
    """One sketch at a time, as the reference evaluation loop does."""
    flat = queries.reshape(-1, queries.shape[-1])
    targets = true_index.repeat_interleave(queries.shape[1])
    ranks = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
    for i in range(flat.shape[0]):
        sims = gallery @ flat[i]
        ranks[i] = (sims >= sims[targets[i]]).sum()
    return ranks


def bare_product(queries: torch.Tensor, gallery: torch.Tensor, max_block_elements: int = 1 << 26) -> None:
    flat = queries.reshape(-1, queries.shape[-1])
    g_t = gallery.T.contiguous()
    block = max(1, max_block_elements // gallery.shape[0])
    for start in range(0, flat.shape[0], block):
        flat[start : start + block] @ g_t


def bench(gallery_size: int, device: torch.device, repeats: int, naive_sample: int, rng: np.random.Generator) -> None:
    queries = torch.from_numpy(_embeddings(EPISODES * STEPS, DIM, rng).reshape(EPISODES, STEPS, DIM)).to(device)
    gallery = torch.from_numpy(_embeddings(gallery_size, DIM, rng)).to(device)
    true_index = torch.from_numpy(rng.choice(gallery_size, EPISODES, replace=False)).to(device)

    batched = _best_of(repeats, lambda: rank_true_items(queries, gallery, true_index), device)
    product = _best_of(repeats, lambda: bare_product(queries, gallery), device)

    sketches = EPISODES * STEPS
    sample_episodes = max(1, min(EPISODES, naive_sample // STEPS))
    sampled = sample_episodes < EPISODES
    naive_run = lambda: naive_ranks(queries[:sample_episodes], gallery, true_index[:sample_episodes])  # noqa: E731
    naive = _best_of(1 if sampled else repeats, naive_run, device) * EPISODES / sample_episodes

    # The two must agree before their times mean anything. The check runs in float64: in
    # float32 the loop's matrix-vector and the batch's matrix-matrix kernels round
    # differently, which flips a rank by one at near-ties (a few per thousand at N=45,000).
    q64, g64 = queries[:sample_episodes].double(), gallery.double()
    check = rank_true_items(q64, g64, true_index[:sample_episodes]).reshape(-1)
    reference = naive_ranks(q64, g64, true_index[:sample_episodes]).cpu().numpy()
    if not np.array_equal(check, reference):
        raise AssertionError(f"batched and naive ranks disagree on {int((check != reference).sum())} sketches")

    note = f" (naive extrapolated from {sample_episodes * STEPS} of {sketches} sketches)" if sampled else ""
    print(f"gallery N={gallery_size:>6}, {EPISODES} episodes x {STEPS} steps, D={DIM}, device={device}{note}")
    print(f"  batched ranks == naive loop ranks on all {len(check)} checked sketches (float64 check)")
    print(f"  naive per-sketch loop : {naive:9.3f} s")
    print(f"  batched ranking       : {batched:9.3f} s   naive/batched  = {naive / batched:8.1f}x")
    print(f"  bare matrix product   : {product:9.3f} s   batched/product = {batched / product:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-sample", type=int, default=2000, help="Sketches the naive loop runs at 100x scale")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench(EPISODES, device, args.repeats, naive_sample=EPISODES * STEPS, rng=rng)
    bench(EPISODES * 100, device, args.repeats, naive_sample=args.naive_sample, rng=rng)


if __name__ == "__main__":
    main()
