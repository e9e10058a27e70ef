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
from fvlp_core.models.factory import CheckpointError, encode_image_tokens, read_weights
from fvlp_core.models.fusion import default_fusion_widths

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
        losses.append(out["loss"].item())
        out["loss"].backward()
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
    model = FVLPPretrain(TINY, queue_size=6)
    features = torch.nn.functional.normalize(torch.randn(4, model.image_queue.shape[0]), dim=-1)
    model._enqueue(features, features, torch.tensor([1, 2, 3, 4]))
    model._enqueue(features, features, torch.tensor([5, 6, 7, 8]))
    assert model.group_queue.tolist() == [7, 8, 3, 4, 5, 6]
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.text_queue[:, 0], features[2])


def test_fusion_losses_are_finite_and_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    model = FVLPFusion(TINY)
    images, text, groups = _fixed_batch()
    sketches = images.flip(-1)
    losses = _train_steps(model, (images, sketches, text, groups), steps=10)
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
