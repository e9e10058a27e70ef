"""Held-out checks run at the end of training, so every run reports whether it learned.

Pretraining: text->image R@1 over held-out cleaned pairs, next to chance 1/N, and the ITM
head's accuracy and AUC on balanced held-out pairs, next to the 50 a head at its prior gets.
Fine-tuning: sketch(+caption)->photo m@B over the episodes that select the kept epoch (a
validation split of the train photos, or the test split), next to chance H_N/N (the expected
reciprocal rank of a uniformly random rank among N), and text->image R@1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fvlp_core.config import FinetuneConfig, PretrainConfig
from fvlp_core.fs2k import select_steps
from fvlp_core.metrics import matching_scores, rank_true_items, sketch_retrieval_metrics, text_image_recall
from fvlp_core.models import FVLPFusion, FVLPPretrain, get_tokenizer
from fvlp_core.models.factory import encode_image_tokens, encode_text_tokens, image_size
from fvlp_core.transforms import image_bytes_tensor
from fvlp_train.data import is_held_out
from storage.clean import face_shards, read_face_pairs
from storage.episodes import SketchSteps, episode_lengths, episode_photos, read_episodes_reference

EVAL_BATCH = 128
MAX_HELD_OUT_PAIRS = 1000


def chance_reciprocal_rank(gallery_size: int) -> float:
    """E[1/r] for r uniform on 1..N: H_N / N."""
    return float(np.sum(1.0 / np.arange(1, gallery_size + 1)) / gallery_size)


def _batched(items: list, size: int = EVAL_BATCH):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def validate_pretrain(model: FVLPPretrain, config: PretrainConfig, device: torch.device) -> dict[str, float]:
    crops, captions = [], []
    for shard in face_shards(config.paths.clean_dir):
        if len(crops) >= MAX_HELD_OUT_PAIRS:
            break  # enough pairs: the remaining shards' crops are never read
        table = read_face_pairs(shard)
        for sample_id, crop, caption in zip(*(table.column(c).to_pylist() for c in ("SAMPLE_ID", "crop", "caption"))):
            if is_held_out(sample_id, config.holdout_fraction) and len(crops) < MAX_HELD_OUT_PAIRS:
                crops.append((shard, sample_id, crop))
                captions.append(caption)
    if len(crops) < 2:
        return {"heldout_pairs": float(len(crops))}
    tokenizer = get_tokenizer(config.model)
    size = image_size(model.backbone)
    images, texts, matched, mismatched = [], [], [], []
    for chunk in _batched(list(zip(crops, captions))):
        pixels = torch.stack([image_bytes_tensor(c, size, f"{s} SAMPLE_ID {i}") for (s, i, c), _ in chunk]).to(device)
        pooled, tokens, _ = encode_image_tokens(model.backbone, pixels)
        images.append(F.normalize(pooled.float(), dim=-1).cpu())
        chunk_captions = [caption for _, caption in chunk]
        text = tokenizer(chunk_captions).to(device)
        texts.append(F.normalize(encode_text_tokens(model.backbone, text)[0].float(), dim=-1).cpu())
        if config.trains_matching:
            other = _other_caption(chunk_captions)
            matched.append(_match_probability(model, text, tokens))
            mismatched.append(_match_probability(model, text[other], tokens))
    recall = text_image_recall(torch.cat(texts), torch.cat(images), np.arange(len(crops)))
    found = {
        "heldout_pairs": float(len(crops)),
        "heldout_t2i_r_at_1": recall["t2i_r_at_1"],
        "heldout_i2t_r_at_1": recall["i2t_r_at_1"],
        "heldout_t2i_r_at_10": recall["t2i_r_at_10"],
        "chance_r_at_1": 100.0 / len(crops),
    }
    if not config.trains_matching:
        return found  # the head was never trained (ITM weight 0): its scores would mean nothing
    itm = matching_scores(torch.cat(matched).numpy(), torch.cat(mismatched).numpy())
    # Balanced pairs (each crop with its caption and with another's): 50 is a head at its prior.
    return {
        **found,
        "heldout_itm_accuracy": itm["accuracy"],
        "heldout_itm_auc": itm["auc"],
        "chance_itm_accuracy": 50.0,
    }


def _other_caption(captions: list[str]) -> torch.Tensor:
    """For each caption, the index of the next one in the list that differs from it (a non-match)."""
    others = []
    for index, caption in enumerate(captions):
        step = next((k for k in range(1, len(captions)) if captions[(index + k) % len(captions)] != caption), 0)
        others.append((index + step) % len(captions))
    return torch.tensor(others)


def _match_probability(model: FVLPPretrain, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.grounded(model.backbone, text, image_tokens).float(), dim=-1)[:, 1].cpu()


def selection_episodes(config: FinetuneConfig) -> tuple[str, float | None]:
    """The split and held-out share whose episodes choose the kept epoch (``config.select_on``)."""
    return ("train", config.validation_fraction) if config.select_on == "validation" else ("test", None)


def validate_finetune(
    model: FVLPFusion,
    config: FinetuneConfig,
    device: torch.device,
    split: str = "test",
    held_out_fraction: float | None = None,
) -> dict[str, float]:
    """Sketch(+caption) -> photo retrieval over one split's episodes, at T steps each.

    With ``held_out_fraction`` only the photos :func:`is_held_out` picks take part (gallery
    and queries): the validation split carved from the train photos. Episodes recording more
    steps than T (FS2K-SDE's train split keeps all 70) are read at T evenly chosen steps.
    """
    tokenizer = get_tokenizer(config.model)
    size = image_size(model.backbone)
    photos = episode_photos(config.episodes_dir, split)
    keep = [
        i
        for i, p in enumerate(photos.column("photo_id").to_pylist())
        if held_out_fraction is None or is_held_out(p, held_out_fraction)
    ]
    photos = photos.take(keep)
    photo_ids = photos.column("photo_id").to_pylist()
    if len(photo_ids) < 2:
        raise ValueError(
            f"{config.episodes_dir}: {len(photo_ids)} {split} photo(s) to validate on; retrieval needs 2 or more "
            "(raise --validation-fraction, or --select-on test)"
        )
    row = {p: i for i, p in enumerate(photo_ids)}
    captions = photos.column("caption").to_pylist()
    gallery = torch.cat(
        [
            model.encode_images(torch.stack([image_bytes_tensor(b, size, f"photo {p}") for p, b in chunk]).to(device))
            .float()
            .cpu()
            for chunk in _batched(list(zip(photo_ids, photos.column("image").to_pylist())))
        ]
    )
    # Unnormalised caption projections, once per photo: every step's query reuses its photo's.
    text_raw = torch.cat(
        [model._text_forward(tokenizer(chunk).to(device)).float().cpu() for chunk in _batched(captions)]
    )
    text_emb = F.normalize(text_raw, dim=-1)

    steps = read_episodes_reference(config.episodes_dir)["steps"]
    recorded = episode_lengths(config.episodes_dir, split)
    # recorded step -> the evaluation steps t it stands for (several when fewer than T were recorded)
    slots: dict[str, dict[int, list[int]]] = {}
    for photo_id in photo_ids:
        for t, index in enumerate(select_steps(recorded.get(photo_id, steps), steps).tolist()):
            slots.setdefault(photo_id, {}).setdefault(index, []).append(t)
    fused = torch.zeros(len(photo_ids), steps, gallery.shape[1])
    sketch_only = torch.zeros_like(fused)
    filled = torch.zeros(len(photo_ids), steps, dtype=torch.bool)
    pending: list[tuple[int, list[int], bytes]] = []

    def flush() -> None:
        pixels = torch.stack(
            [image_bytes_tensor(b, size, f"photo {photo_ids[r]} step {ts[0]}") for r, ts, b in pending]
        ).to(device)
        sketch_raw = model._image_forward(pixels)[0].float().cpu()
        for k, (r, ts, _) in enumerate(pending):
            fused[r, ts] = F.normalize(sketch_raw[k] + text_raw[r], dim=-1)  # = encode_sketches(pixels, text)
            sketch_only[r, ts] = F.normalize(sketch_raw[k], dim=-1)
            filled[r, ts] = True
        pending.clear()

    wanted = sum(len(by_step) for by_step in slots.values())
    # Minutes on a CPU at real sizes: a bar on stderr (relayed to the terminal) shows it moving.
    with tqdm(total=wanted, unit="sketch", desc=f"validating on {split}", leave=False) as bar:
        for photo_id, step, image in SketchSteps(config.episodes_dir, split).sketches_of(photo_ids):
            if step in slots[photo_id]:
                if pending and pending[-1][0] == row[photo_id] and pending[-1][2] == image:
                    # A step that added no stroke: the picture before it, encoded once for both.
                    r, ts, _ = pending[-1]
                    pending[-1] = (r, ts + slots[photo_id][step], image)
                    bar.update(1)
                    continue
                pending.append((row[photo_id], slots[photo_id][step], image))
                if len(pending) == EVAL_BATCH:
                    bar.update(len(pending))
                    flush()
        if pending:
            bar.update(len(pending))
            flush()
    complete = filled.all(dim=1)
    if not complete.any():
        raise ValueError(f"{config.episodes_dir}: no {split} episode has {steps} sketch steps")
    # Episodes shorter than T are left out (counted in the output) so ranks stay one array.
    targets = torch.arange(len(photo_ids))[complete]
    gallery_size = len(photo_ids)
    with_text = sketch_retrieval_metrics(rank_true_items(fused[complete], gallery, targets), gallery_size)
    without_text = sketch_retrieval_metrics(rank_true_items(sketch_only[complete], gallery, targets), gallery_size)
    recall = text_image_recall(text_emb, gallery, np.arange(gallery_size))
    return {
        "episodes": float(complete.sum()),
        "gallery_size": float(gallery_size),
        "m_at_B": with_text["m_at_B"],
        "m_at_A": with_text["m_at_A"],
        "wm_at_B": with_text["wm_at_B"],
        "sketch_only_m_at_B": without_text["m_at_B"],
        "chance_m_at_B": 100.0 * chance_reciprocal_rank(gallery_size),
        "t2i_r_at_1": recall["t2i_r_at_1"],
        "chance_r_at_1": 100.0 / gallery_size,
    }
