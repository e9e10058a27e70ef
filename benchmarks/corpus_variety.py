"""Is identity retrieval on the embedded corpus non-trivial, yet are identities really distinct?

For N identities, two jittered photos each (different pose, light, backdrop) are rendered.
A raw-pixel nearest-neighbour baseline ranks gallery photos for every query photo: a high
top-1 would mean the task is trivial, chance is 1/N. Un-jittered renders of different
identities are then compared pixel by pixel: no two should be near-identical.

    .venv/bin/python benchmarks/corpus_variety.py --identities 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fvlp_core.corpus import attributes_of, render_face, sample_identity


def _features(images) -> np.ndarray:
    """Grey 32x32 thumbnails, standardised per image (removes global brightness and contrast)."""
    grey = np.stack([np.asarray(im.convert("L").resize((32, 32)), np.float32).ravel() for im in images])
    grey -= grey.mean(axis=1, keepdims=True)
    grey /= np.linalg.norm(grey, axis=1, keepdims=True) + 1e-6  # dot product = pixel correlation
    return grey


def _top_k(queries: np.ndarray, gallery: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    sims = queries @ gallery.T
    true = np.diag(sims)[:, None]
    rank = (sims > true).sum(axis=1) + 1  # 1 = the true identity first
    return {k: float((rank <= k).mean()) for k in ks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    people = [sample_identity(rng) for _ in range(args.identities)]
    start = time.process_time()
    photos_a = [render_face(p, args.size, np.random.default_rng([args.seed, i, 0])) for i, p in enumerate(people)]
    photos_b = [render_face(p, args.size, np.random.default_rng([args.seed, i, 1])) for i, p in enumerate(people)]
    per_image = 1000 * (time.process_time() - start) / (2 * args.identities)
    plain = [render_face(p, args.size) for p in people]

    n = args.identities
    print(f"{n} identities, {args.size} px; render_face with jitter: {per_image:.1f} ms CPU per image")
    print(
        f"distinct parameter sets: {len(set(people))}, distinct attribute lists: "
        f"{len({tuple(attributes_of(p)) for p in people})}"
    )
    jittered = _top_k(_features(photos_a), _features(photos_b))
    print(
        "pixel nearest neighbour, photo -> other photo of same person: "
        + ", ".join(f"top-{k} {v:.1%}" for k, v in jittered.items())
        + f" (chance top-1 {1 / n:.2%})"
    )
    # Distinctness: for every identity, the most similar other identity's un-jittered render.
    grey = np.stack([np.asarray(im.convert("L"), np.float32).ravel() for im in plain])
    closest = np.full(n, np.inf)
    for i in range(n):
        diff = np.abs(grey - grey[i]).mean(axis=1)
        diff[i] = np.inf
        closest[i] = diff.min()
    print(
        f"un-jittered renders, mean |grey difference| to the most similar other identity: "
        f"min {closest.min():.1f}, 5th percentile {np.percentile(closest, 5):.1f}, median {np.median(closest):.1f} "
        f"(0-255 scale)"
    )


if __name__ == "__main__":
    main()
