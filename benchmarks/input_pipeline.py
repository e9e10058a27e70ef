"""Training input pipeline: images/s the fine-tuning stream decodes, by loader workers, next to what a step eats.

Reads a data root's episodes (``fvlp run`` or ``fvlp episodes`` first) and times one epoch of
``fvlp_train.data.epoch_batches`` (photo + one sketch step + caption per example, decoded and
resized to ``--image-size``) with 0 workers (the thread beside the training loop) and with N
DataLoader worker processes, nothing else running. Compare the images/s with a training
step's appetite (``benchmarks/train.py``: samples/s x 2 images for fine-tuning): a GPU
training ViT-B/16 at 40% MFU eats about 7,500 images/s.

    python benchmarks/input_pipeline.py --data-root fvlp-data --workers 0 1 2
    python benchmarks/input_pipeline.py --data-root fvlp-data --image-size 224 --workers 0 4 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fvlp_core.config import Paths
from fvlp_core.models import get_tokenizer
from fvlp_train.data import SketchEpisodeStream, StreamPlan, epoch_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=64, help="64: fvlp-vit-tiny; 224: ViT-B/16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    stream = SketchEpisodeStream(
        Paths(data_root=args.data_root).episodes_dir,
        get_tokenizer("fvlp-vit-tiny"),
        args.image_size,
        seed=0,
        plan=StreamPlan(args.batch_size),
    )
    images = 2 * args.batch_size * stream.batches_per_epoch()  # a photo and a sketch per example
    print(f"{stream.batches_per_epoch()} batches of {args.batch_size} (photo + sketch), {args.image_size} px")
    for workers in args.workers:
        fastest = float("inf")
        for repeat in range(args.repeats):
            started = time.perf_counter()
            for _ in epoch_batches(stream, repeat, 0, workers=workers, pin_memory=False):
                pass
            fastest = min(fastest, time.perf_counter() - started)
        rate = images / fastest
        print(f"  {workers} worker(s): {rate:8.0f} images/s ({fastest:.2f} s an epoch, best of {args.repeats})")


if __name__ == "__main__":
    main()
