"""Weights as people have them: OpenAI's QuickGELU state dicts, OpenAI's TorchScript archives,
open_clip checkpoints trained at another image size. Each form is a random-weight tiny model
saved the way that form is distributed."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch

import fvlp_core.models  # noqa: F401  (registers the fvlp-vit-tiny configs with open_clip)
from fvlp_core.models.factory import CheckpointError, create_backbone, read_weights
from fvlp_core.torchscript import TorchScriptError, read_torchscript_tensors

OPENAI_EXTRAS = {"input_resolution": 64, "context_length": 32, "vocab_size": 49408}


def _openai_style_model() -> torch.nn.Module:
    """A random QuickGELU CLIP carrying OpenAI's non-weight entries, as OpenAI's models do."""
    model = open_clip.create_model("fvlp-vit-tiny-quickgelu", pretrained=None).eval()
    for name, value in OPENAI_EXTRAS.items():
        if hasattr(model, name):  # open_clip keeps two of them as plain ints; OpenAI's are tensors
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    return model


def _torchscript_archive(model: torch.nn.Module, path: Path) -> Path:
    image = torch.zeros(1, 3, 64, 64)
    text = torch.zeros(1, 32, dtype=torch.long)
    with torch.no_grad():
        traced = torch.jit.trace(model, (image, text), strict=False, check_trace=False)
    torch.jit.save(traced, path)
    return path


def _same_weights(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    expected = {k: v for k, v in source.state_dict().items() if k not in OPENAI_EXTRAS}
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_openai_weights_in_a_gelu_model_are_refused_naming_the_quickgelu_config(tmp_path: Path) -> None:
    source = _openai_style_model()
    path = tmp_path / "openai_state_dict.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"trained with QuickGELU .* use --model fvlp-vit-tiny-quickgelu"):
        create_backbone("fvlp-vit-tiny", path)
    _same_weights(create_backbone("fvlp-vit-tiny-quickgelu", path), source)


def test_open_clip_config_beside_the_weights_declares_the_activation(tmp_path: Path) -> None:
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file(open_clip.create_model("fvlp-vit-tiny", pretrained=None).state_dict(), path)
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": false}}')
    with pytest.raises(CheckpointError, match="declares GELU weights .* use --model fvlp-vit-tiny$"):
        create_backbone("fvlp-vit-tiny-quickgelu", path)
    create_backbone("fvlp-vit-tiny", path)


def test_torchscript_archive_is_refused_then_converted_without_running_it(tmp_path: Path, capsys) -> None:
    from flows.cli import main

    source = _openai_style_model()
    archive = _torchscript_archive(source, tmp_path / "ViT-tiny.pt")
    with pytest.raises(CheckpointError, match=r"TorchScript archive .* `fvlp convert-checkpoint"):
        read_weights(archive)

    target = tmp_path / "ViT-tiny.safetensors"
    assert main(["convert-checkpoint", str(archive), str(target)]) == 0
    printed = capsys.readouterr().out
    assert "QuickGELU" in printed and "--model fvlp-vit-tiny-quickgelu" in printed
    _same_weights(create_backbone("fvlp-vit-tiny-quickgelu", target), source)
    with pytest.raises(CheckpointError, match="QuickGELU"):
        create_backbone("fvlp-vit-tiny", target)


def test_an_archive_pickling_anything_but_tensors_is_refused(tmp_path: Path) -> None:
    """The converter's unpickler knows tensors and containers only: an archive naming any other
    global (here os.system) is refused before anything is called."""
    archive = _torchscript_archive(_openai_style_model(), tmp_path / "good.pt")
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive) as good, zipfile.ZipFile(evil, "w") as out:
        for item in good.infolist():
            data = good.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(__import__("os").system, protocol=2)
            out.writestr(item, data)
    with pytest.raises(TorchScriptError, match="refused to load posix.system"):
        read_torchscript_tensors(evil)


def test_weights_of_another_image_size_get_their_position_embedding_resized(tmp_path: Path) -> None:
    """As open_clip's loader does: 96 px weights (12 x 12 patches) into the 64 px model (8 x 8)."""
    from safetensors.torch import save_file

    larger = open_clip.create_model("fvlp-vit-tiny", pretrained=None, force_image_size=96)
    path = tmp_path / "at_96px.safetensors"
    save_file(larger.state_dict(), path)
    model = create_backbone("fvlp-vit-tiny", path)
    resized = model.visual.positional_embedding
    assert resized.shape == (1 + 8 * 8, 192) and larger.visual.positional_embedding.shape == (1 + 12 * 12, 192)
    assert torch.equal(resized[0], larger.visual.positional_embedding[0])  # the class token's is kept
    assert torch.equal(model.visual.conv1.weight, larger.visual.conv1.weight)
