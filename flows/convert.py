"""`fvlp convert-checkpoint IN OUT.safetensors`: OpenAI's TorchScript CLIP weights to safetensors, once.

OpenAI ships CLIP as TorchScript archives; loading one with ``torch.jit.load`` compiles and
runs the code inside it. This command reads only the tensors (:mod:`fvlp_core.torchscript`)
and writes them as safetensors, which every fvlp stage then takes as ``--init-checkpoint``.
OpenAI's weights were trained with QuickGELU: the command says which ``--model`` fits them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import torch

from fvlp_core.models.factory import OPENAI_MARKER_KEYS
from fvlp_core.torchscript import TorchScriptError, read_torchscript_tensors
from storage.checkpoints import write_safetensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fvlp convert-checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="TorchScript archive, e.g. OpenAI's ViT-B-16.pt")
    parser.add_argument("target", type=Path, help="Where to write the weights (.safetensors)")
    args = parser.parse_args(argv)
    if args.target.suffix != ".safetensors":
        parser.error(f"{args.target}: the target must end in .safetensors")
    if args.target.resolve() == args.source.resolve():
        parser.error("the target must not overwrite the source")
    try:
        tensors = read_torchscript_tensors(args.source)
    except (OSError, TorchScriptError) as err:
        parser.error(str(err))
    write_safetensors(args.target, tensors)
    print(f"{args.target}: {len(tensors)} tensors from {args.source}")
    if any(key in tensors for key in OPENAI_MARKER_KEYS):
        fits = quickgelu_configs_for(tensors)
        print(
            "OpenAI weights, trained with QuickGELU: train with a -quickgelu model config"
            + (f": --model {' or '.join(fits)}" if fits else "")
        )
    return 0


def quickgelu_configs_for(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The -quickgelu open_clip configs whose vision tower has these weights' width, patch and depth."""
    conv = tensors.get("visual.conv1.weight")
    if conv is None:
        return []
    layers = len({key.split(".")[3] for key in tensors if key.startswith("visual.transformer.resblocks.")})
    found = (conv.shape[0], conv.shape[-1], layers)
    fits = []
    for name in open_clip.list_models():
        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
        if (
            name.endswith("-quickgelu")
            and (vision.get("width"), vision.get("patch_size"), vision.get("layers")) == found
        ):
            fits.append(name)
    return fits
