"""Global de-duplication at corpus scale: time and memory of both duplicate rules.

The clean stage's decide step compares every row with every earlier row twice: caption
near-duplicates (MinHash, 16 bands of 4 values) and image near-duplicates (64-bit perceptual
hashes within ``max_duplicate_distance`` bits, multi-index hashing over 4 chunks of 16 bits).
This makes a synthetic corpus of each size (30% of rows near copies of an earlier row: a few
MinHash values and a few hash bits changed), runs ``near_duplicates`` and ``image_duplicates``
on it in a fresh process each, and prints seconds, memory added over the inputs (peak
resident set, Linux VmHWM reset just before the call) and how many planted copies were
found. Near-linear growth shows as seconds per 1,000 rows staying flat across sizes.

Usage: python -m benchmarks.dedup [--sizes 20000 100000 1000000] [--max-distance 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks.isolated import peak_added_mib, run_isolated
from fvlp_core.filters import MINHASH_PERMUTATIONS, image_duplicates, near_duplicates

COPY_SHARE = 0.3


def synthetic_corpus(rows: int, seed: int = 0) -> tuple[np.ndarray, list[int | None], np.ndarray]:
    """MinHash signatures (rows x 64), perceptual hashes (Arrow's signed int64) and which
    rows are planted copies (their source, an earlier original row; else -1)."""
    rng = np.random.default_rng(seed)
    signatures = rng.integers(0, 2**32, size=(rows, MINHASH_PERMUTATIONS), dtype=np.uint64).astype(np.uint32)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=rows, dtype=np.int64)
    source = np.full(rows, -1, dtype=np.int64)
    copies = np.flatnonzero(rng.random(rows) < COPY_SHARE)
    copies = copies[copies > 0]
    originals = np.setdiff1d(np.arange(rows), copies)  # row 0 among them
    earlier = np.searchsorted(originals, copies)  # originals before each copy (at least row 0)
    source[copies] = originals[(rng.random(len(copies)) * earlier).astype(np.int64)]
    changed = rng.random((len(copies), MINHASH_PERMUTATIONS)).argsort(axis=1)[:, :6]  # Jaccard estimate ~0.9
    copied = signatures[source[copies]]
    np.put_along_axis(copied, changed, rng.integers(0, 2**32, size=changed.shape, dtype=np.uint64), axis=1)
    signatures[copies] = copied
    bits = np.uint64(1) << rng.integers(0, 64, size=(len(copies), 3)).astype(np.uint64)
    used = np.arange(3)[None, :] < rng.integers(0, 4, size=len(copies))[:, None]  # 0-3 bits flipped
    flips = np.bitwise_or.reduce(np.where(used, bits, np.uint64(0)), axis=1)
    unsigned = hashes.view(np.uint64)
    unsigned[copies] = unsigned[source[copies]] ^ flips
    return signatures, hashes.tolist(), source


def _child(rule: str, rows: int, max_distance: int) -> None:
    signatures, hashes, source = synthetic_corpus(rows)

    def timed() -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        found = near_duplicates(signatures) if rule == "caption" else image_duplicates(hashes, max_distance)
        return found[0], time.perf_counter() - started

    (duplicate_of, seconds), added = peak_added_mib(timed)
    planted = source >= 0
    found = float((duplicate_of[planted] >= 0).mean())
    others = int(((duplicate_of >= 0) & ~planted).sum())
    print(json.dumps({"seconds": seconds, "added_mib": added, "found": found, "others": others}))


def measure(rule: str, rows: int, max_distance: int) -> dict[str, float]:
    return run_isolated("benchmarks.dedup", rule, rows, max_distance)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--max-distance", type=int, default=6)
    args = parser.parse_args()
    print(f"{COPY_SHARE:.0%} of rows planted near copies; image rule within {args.max_distance} bits")
    print(
        f"{'rule':<8} {'rows':>10} {'seconds':>9} {'s/1k rows':>10} {'MiB added':>10} {'copies found':>13} "
        f"{'other rows flagged':>19}"
    )
    for rule in ("caption", "image"):
        for rows in args.sizes:
            found = measure(rule, rows, args.max_distance)
            print(
                f"{rule:<8} {rows:>10,} {found['seconds']:9.2f} {1000 * found['seconds'] / rows:10.4f} "
                f"{found['added_mib']:10.0f} {found['found']:12.1%} {found['others']:>19,}"
            )


if __name__ == "__main__":
    main()
