"""Prefect tasks of the evaluation stage: resolve the model, embed once, score, report."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from fvlp_core.codec import open_image
from fvlp_core.config import EvaluateConfig
from fvlp_core.digest import file_digest
from fvlp_core.evaluation import (
    Encoder,
    EpisodeEmbedder,
    EpisodeEmbeddings,
    EvaluationResult,
    Gallery,
    MatchScores,
    embed_gallery,
    evaluate_embeddings,
    match_candidates,
    plot_curves,
    summary_markdown,
)
from storage.checkpoints import finetuned_checkpoint
from storage.episodes import iter_sketch_chunks, read_photos


def load_encoder(checkpoint: Path, device: str) -> Encoder:
    from fvlp_core.embed import FVLPEncoder

    return FVLPEncoder.load(checkpoint, device=device)


def _decode(png: bytes) -> Image.Image:
    return open_image(png).convert("RGB")


@task(name="resolve-checkpoint", cache_policy=NO_CACHE)
def resolve_checkpoint(config: EvaluateConfig) -> dict[str, str]:
    checkpoint = finetuned_checkpoint(config.paths.checkpoints_dir, config.checkpoint)
    return {"checkpoint": str(checkpoint), "fingerprint": f"sha256:{file_digest(checkpoint)}"}


@task(name="embed-episodes", cache_policy=NO_CACHE)
def embed_episodes(
    config: EvaluateConfig, checkpoint: str, steps: int
) -> tuple[Gallery, EpisodeEmbeddings, MatchScores | None]:
    """Embed every gallery photo, caption and episode step of the split once, both variants;
    score the top-k caption/photo candidates with the ITM head (``config.itm_rerank_k``)."""
    logger = get_run_logger()
    encoder = load_encoder(Path(checkpoint), config.device)
    photos = read_photos(config.episodes_dir, split=config.split, columns=["photo_id", "image", "caption", "captions"])
    if photos.num_rows < 2:
        raise ValueError(
            f"{config.episodes_dir}: split {config.split!r} has {photos.num_rows} photo(s); retrieval needs at least 2"
        )
    photo_ids = photos["photo_id"].to_pylist()
    captions = photos["caption"].to_pylist()
    images = [_decode(b) for b in photos["image"].to_pylist()]
    gallery = embed_gallery(encoder, photo_ids, images, photos["captions"].to_pylist(), config.batch_size)
    logger.info("embedded %d gallery photos and their %d captions", len(photo_ids), len(gallery.captions))
    matches = None
    if config.itm_rerank_k and len(gallery.captions):
        matches = match_candidates(encoder, gallery, images, config.itm_rerank_k, config.batch_size)
        logger.info("scored each caption's and photo's top %d candidates with the ITM head", config.itm_rerank_k)

    embedder = EpisodeEmbedder(encoder, gallery, steps, dict(zip(photo_ids, captions)))
    done = 0
    for chunk in iter_sketch_chunks(config.episodes_dir, split=config.split):
        ids, step_numbers, images = (chunk[c].to_pylist() for c in ("photo_id", "step", "image"))
        # A step that added no stroke repeats the picture before it (8% of the embedded default's
        # test steps): it is encoded once and its queries copied.
        repeats = [i for i in range(1, len(ids)) if ids[i] == ids[i - 1] and images[i] == images[i - 1]]
        repeated = set(repeats)
        pictures = [i for i in range(len(ids)) if i not in repeated]  # the steps to encode
        for start in range(0, len(pictures), config.batch_size):
            batch = pictures[start : start + config.batch_size]
            embedder.add([ids[i] for i in batch], [step_numbers[i] for i in batch], [_decode(images[i]) for i in batch])
        for i in repeats:  # in step order: the step before is filled, encoded or copied
            embedder.repeat(ids[i], step_numbers[i - 1], step_numbers[i])
        done += len(ids)
        logger.info("embedded %d of %d sketches (x2 variants)", done, len(photo_ids) * steps)
    episodes = embedder.finish()
    logger.info("embedded %d episodes x %d steps (sketch and sketch+text)", len(episodes.true_index), steps)
    return gallery, episodes, matches


@task(name="score-episodes", cache_policy=NO_CACHE)
def score_episodes(gallery: Gallery, episodes: EpisodeEmbeddings, matches: MatchScores | None) -> EvaluationResult:
    return evaluate_embeddings(gallery, episodes, matches)


@task(name="report-evaluation", cache_policy=NO_CACHE)
def report_evaluation(result: EvaluationResult, run_id: str, config: EvaluateConfig) -> dict[str, Any]:
    """Curve plot and markdown summary on disk, attached to the flow run as Prefect artifacts."""
    out_dir = config.paths.artifacts_dir / "evaluate" / run_id
    plot = plot_curves(result, out_dir / "curves.png", title=f"{run_id} ({config.split})")
    markdown = summary_markdown(result, run_id, config.split, plot)
    summary = out_dir / "summary.md"
    summary.write_text(markdown)
    create_markdown_artifact(markdown=markdown, key="evaluation-summary", description=f"SLFIR metrics of {run_id}")
    # The UI cannot load a file:// URL from the machine that ran the flow: the plot travels
    # inside the artifact, as a data URI its markdown renders.
    encoded = base64.b64encode(plot.read_bytes()).decode("ascii")
    create_markdown_artifact(
        markdown=f"![acc@K and rank percentile vs sketch completion](data:image/png;base64,{encoded})\n\n"
        f"File: `{plot.resolve()}`",
        key="evaluation-curves",
        description="acc@1/acc@10 and mean rank percentile vs sketch completion",
    )
    return {"plot": str(plot), "summary": str(summary), "markdown": markdown}
