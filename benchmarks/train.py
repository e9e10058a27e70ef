"""Training throughput: our pretraining and fine-tuning steps next to bare open_clip steps doing the same model math.

The references are open_clip's own recipe on the same backbone and batch (CLIP forward,
``open_clip.ClipLoss``, backward, fused AdamW), written without any fvlp code path:

- pretraining: a contrastive step; with ``momentum``, also the EMA update and the momentum
  copy's no-grad forward of the same images and captions (what queues and soft targets need);
- fine-tuning: photos and sketches through the ViT in one pass, the multi-scale maps
  (``visual.forward_intermediates``) through the same fusion head, captions through the text
  tower and a linear projection, and two ClipLosses (photo<->caption, sketch+caption<->photo);
  with ``momentum``, the EMA update and no-grad forward of copies of all of it.

Ours run with and without the ITM loss (``loss_weights.itm = 0`` skips it), so the printout
separates the contrastive overhead (target 1.1x) from ITM's share of the step. open_clip pads
captions to the whole context; ours are cut after the longest caption (see
``fvlp_core.models.factory.Tokenizer``) unless ``--full-context``. Steps are measured in
interleaved rounds, so load from other processes hits every variant alike; ratios are what to read.

    python benchmarks/train.py                      # fvlp-vit-tiny, CPU
    python benchmarks/train.py --model ViT-B-16 --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from fvlp_core.models import FVLPFusion, FVLPPretrain, get_tokenizer
from fvlp_core.models.factory import fusion_layer_indices, image_size, vision_width
from fvlp_core.models.fusion import MultiScaleFusion, default_fusion_widths
from fvlp_core.models.losses import ema_update

CAPTIONS = ["a young woman with arched eyebrows and a slight smile", "a bald man with a beard and glasses"]
MOMENTUM = 0.995
# The momentum settings' queue and soft-target weight (the paper recipe's kind, shorter queue).
QUEUE_SIZE, ALPHA = 1024, 0.4


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareFinetune(nn.Module):
    """open_clip's CLIP plus the fine-tuning model's extra math: fusion head and text projection."""

    def __init__(self, model_name: str, embed_dim: int = 256):
        super().__init__()
        self.clip = open_clip.create_model(model_name)
        width = vision_width(self.clip)
        self.layers = fusion_layer_indices(len(self.clip.visual.transformer.resblocks))
        self.head = MultiScaleFusion(width, len(self.layers), *default_fusion_widths(width), embed_dim=embed_dim)
        self.text_proj = nn.Linear(self.clip.text_projection.shape[1], embed_dim)

    def forward(self, photos: torch.Tensor, sketches: torch.Tensor, text: torch.Tensor):
        maps = self.clip.visual.forward_intermediates(
            torch.cat([photos, sketches]), indices=self.layers, output_fmt="NCHW", intermediates_only=True
        )["image_intermediates"]
        images = self.head([m.float() for m in maps])
        captions = self.text_proj(self.clip.encode_text(text).float())
        batch = photos.shape[0]
        return (
            F.normalize(images[:batch], dim=-1),
            F.normalize(captions, dim=-1),
            F.normalize(images[batch:] + captions, dim=-1),
        )


def make_steps(
    model_name: str,
    batch: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    full_context: bool,
    grad_checkpointing: bool = False,
) -> dict[str, Callable[[int], None]]:
    torch.manual_seed(0)
    size = image_size(open_clip.create_model(model_name))
    photos = torch.randn(batch, 3, size, size, device=device)
    sketches = torch.randn(batch, 3, size, size, device=device)
    captions = [CAPTIONS[i % 2] + f" {i}" for i in range(batch)]
    padded = open_clip.get_tokenizer(model_name)(captions).to(device)  # open_clip pads to the context
    text = padded if full_context else get_tokenizer(model_name)(captions).to(device)
    groups = torch.arange(batch, device=device)
    clip_loss = open_clip.ClipLoss()

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def step_of(module: nn.Module, losses: Callable[[int], torch.Tensor]) -> Callable[[int], None]:
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5, fused=True)

        def step(seed: int) -> None:
            with autocast():
                loss = losses(seed)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def momentum_copy(module: nn.Module) -> nn.Module:
        return copy.deepcopy(module).requires_grad_(False)

    steps: dict[str, Callable[[int], None]] = {}

    def add_variants(momentum: bool) -> None:
        settings = "momentum" if momentum else "in-batch"
        queue_size, alpha = (QUEUE_SIZE, ALPHA) if momentum else (0, 0.0)

        clip = open_clip.create_model(model_name).to(device)
        clip_momentum = momentum_copy(clip) if momentum else None

        def bare_pretrain(seed: int, clip=clip, clip_momentum=clip_momentum) -> torch.Tensor:
            if clip_momentum is not None:
                with torch.no_grad():
                    ema_update(clip, clip_momentum, MOMENTUM)
                    clip_momentum.encode_image(photos, normalize=True)
                    clip_momentum.encode_text(padded, normalize=True)
            image = clip.encode_image(photos, normalize=True)
            return clip_loss(image, clip.encode_text(padded, normalize=True), clip.logit_scale.exp())

        def add_ours(
            stage: str, model: Callable[[], nn.Module], losses: Callable[..., dict[str, torch.Tensor]]
        ) -> None:
            for match in (False, True):
                built = model().to(device)
                built.backbone.set_grad_checkpointing(grad_checkpointing)  # as the engine does
                steps[f"fvlp {stage}, {settings}{', ITM' if match else ''}"] = step_of(
                    built, lambda seed, built=built, match=match: sum(losses(built, seed, match).values())
                )

        steps[f"bare pretrain, {settings}"] = step_of(clip, bare_pretrain)
        add_ours(
            "pretrain",
            lambda: FVLPPretrain(model_name, queue_size=queue_size, alpha=alpha),
            lambda model, seed, match: model(photos, text, groups, seed=seed, match=match),
        )

        bare = BareFinetune(model_name).to(device)
        bare_momentum = momentum_copy(bare) if momentum else None

        def bare_finetune(seed: int, bare=bare, bare_momentum=bare_momentum) -> torch.Tensor:
            if bare_momentum is not None:
                with torch.no_grad():
                    ema_update(bare, bare_momentum, MOMENTUM)
                    bare_momentum(photos, sketches, padded)
            photo, caption, query = bare(photos, sketches, padded)
            scale = bare.clip.logit_scale.exp()
            return clip_loss(photo, caption, scale) + clip_loss(query, photo, scale)

        steps[f"bare finetune, {settings}"] = step_of(bare, bare_finetune)
        add_ours(
            "finetune",
            lambda: FVLPFusion(model_name, queue_size=queue_size, alpha=alpha),
            lambda model, seed, match: model(photos, sketches, text, groups, groups, seed=seed, match=match),
        )

    for momentum in (False, True):
        add_variants(momentum)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fvlp-vit-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-context", action="store_true", help="feed ours open_clip's padded captions too")
    parser.add_argument("--grad-checkpointing", action="store_true", help="ours recompute block activations")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    steps = make_steps(args.model, args.batch_size, device, autocast_dtype, args.full_context, args.grad_checkpointing)
    for step in steps.values():  # warm-up: allocator, kernels, queues
        step(0)
    per_step: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        for name, step in steps.items():
            _synchronise(device)
            started = time.perf_counter()
            for i in range(args.steps):
                step(round_index * args.steps + i)
            _synchronise(device)
            per_step[name].append((time.perf_counter() - started) / args.steps)

    print(
        f"model {args.model}, batch {args.batch_size}, device {device}, "
        f"precision {'bf16' if autocast_dtype else 'fp32'}, torch threads {torch.get_num_threads()}, "
        f"captions {'padded to the context' if args.full_context else 'cut after the longest (ours)'}"
        f"{', ours with gradient checkpointing' if args.grad_checkpointing else ''}"
    )
    median = {name: statistics.median(times) for name, times in per_step.items()}
    print(f"{'variant':<34} {'s/step':>8} {'samples/s':>10} {'vs bare':>8}")
    for name, seconds in median.items():
        stage, settings = name.split(", ")[:2]
        reference = median[f"bare {stage.split()[-1]}, {settings}"]
        print(f"{name:<34} {seconds:8.3f} {args.batch_size / seconds:10.1f} {seconds / reference:7.2f}x")
    for name, seconds in median.items():
        if name.endswith(", ITM"):
            share = 1 - median[name.removesuffix(", ITM")] / seconds
            print(f"ITM share of {name.removesuffix(', ITM')} step: {100 * share:.0f}%")
    print("(fine-tuning encodes photos and sketches: twice the images of pretraining per sample)")


if __name__ == "__main__":
    main()
