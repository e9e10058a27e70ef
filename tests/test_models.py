"""Model pieces: open_clip backbones, fusion shapes, losses that learn, safe checkpoint loading."""

from __future__ import annotations

import pickle

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from fvlp_core.models import (
    FVLPFusion,
    FVLPPretrain,
    MultiScaleFusion,
    create_backbone,
    fusion_layer_indices,
    get_tokenizer,
)
from fvlp_core.models import losses as losses_module
from fvlp_core.models import pretrain as pretrain_module
from fvlp_core.models.factory import CheckpointError, encode_image_tokens, read_weights
from fvlp_core.models.fusion import default_fusion_widths
from fvlp_core.models.losses import enqueue, positive_targets, sample_hard_negatives

TINY = "fvlp-vit-tiny"
CAPTIONS = [
    "a red circle",
    "a blue square",
    "a green circle",
    "a yellow square",
    "a red square",
    "a blue circle",
    "a green square",
    "a yellow circle",
]


def test_small_configs_are_registered_with_open_clip():
    assert TINY in open_clip.list_models()
    assert "fvlp-vit-small" in open_clip.list_models()


def test_fusion_depths_follow_the_reference_and_scale_with_depth():
    assert fusion_layer_indices(12) == [3, 5, 7, 11]
    assert fusion_layer_indices(6) == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="too shallow"):
        fusion_layer_indices(2)


def test_vit_b16_multiscale_fusion_matches_the_reference_shapes():
    torch.manual_seed(0)
    backbone = create_backbone("ViT-B-16")
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, tokens, maps = encode_image_tokens(backbone, images, fusion_layer_indices(12))
    assert [tuple(m.shape) for m in maps] == [(1, 768, 14, 14)] * 4
    assert tuple(tokens.shape) == (1, 196, 768)

    assert default_fusion_widths(768) == (2048, 512)
    fusion = MultiScaleFusion(768).eval()
    with torch.no_grad():
        pooled = fusion.pooled(maps)
        embedding = fusion(maps)
    assert tuple(fusion.conv.weight.shape) == (2048, 4 * 768, 3, 3)
    assert tuple(pooled.shape) == (1, 2048)
    assert tuple(embedding.shape) == (1, 256)


def _fixed_batch(size: int = 8):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, 64, 64, generator=generator)
    text = get_tokenizer(TINY)(CAPTIONS[:size])
    return images, text, torch.arange(size)


def _train_steps(model, inputs, steps: int, lr: float = 3e-4) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        out = model(*inputs, seed=step)
        assert all(torch.isfinite(v) for v in out.values()), out
        loss = sum(out.values())
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


def test_pretraining_losses_are_finite_and_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    # No queue (with one fixed batch it would only hold copies of it) and no soft targets
    # (an untrained momentum model's are near-uniform and hold the loss up on purpose).
    model = FVLPPretrain(TINY, queue_size=0, momentum=0.5, alpha=0.0)
    images, text, groups = _fixed_batch()
    losses = _train_steps(model, (images, text, groups), steps=12)
    assert min(losses[-3:]) < 0.5 * losses[0], losses


def test_feature_queue_wraps_around_and_keeps_groups():
    features = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    feature_queue = torch.zeros(16, 6)
    group_queue = torch.zeros(6, dtype=torch.long)
    pointer = torch.zeros((), dtype=torch.long)
    enqueue([feature_queue, group_queue], [features, torch.tensor([1, 2, 3, 4])], pointer)
    enqueue([feature_queue, group_queue], [features, torch.tensor([5, 6, 7, 8])], pointer)
    assert group_queue.tolist() == [7, 8, 3, 4, 5, 6]
    assert int(pointer) == 2
    assert torch.equal(feature_queue[:, 0], features[2])


def test_a_batch_is_not_its_own_queued_negative():
    """The queue the loss reads is the one from before this batch: its momentum features
    arrive only after the loss, so the batch's pairs are never scored as negatives of themselves."""
    torch.manual_seed(0)
    model = FVLPPretrain(TINY, queue_size=16, alpha=0.0)
    images, text, groups = _fixed_batch()
    before = model.image_queue.clone()
    seen = []
    original = losses_module.queued_contrastive

    def spy(rows, columns, queue, logit_scale, targets):
        seen.append(queue.clone())
        return original(rows, columns, queue, logit_scale, targets)

    pretrain_module.queued_contrastive = spy
    try:
        model(images, text, groups, seed=0)
    finally:
        pretrain_module.queued_contrastive = original
    assert torch.equal(seen[1], before)
    assert not torch.equal(model.image_queue, before)
    assert model.group_queue[:8].tolist() == groups.tolist()


def test_fusion_momentum_queues_fill_with_photo_keys_and_count_queued_copies_as_positives():
    torch.manual_seed(0)
    model = FVLPFusion(TINY, embed_dim=32, queue_size=12, alpha=0.4)
    images, text, groups = _fixed_batch()
    keys = torch.arange(100, 108)
    out = model(images, images.flip(-1), text, groups, keys, seed=0)
    assert set(out) == {"itc", "itsc", "itm"} and all(torch.isfinite(v) for v in out.values())
    assert model.photo_key_queue[:8].tolist() == keys.tolist()
    assert model.caption_group_queue[:8].tolist() == groups.tolist()
    assert int(model.queue_ptr) == 8
    assert not any(p.requires_grad for p in model.momentum_encoders.parameters())
    # The same photos again: their queued copies are positives, so the hard targets split
    # between the batch column and the queue slot of each photo.
    targets = positive_targets(keys, torch.cat([keys, model.photo_key_queue]))
    assert torch.allclose(targets[0, [0, 8]], torch.tensor([0.5, 0.5]))
    # A fine-tuned checkpoint embeds without its momentum half.
    state = model.state_dict()
    inference = FVLPFusion.for_inference(
        {"model_name": TINY, "embed_dim": 32, "queue_size": 12, "alpha": 0.4}, state
    ).eval()
    assert inference.momentum_encoders is None
    model.eval()
    with torch.no_grad():
        assert torch.allclose(inference.encode_images(images), model.encode_images(images))


def test_matching_loss_leaves_the_shared_text_tower_to_the_contrastive_loss():
    torch.manual_seed(0)
    model = FVLPPretrain(TINY, queue_size=0, alpha=0.0)
    images, text, groups = _fixed_batch()
    model(images, text, groups, seed=0)["itm"].backward()
    text_tower = [model.backbone.token_embedding.weight, *model.backbone.transformer.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in text_tower)
    assert model.grounded.head.weight.grad.abs().sum() > 0
    assert model.backbone.visual.conv1.weight.grad.abs().sum() > 0


def test_hard_negatives_are_never_positives_and_rows_of_positives_fall_back_to_any_other_column():
    similarity = torch.randn(6, 6)
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    same = groups[:, None] == groups[None, :]
    for seed in range(20):
        drawn = sample_hard_negatives(similarity, same, torch.Generator().manual_seed(seed))
        assert drawn.device == similarity.device
        assert not same[torch.arange(6), drawn].any()
    every_caption_alike = torch.ones(4, 4, dtype=torch.bool)
    drawn = sample_hard_negatives(torch.randn(4, 4), every_caption_alike, torch.Generator().manual_seed(0))
    assert (drawn != torch.arange(4)).all()
    # fully hard: the most similar negative wins when it dominates
    peaked = torch.full((3, 3), -50.0).fill_diagonal_(0.0)
    peaked[0, 2] = peaked[1, 0] = peaked[2, 1] = 50.0
    assert sample_hard_negatives(peaked, torch.eye(3, dtype=torch.bool), torch.Generator()).tolist() == [2, 0, 1]


def test_temperature_is_clamped_into_its_range():
    torch.manual_seed(0)
    model = FVLPFusion(TINY, embed_dim=32, temperature_range=(0.001, 0.5))
    with torch.no_grad():
        model.backbone.logit_scale.fill_(10.0)  # temperature 4.5e-5
    images, text, groups = _fixed_batch()
    model(images, images, text, groups, torch.arange(8), seed=0)
    assert float(model.backbone.logit_scale.detach().exp()) == pytest.approx(1000.0, rel=1e-4)


def test_fusion_losses_are_finite_and_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    model = FVLPFusion(TINY)
    images, text, groups = _fixed_batch()
    sketches = images.flip(-1)
    losses = _train_steps(model, (images, sketches, text, groups, torch.arange(8)), steps=10)
    assert losses[-1] < 0.7 * losses[0], losses


def test_fusion_embeddings_share_one_normalised_space():
    torch.manual_seed(0)
    model = FVLPFusion(TINY, embed_dim=32).eval()
    images, text, _ = _fixed_batch(4)
    with torch.no_grad():
        outputs = [
            model.encode_images(images),
            model.encode_texts(text),
            model.encode_sketches(images),
            model.encode_sketches(images, text),
        ]
    for out in outputs:
        assert tuple(out.shape) == (4, 32)
        assert torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_init_checkpoint_loads_open_clip_weights(tmp_path, suffix):
    torch.manual_seed(1)
    source = open_clip.create_model(TINY)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_backbone(TINY, path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_init_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        create_backbone(TINY, path)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_reading_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": _Payload()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        read_weights(path)


def test_both_sketch_queries_come_from_one_image_pass_and_match_the_single_queries(monkeypatch):
    """Evaluation scores sketch-only and sketch+text: one image-tower pass serves both."""
    from fvlp_core.embed import FVLPEncoder

    torch.manual_seed(0)
    model = FVLPFusion(TINY, embed_dim=32).eval()
    encoder = FVLPEncoder(model, TINY, "finetune", torch.device("cpu"), batch_size=3)
    images = _fixed_batch(4)[0]
    captions = ["a man", "a woman", "a child", "a man with a hat"]
    passes = []
    real_forward = FVLPFusion._image_forward
    monkeypatch.setattr(FVLPFusion, "_image_forward", lambda self, x: passes.append(len(x)) or real_forward(self, x))
    only, fused = encoder.encode_sketch_queries(images, captions)
    assert passes == [3, 1]  # each sketch through the image tower once
    assert torch.allclose(only, encoder.encode_sketches(images), atol=1e-6)
    assert torch.allclose(fused, encoder.encode_sketches(images, captions), atol=1e-6)


def test_tokenizer_cuts_padding_without_changing_text_features_or_matching() -> None:
    """Captions end at their end-of-text token under a causal mask: cutting the batch after its
    longest caption gives the features and match logits of the full context."""
    from fvlp_core.models.factory import encode_text_tokens

    torch.manual_seed(0)
    model = FVLPPretrain("fvlp-vit-tiny").eval()
    captions = ["a young woman with arched eyebrows", "a bald man with a beard, glasses and a big smile"]
    cut = get_tokenizer("fvlp-vit-tiny")(captions)
    full = open_clip.get_tokenizer("fvlp-vit-tiny")(captions)
    assert cut.shape[1] == int(full.argmax(dim=-1).max()) + 1 < full.shape[1]
    assert torch.equal(cut, full[:, : cut.shape[1]])
    image_tokens = torch.randn(2, 65, 192)
    with torch.no_grad():
        features = encode_text_tokens(model.backbone, cut)[0], encode_text_tokens(model.backbone, full)[0]
        logits = model.grounded(model.backbone, cut, image_tokens), model.grounded(model.backbone, full, image_tokens)
    torch.testing.assert_close(*features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(*logits, atol=1e-5, rtol=1e-5)


def test_matching_head_gathers_each_rows_image_and_matches_open_clips_cross_attention_block() -> None:
    """Keys and values are projected once per image and gathered per row: the logits (and their
    gradients to the image tokens) equal open_clip's cross-attention block run on every row's
    own copy of its image."""
    from open_clip.transformer import ResidualAttentionBlock

    from fvlp_core.models.factory import causal_text_input

    torch.manual_seed(0)
    model = FVLPPretrain("fvlp-vit-tiny")
    grounded = model.grounded
    text = get_tokenizer("fvlp-vit-tiny")(["a bald man with a beard", "a young woman", "a man with glasses"])
    image_tokens = torch.randn(2, 65, 192, requires_grad=True)
    index = torch.tensor([0, 1, 0])

    def open_clip_logits(tokens: torch.Tensor) -> torch.Tensor:
        x, mask = causal_text_input(model.backbone, text, detached=True)
        image = grounded.image_proj(tokens)
        for self_block, cross_block in zip(model.backbone.transformer.resblocks, grounded.cross_blocks):
            assert isinstance(cross_block, ResidualAttentionBlock)
            x = cross_block(self_block(x, attn_mask=mask), k_x=image, v_x=image)
        pooled = grounded.ln_final(x)[torch.arange(3), text.argmax(dim=-1)]
        return grounded.head(pooled)

    gathered = grounded(model.backbone, text, image_tokens, image_index=index)
    (gathered_grad,) = torch.autograd.grad(gathered.sum(), image_tokens)
    copied = open_clip_logits(image_tokens[index])
    (copied_grad,) = torch.autograd.grad(copied.sum(), image_tokens)
    torch.testing.assert_close(gathered, copied, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gathered_grad, copied_grad, atol=1e-5, rtol=1e-5)
    # Without an index every row reads its own image tokens.
    torch.testing.assert_close(grounded(model.backbone, text, image_tokens[index]), gathered, atol=1e-6, rtol=1e-6)


def test_tokenizer_tokenizes_each_distinct_text_once_and_gives_open_clips_ids() -> None:
    tokenizer = get_tokenizer("fvlp-vit-tiny")
    tokenized: list[str] = []
    tokenize = tokenizer.tokenize
    tokenizer.tokenize = lambda texts: tokenized.extend(texts) or tokenize(texts)
    captions = ["a man with glasses", "a young woman with arched eyebrows", "a man with glasses"]
    first, again = tokenizer(captions), tokenizer(captions[::-1] + ["a bald man"])
    assert tokenized == ["a man with glasses", "a young woman with arched eyebrows", "a bald man"]
    full = open_clip.get_tokenizer("fvlp-vit-tiny")(captions[::-1] + ["a bald man"])
    assert torch.equal(again, full[:, : again.shape[1]]) and torch.equal(first, again[[2, 1, 0]])
