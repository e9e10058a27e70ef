"""Evaluation's sketch queries: one image pass for both variants vs one pass per variant.

Evaluation scores every sketch twice, alone and fused with its caption. The fused query is
normalise(sketch + caption) of the same unnormalised sketch embedding, so one pass of the
image tower serves both (``FVLPEncoder.encode_sketch_queries``); before, each variant ran the
tower (two ``encode_sketches`` calls). Both are timed side by side, interleaved, on the
default CPU model with random weights (the cost does not depend on the weights).

Usage: python -m benchmarks.sketch_queries [--sketches 256] [--repeats 3] [--model fvlp-vit-tiny]
"""

from __future__ import annotations

import argparse
import time

import torch

from fvlp_core.embed import FVLPEncoder
from fvlp_core.models import FVLPFusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sketches", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="fvlp-vit-tiny")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = FVLPEncoder(FVLPFusion(args.model).eval(), args.model, "finetune", torch.device("cpu"))
    sketches = torch.rand(args.sketches, 3, encoder.image_size, encoder.image_size)
    captions = [f"a person with {i} freckles" for i in range(args.sketches)]

    def one_pass() -> None:
        encoder.encode_sketch_queries(sketches, captions)

    def two_passes() -> None:
        encoder.encode_sketches(sketches)
        encoder.encode_sketches(sketches, captions)

    times: dict[str, list[float]] = {"one pass": [], "two passes": []}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
        for name, run in (("one pass", one_pass), ("two passes", two_passes)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    for name, seconds in best.items():
        print(f"{name:>10}: {seconds:.3f} s for {args.sketches} sketches, both variants")
    print(f"one pass / two passes = {best['one pass'] / best['two passes']:.2f}x")


if __name__ == "__main__":
    main()
