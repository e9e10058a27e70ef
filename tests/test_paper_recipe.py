"""The reference recipe end to end on CPU: ViT-B-16 at 224 px, an OpenAI-style checkpoint and an
FS2K-SDE root in the reference layout, through the commands a GPU user runs."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from fvlp_core.checkpoint import checkpoint_architecture, checkpoint_config, load_checkpoint
from fvlp_core.models.pretrain import EMPTY_GROUP
from tests.fs2k_fixtures import build_reference

# OpenAI's CLIP state dicts carry these non-weight entries (they mark QuickGELU weights).
OPENAI_EXTRAS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}


def _openai_style_vit_b16(path: Path) -> Path:
    """Random ViT-B/16 weights saved the way OpenAI's state dicts are."""
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    state = dict(model.state_dict())
    state.update({name: torch.tensor(value) for name, value in OPENAI_EXTRAS.items()})
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_paper_recipe_fine_tunes_vit_b16_from_openai_weights_on_an_fs2k_root(prefect_harness, tmp_path: Path):
    from flows.cli import main
    from fvlp_core.embed import FVLPEncoder

    root = build_reference(tmp_path / "fs2k")
    data = tmp_path / "data"
    assert main(["episodes", "--fs2k-sde", str(root), "--data-root", str(data), "--steps-per-episode", "3"]) == 0
    weights = _openai_style_vit_b16(tmp_path / "ViT-B-16.pt")
    # Batch 2 on the fixture's 5 train photos: two optimiser steps; select on test as the paper did.
    command = ["finetune", "--recipe", "fvlp-paper", "--init-checkpoint", str(weights), "--data-root", str(data)]
    command += ["--batch-size", "2", "--epochs", "1", "--select-on", "test", "--device", "cpu", "--run-id", "paper"]
    assert main(command) == 0

    run = data / "checkpoints" / "finetune" / "paper"
    state = load_checkpoint(run / "checkpoint.pt")
    config = checkpoint_config(state)
    assert (config["recipe"], config["model"], config["augment"], config["lr"]) == (
        "fvlp-paper",
        "ViT-B-16-quickgelu",
        True,
        3e-5,
    )
    assert config["loss_weights"] == {"itc": 0.5, "itsc": 0.5, "itm": 10.0}
    assert state["step"] == 2
    # The reference's 57,600-slot queue, scaled to the 5 train photos, filled by the 2 x 2 photos seen.
    assert checkpoint_architecture(state)["queue_size"] == 5
    model = state["model"]
    assert int((model["photo_key_queue"] != EMPTY_GROUP).sum()) == 4 and int(model["queue_ptr"]) == 4
    assert any(key.startswith("momentum_encoders.backbone.visual") for key in model)

    # The handed-on weights leave the training-only momentum encoders and queues behind.
    selected = load_checkpoint(run / "selected.pt")["model"]
    assert not any(key.startswith(("momentum_encoders.", "photo_key_queue")) for key in selected)
    encoder = FVLPEncoder.load(run / "selected.pt", device="cpu")
    assert encoder.image_size == 224
    sketch = torch.zeros(1, 3, 224, 224)
    query = encoder.encode_sketches(sketch, ["a man with short hair"])
    assert tuple(query.shape) == (1, 256) and torch.isfinite(query).all()
