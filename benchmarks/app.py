"""Latency of one stroke's query in `fvlp app`, next to the bare cost of its parts.

For galleries of 1k, 10k and 100k photos (random L2-normalised embeddings in the default CPU
model's space; the model has random weights, which do not change its cost) it times, per query:

* request: ``POST /api/query`` through the app in-process (JSON and base64 parsing, PNG
  decode, sketch+text encode, ranking, top-10 answer with thumbnails);
* encode: the bare sketch+text encode of the same canvas (``encode_sketch_queries``);
* product: the bare gallery-by-query matrix product;

and prints p50 / p95 of each and the ratio request / (encode + product): what the service adds
on top of the work it cannot avoid. Galleries of ``--approximate-from`` photos or more are
also served through the HNSW index `fvlp index` builds there (faiss), with its build time and
recall@10 against exact search.

Usage: python -m benchmarks.app [--sizes 1000 10000 100000] [--queries 30] [--model fvlp-vit-tiny]
       [--approximate-from 100000]
"""

from __future__ import annotations

import argparse
import base64
import io
import time

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from fvlp_app.server import Retriever, create_app
from fvlp_core.embed import FVLPEncoder
from fvlp_core.models import FVLPFusion
from fvlp_core.retrieval import GallerySearch, approximate_recall, build_hnsw, probe_queries


def canvas_png(seed: int) -> bytes:
    """A 384 px canvas with a few strokes, as the page sends it."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGBA", (384, 384), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        draw.line([tuple(rng.integers(40, 344, 2).tolist()) for _ in range(6)], fill=(0, 0, 0, 255), width=3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50)) * 1000, float(np.percentile(seconds, 95)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--model", default="fvlp-vit-tiny")
    parser.add_argument("--approximate-from", type=int, default=100_000)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = FVLPEncoder(FVLPFusion(args.model).eval(), args.model, "finetune", torch.device("cpu"))
    dim = encoder.embed_dim
    thumbnail = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(thumbnail, "JPEG")
    sketches = [canvas_png(seed) for seed in range(args.queries)]
    description = "a young woman with long dark hair"
    print(f"model {args.model} (dim {dim}), {args.queries} queries per size, times in ms (p50 / p95)")
    print(f"{'gallery':>8} {'request':>16} {'encode':>16} {'product':>16} {'request/(encode+product)':>26}")
    for size in args.sizes:
        rng = np.random.default_rng(size)
        embeddings = rng.standard_normal((size, dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        ids = [f"p{i}" for i in range(size)]
        for approximate in (False, True) if size >= args.approximate_from else (False,):
            index, note = None, ""
            if approximate:
                start = time.perf_counter()
                index = build_hnsw(embeddings)
                built = time.perf_counter() - start
                recall = approximate_recall(GallerySearch(ids, embeddings, index), probe_queries(embeddings, 1000))
                note = f"  HNSW (built in {built:.0f} s, recall@10 {recall:.3f})"
            retriever = Retriever(encoder, ids, embeddings, [thumbnail.getvalue()] * size, {}, index)
            measure(TestClient(create_app(retriever)), encoder, embeddings, sketches, description, size, note)


def measure(client, encoder, embeddings, sketches, description, size: int, note: str) -> None:
    """Time the requests and, right after each, its bare parts; print one table row."""
    timings: dict[str, list[float]] = {"request": [], "encode": [], "product": []}
    client.post("/api/query", json={"sketch": base64.b64encode(sketches[0]).decode(), "description": description})
    for png in sketches:  # interleaved: each query's parts are timed right after it
        body = {"sketch": base64.b64encode(png).decode(), "description": description, "k": 10}
        start = time.perf_counter()
        answer = client.post("/api/query", json=body)
        timings["request"].append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.text
        image = Image.open(io.BytesIO(png)).convert("RGB")
        start = time.perf_counter()
        query = encoder.encode_sketch_queries([image], [description])[1][0].numpy()
        timings["encode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _ = embeddings @ query
        timings["product"].append(time.perf_counter() - start)
    shown = {name: percentiles(values) for name, values in timings.items()}
    parts = shown["encode"][0] + shown["product"][0]
    cells = " ".join(f"{p50:7.1f} / {p95:6.1f}" for p50, p95 in shown.values())
    print(f"{size:>8} {cells} {shown['request'][0] / parts:>25.2f}x{note}")


if __name__ == "__main__":
    main()
