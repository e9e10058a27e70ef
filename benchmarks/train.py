"""Training throughput: our pretraining and fine-tuning steps next to a bare open_clip step.

The bare step is open_clip's own recipe on the same backbone and batch: CLIP forward (its
captions padded to the whole context, as open_clip tokenizes; ours are cut after the longest
caption, see ``fvlp_core.models.factory.Tokenizer``), ``open_clip.ClipLoss``, backward, AdamW.
Ours add momentum encoders + queues + ITM (pretraining), or multi-scale fusion over photos
AND sketches + ITSC + ITM (fine-tuning). Steps are measured in interleaved rounds, so load
from other processes hits every variant alike; the ratio is what to read.

    python benchmarks/train.py                      # fvlp-vit-tiny, CPU
    python benchmarks/train.py --model ViT-B-16 --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch

from fvlp_core.models import FVLPFusion, FVLPPretrain, get_tokenizer
from fvlp_core.models.factory import image_size

CAPTIONS = ["a young woman with arched eyebrows and a slight smile", "a bald man with a beard and glasses"]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(model_name: str, batch: int, device: torch.device, autocast_dtype: torch.dtype | None):
    torch.manual_seed(0)
    bare = open_clip.create_model(model_name).to(device)
    pretrain = FVLPPretrain(model_name, queue_size=1024).to(device)
    fusion = FVLPFusion(model_name).to(device)
    size = image_size(bare)
    images = torch.randn(batch, 3, size, size, device=device)
    captions = [CAPTIONS[i % 2] + f" {i}" for i in range(batch)]
    text = get_tokenizer(model_name)(captions).to(device)  # ours: cut after the longest caption
    full_text = open_clip.get_tokenizer(model_name)(captions).to(device)  # open_clip pads to the context
    groups = torch.arange(batch, device=device)
    clip_loss = open_clip.ClipLoss()
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5, fused=True)  # as the engine
        for name, m in (("bare", bare), ("pretrain", pretrain), ("finetune", fusion))
    }

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def bare_step(seed: int) -> None:
        with autocast():
            image_features = bare.encode_image(images, normalize=True)
            text_features = bare.encode_text(full_text, normalize=True)
            loss = clip_loss(image_features, text_features, bare.logit_scale.exp())
        loss.backward()
        optimizers["bare"].step()
        optimizers["bare"].zero_grad(set_to_none=True)

    def pretrain_step(seed: int) -> None:
        with autocast():
            loss = sum(pretrain(images, text, groups, seed=seed).values())
        loss.backward()
        optimizers["pretrain"].step()
        optimizers["pretrain"].zero_grad(set_to_none=True)

    def finetune_step(seed: int) -> None:
        with autocast():
            loss = sum(fusion(images, images, text, groups, groups, seed=seed).values())
        loss.backward()
        optimizers["finetune"].step()
        optimizers["finetune"].zero_grad(set_to_none=True)

    return {"bare open_clip": bare_step, "fvlp pretrain": pretrain_step, "fvlp finetune": finetune_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fvlp-vit-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    steps = make_steps(args.model, args.batch_size, device, autocast_dtype)
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
        f"precision {'bf16' if autocast_dtype else 'fp32'}, torch threads {torch.get_num_threads()}"
    )
    bare = statistics.median(per_step["bare open_clip"])
    print(f"{'variant':<16} {'s/step':>8} {'samples/s':>10} {'overhead vs bare':>17}")
    for name, times in per_step.items():
        median = statistics.median(times)
        print(f"{name:<16} {median:8.3f} {args.batch_size / median:10.1f} {median / bare:16.2f}x")
    print("(finetune encodes photos and sketches: twice the images of the other two per sample)")


if __name__ == "__main__":
    main()
