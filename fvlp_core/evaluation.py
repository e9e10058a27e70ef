"""Sketch-episode evaluation: embed a gallery and its episodes once, rank, and summarise.

Two query variants are measured on the same embeddings of the same episodes every run:
``sketch`` (the partial sketch alone) and ``sketch+text`` (the sketch fused with the
photo's caption), so the paper's claim that text helps early retrieval is checked each
time. The gallery is every photo of the split; each photo's episode is one query.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from fvlp_core.metrics import (
    ACC_KS,
    CaptionPhotoRanking,
    rank_captions_and_photos,
    rank_true_items,
    recall_at,
    reranked_text_image_recall,
    sketch_retrieval_metrics,
    step_curves,
    text_image_recall,
)

VARIANTS = ("sketch", "sketch+text")
EARLY_FRACTION = 0.2  # "acc@10 at 20 % of the episode"


class Encoder(Protocol):
    """What evaluation needs from a model (``fvlp_core.embed.FVLPEncoder`` provides it)."""

    def encode_images(self, images: Sequence[Image.Image]) -> Any: ...
    def encode_sketch_queries(self, sketches: Sequence[Image.Image], captions: Sequence[str]) -> tuple[Any, Any]: ...
    def encode_texts(self, texts: Sequence[str]) -> Any: ...


class MatchingEncoder(Encoder, Protocol):
    """An encoder with an image-text matching head (fine-tuned checkpoints have one)."""

    def encode_image_tokens(self, images: Sequence[Image.Image]) -> torch.Tensor: ...
    def match_logits(
        self, captions: Sequence[str], image_tokens: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> Any: ...


def _array(embeddings: Any) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32)


def _batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Gallery:
    photo_ids: list[str]
    images: np.ndarray  # (N, D) photo embeddings
    texts: np.ndarray  # (C, D) embeddings of every caption of every photo
    text_photo: np.ndarray  # (C,) gallery row each caption describes
    captions: list[str]  # (C,) the captions themselves


@dataclass
class MatchScores:
    """Caption<->photo ranks with each query's top-k candidates by embedding similarity, and
    the ITM logits of those candidate pairs, both directions."""

    ranking: CaptionPhotoRanking
    text_to_image: np.ndarray  # logits [C, k] of ranking.text_to_image.top_rows
    image_to_text: np.ndarray  # logits [P, k] of ranking.image_to_text.top_rows


@dataclass
class EpisodeEmbeddings:
    """Query embeddings of every step of every episode, (E, T, D) per variant."""

    true_index: np.ndarray  # (E,) gallery row of each episode's photo
    queries: dict[str, np.ndarray]


def embed_gallery(
    encoder: Encoder,
    photo_ids: Sequence[str],
    images: Sequence[Image.Image],
    captions: Sequence[Sequence[str]],
    batch_size: int,
) -> Gallery:
    """Photo embeddings and the embeddings of every caption of every photo (photos without a
    caption, as SLFIR's, simply have none)."""
    if not (len(photo_ids) == len(images) == len(captions)):
        raise ValueError(
            f"gallery parts disagree: {len(photo_ids)} ids, {len(images)} images, {len(captions)} caption lists"
        )
    image_parts = [_array(encoder.encode_images(list(b))) for b in _batched(list(images), batch_size)]
    every = [(row, caption) for row, texts in enumerate(captions) for caption in texts if caption.strip()]
    texts = [caption for _, caption in every]
    text_parts = [_array(encoder.encode_texts(list(b))) for b in _batched(texts, batch_size)]
    dim = image_parts[0].shape[1] if image_parts else 0
    return Gallery(
        list(photo_ids),
        np.concatenate(image_parts) if image_parts else np.zeros((0, dim), np.float32),
        np.concatenate(text_parts) if text_parts else np.zeros((0, dim), np.float32),
        np.asarray([row for row, _ in every], dtype=np.int64),
        texts,
    )


def match_candidates(
    encoder: MatchingEncoder, gallery: Gallery, images: Sequence[Image.Image], k: int, batch_size: int
) -> MatchScores:
    """The reference's re-ranking input: for every caption its top-``k`` photos and for every
    photo with a caption its top-``k`` captions by embedding similarity (one blocked pass each
    way, which also gives the plain ranks), each pair scored by the ITM head. Patch tokens are
    computed once per photo, and a pair both directions nominate is scored once; pairs go
    through the head ``batch_size`` at a time, in photo order, so a batch holds a photo or two
    and the head computes each photo's keys and values once per batch, not once per pair."""
    ranking = rank_captions_and_photos(gallery.texts, gallery.images, gallery.text_photo, top_k=k)
    t2i_rows, i2t_rows = ranking.text_to_image.top_rows, ranking.image_to_text.top_rows
    tokens = torch.cat([encoder.encode_image_tokens(list(b)) for b in _batched(list(images), batch_size)])

    captions = len(gallery.captions)
    t2i_captions = np.broadcast_to(np.arange(captions)[:, None], t2i_rows.shape)
    i2t_photos = np.broadcast_to(ranking.image_rows[:, None], i2t_rows.shape)
    pair_codes = np.concatenate(
        [(t2i_rows * captions + t2i_captions).ravel(), (i2t_photos * captions + i2t_rows).ravel()]
    )
    unique, back = np.unique(pair_codes, return_inverse=True)
    photos_of, captions_of = unique // captions, unique % captions
    parts = []
    for start in range(0, len(unique), batch_size):
        batch_photos, image_index = np.unique(photos_of[start : start + batch_size], return_inverse=True)
        logits = encoder.match_logits(
            [gallery.captions[c] for c in captions_of[start : start + batch_size]],
            tokens[batch_photos],
            torch.from_numpy(image_index.reshape(-1)),
        )
        parts.append(_array(logits))
    scores = (np.concatenate(parts) if parts else np.zeros(0, np.float32))[back]
    return MatchScores(
        ranking, scores[: t2i_rows.size].reshape(t2i_rows.shape), scores[t2i_rows.size :].reshape(i2t_rows.shape)
    )


class EpisodeEmbedder:
    """Accumulates sketch and sketch+text embeddings batch by batch (bounded memory)."""

    def __init__(self, encoder: Encoder, gallery: Gallery, steps: int, captions: dict[str, str]):
        self.encoder = encoder
        self.steps = steps
        self.captions = captions
        self.row = {photo_id: i for i, photo_id in enumerate(gallery.photo_ids)}
        dim = gallery.images.shape[1]
        self.queries = {v: np.full((len(self.row), steps, dim), np.nan, dtype=np.float32) for v in VARIANTS}

    def add(self, photo_ids: Sequence[str], steps: Sequence[int], sketches: Sequence[Image.Image]) -> None:
        unknown = sorted({p for p in photo_ids if p not in self.row})
        if unknown:
            raise ValueError(f"sketches for photo_id(s) not in the gallery: {unknown[:5]}")
        bad = [(p, s) for p, s in zip(photo_ids, steps) if not 0 <= s < self.steps]
        if bad:
            raise ValueError(f"photo_id {bad[0][0]}: step {bad[0][1]} outside 0..{self.steps - 1}")
        rows = np.array([self.row[p] for p in photo_ids])
        cols = np.asarray(steps)
        # One image pass gives both variants: fused = normalise(sketch + caption) before normalising.
        only, fused = self.encoder.encode_sketch_queries(list(sketches), [self.captions[p] for p in photo_ids])
        self.queries["sketch"][rows, cols] = _array(only)
        self.queries["sketch+text"][rows, cols] = _array(fused)

    def repeat(self, photo_id: str, from_step: int, to_step: int) -> None:
        """``to_step``'s queries are ``from_step``'s (already added): the same picture."""
        row = self.row[photo_id]
        for queries in self.queries.values():
            queries[row, to_step] = queries[row, from_step]

    def finish(self) -> EpisodeEmbeddings:
        """Episodes with every step embedded; a photo with a partial episode is an error."""
        filled = np.asarray(~np.isnan(self.queries["sketch"]).any(axis=2))
        complete = filled.all(axis=1)
        partial = filled.any(axis=1) & ~complete
        if partial.any():
            photo_id = list(self.row)[int(np.flatnonzero(partial)[0])]
            missing = np.flatnonzero(~filled[np.flatnonzero(partial)[0]])
            raise ValueError(
                f"photo_id {photo_id}: episode lacks step(s) {missing[:10].tolist()} of 0..{self.steps - 1}"
            )
        if not complete.any():
            raise ValueError("no complete sketch episode to evaluate")
        keep = np.flatnonzero(complete)
        return EpisodeEmbeddings(true_index=keep, queries={v: q[keep] for v, q in self.queries.items()})


def early_step(steps: int, fraction: float = EARLY_FRACTION) -> int:
    """1-based step at which ``fraction`` of the episode is drawn (step 10 of 50 for 20 %)."""
    return max(1, math.ceil(fraction * steps - 1e-9))


@dataclass
class EvaluationResult:
    gallery_size: int
    episodes: int
    steps: int
    sketch: dict[str, dict[str, Any]]  # variant -> sketch_retrieval_metrics(...)
    curves: dict[str, dict[str, np.ndarray]]  # variant -> metric -> per-step values
    text_image: dict[str, dict[str, float]]  # "text-image" (embeddings), "text-image-itm" (re-ranked) -> R@K
    captions: int

    def metric_rows(self, split: str) -> list[dict[str, Any]]:
        rows = []
        early = early_step(self.steps)
        for variant, found in self.sketch.items():
            for name in ("m_at_A", "m_at_B", "wm_at_A", "wm_at_B"):
                rows.append({"split": split, "variant": variant, "name": name, "value": float(found[name])})
            for k in ACC_KS:
                curve = found[f"acc_at_{k}"]
                rows.append(
                    {"split": split, "variant": variant, "name": f"acc_at_{k}_final", "value": float(curve[-1])}
                )
                rows.append(
                    {
                        "split": split,
                        "variant": variant,
                        "name": f"acc_at_{k}_at_20pct",
                        "value": float(curve[early - 1]),
                    }
                )
        rows += [
            {"split": split, "variant": variant, "name": name, "value": value}
            for variant, recall in self.text_image.items()
            for name, value in recall.items()
        ]
        dataset = {"gallery_size": self.gallery_size, "episodes": self.episodes, "steps": self.steps}
        rows += [
            {"split": split, "variant": "dataset", "name": name, "value": float(value)}
            for name, value in {**dataset, "captions": self.captions}.items()
        ]
        return rows

    def curve_rows(self) -> list[dict[str, Any]]:
        return [
            {"variant": variant, "step": step + 1, "metric": metric, "value": float(value)}
            for variant, metrics in self.curves.items()
            for metric, values in metrics.items()
            for step, value in enumerate(values)
        ]

    def headline(self) -> dict[str, dict[str, float]]:
        """variant -> the README table's numbers."""
        early = early_step(self.steps)
        return {
            variant: {
                "m_at_A": found["m_at_A"],
                "m_at_B": found["m_at_B"],
                "wm_at_A": found["wm_at_A"],
                "wm_at_B": found["wm_at_B"],
                "acc_at_10_at_20pct": float(found["acc_at_10"][early - 1]),
            }
            for variant, found in self.sketch.items()
        }


def evaluate_embeddings(
    gallery: Gallery, episodes: EpisodeEmbeddings, matches: MatchScores | None = None
) -> EvaluationResult:
    """All SLFIR metrics and curves for both variants, plus caption<->photo recall over every
    caption: by embedding similarity, and (with ``matches``) after top-k ITM re-ranking."""
    size = len(gallery.photo_ids)
    steps = next(iter(episodes.queries.values())).shape[1]
    sketch: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for variant, queries in episodes.queries.items():
        ranks = rank_true_items(queries, gallery.images, episodes.true_index)
        found = sketch_retrieval_metrics(ranks, size)
        sketch[variant] = found
        curves[variant] = {
            **{f"acc_at_{k}": np.asarray(found[f"acc_at_{k}"]) for k in ACC_KS},
            **step_curves(ranks, size),
        }
    text_image: dict[str, dict[str, float]] = {}
    if matches is not None:  # its ranking holds the plain ranks too: no second pass
        plain = matches.ranking
        text_image["text-image"] = recall_at(plain.text_to_image.ranks, plain.image_to_text.ranks)
        text_image["text-image-itm"] = reranked_text_image_recall(
            plain, gallery.text_photo, matches.text_to_image, matches.image_to_text
        )
    elif len(gallery.captions):
        text_image["text-image"] = text_image_recall(gallery.texts, gallery.images, gallery.text_photo)
    return EvaluationResult(size, len(episodes.true_index), steps, sketch, curves, text_image, len(gallery.captions))


def plot_curves(result: EvaluationResult, path: Path, title: str = "") -> Path:
    """acc@1, acc@10 and mean rank percentile against sketch completion, both variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    completion = 100.0 * np.arange(1, result.steps + 1) / result.steps
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"sketch": "--", "sketch+text": "-"}
    for variant, curves in result.curves.items():
        left.plot(completion, curves["acc_at_1"], styles.get(variant, "-"), color="tab:blue", label=f"acc@1 {variant}")
        left.plot(
            completion, curves["acc_at_10"], styles.get(variant, "-"), color="tab:orange", label=f"acc@10 {variant}"
        )
        right.plot(completion, curves["rank_percentile"], styles.get(variant, "-"), color="tab:green", label=variant)
    left.set(xlabel="sketch completion (%)", ylabel="accuracy (%)", ylim=(0, 100), title="acc@K")
    right.set(
        xlabel="sketch completion (%)", ylabel="mean rank percentile (%)", ylim=(0, 100), title="mean rank percentile"
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title or f"N = {result.gallery_size} photos, {result.episodes} episodes, T = {result.steps}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(result: EvaluationResult, run_id: str, split: str, plot_path: Path | None = None) -> str:
    early = early_step(result.steps)
    lines = [
        f"# Evaluation {run_id}",
        "",
        f"Split `{split}`: gallery N = {result.gallery_size}, {result.episodes} episodes of T = {result.steps} steps. "
        "Percent; ties rank the true photo last.",
        "",
        "| variant | m@A | m@B | wm@A | wm@B | acc@1 (final) | acc@10 (final) "
        f"| acc@10 at {early}/{result.steps} steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, found in result.sketch.items():
        lines.append(
            f"| {variant} | {found['m_at_A']:.2f} | {found['m_at_B']:.2f} | {found['wm_at_A']:.2f} | "
            f"{found['wm_at_B']:.2f} | {found['acc_at_1'][-1]:.1f} | {found['acc_at_10'][-1]:.1f} | "
            f"{found['acc_at_10'][early - 1]:.1f} |"
        )
    labels = {"text-image": "embedding similarity", "text-image-itm": "top-k re-ranked by ITM"}
    if result.text_image:
        lines += [
            "",
            f"Text <-> photo over all {result.captions} captions:",
            "",
            "| retrieval | ranked by | R@1 | R@5 | R@10 |",
            "|---|---|---|---|---|",
        ]
    for variant, recall in result.text_image.items():
        for direction, label in (("t2i", "caption -> photo"), ("i2t", "photo -> caption")):
            values = " | ".join(f"{recall[f'{direction}_r_at_{k}']:.1f}" for k in (1, 5, 10))
            lines.append(f"| {label} | {labels[variant]} | {values} |")
    if plot_path is not None:
        lines += ["", f"Curves: `{plot_path}`"]
    return "\n".join(lines) + "\n"
