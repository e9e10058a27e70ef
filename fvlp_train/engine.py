"""The training loop shared by pretraining and fine-tuning.

Single process or under ``torchrun`` (DistributedDataParallel; contrastive negatives and
queues are gathered across ranks). bf16 autocast on CUDA, gradient accumulation, warm-up +
cosine schedule, separate learning rate for the fusion head, per-step JSON loss lines on
stdout, a tqdm bar on stderr, periodic atomic checkpoints and exact resume: rerunning the
same config with the same run id continues from the last checkpoint and ends with the
parameters an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fvlp_core.checkpoint import checkpoint_config, load_checkpoint
from fvlp_core.config import FinetuneConfig, PretrainConfig, TrainConfig
from fvlp_core.models import create_model, get_tokenizer
from fvlp_core.models.factory import configured_image_size
from fvlp_core.models.fusion import inference_state
from fvlp_train.checkpoint import save_checkpoint, write_run_config
from fvlp_train.data import FacePairStream, SketchEpisodeStream, StreamPlan, epoch_batches
from fvlp_train.validate import selection_episodes, validate_finetune, validate_pretrain
from storage.checkpoints import CHECKPOINT_NAME, METRICS_NAME, SELECTED_NAME, handed_on, mark_latest, run_dir
from storage.files import write_text_atomic

STAGES = ("pretrain", "finetune")


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    autocast_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Device, precision and (under torchrun) the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but CUDA is not available")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if config.precision == "bf16" and not use_cuda:
        raise RuntimeError("precision=bf16 is for CUDA; use fp32 (or auto) on CPU")
    torch.set_num_threads(config.threads_per_process())
    bf16 = config.precision == "bf16" or (config.precision == "auto" and use_cuda)
    return Runtime(device, rank, world_size, local_rank, torch.bfloat16 if bf16 else None)


def seed_everything(seed: int, runtime: Runtime) -> None:
    torch.manual_seed(seed)
    if runtime.device.type == "cpu":
        torch.use_deterministic_algorithms(True)


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def reference_schedule(config: TrainConfig, peak_lr: float, steps_per_epoch: int):
    """The FVLP code's schedule as a factor of ``peak_lr``: in the first epoch every group rises
    linearly from ``warmup_lr`` toward the encoder lr over ``warmup_steps`` (cut off where the
    epoch ends); from the second epoch each group follows a per-epoch cosine from its own lr."""

    def factor(step: int) -> float:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch == 0 and config.warmup_steps > 0:
            warm = config.warmup_lr + (config.lr - config.warmup_lr) * in_epoch / config.warmup_steps
            return min(config.lr, warm) / peak_lr
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total_steps = steps_per_epoch * config.epochs
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, total_steps))
    factors = [reference_schedule(config, group["lr"], steps_per_epoch) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-d parameters (norms, biases, logit scale); head lr for fusion.

    Fused: one kernel over all parameters. On a CPU, torch's default is a Python loop of
    per-parameter ops, 27x slower on the default model (427 vs 16 ms, a third of a step).
    """
    learning_rates = {"backbone": config.lr, "head": getattr(config, "fusion_lr", config.lr)}
    groups = []
    for name, params in model.trainable_groups().items():
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups.append({"params": decay, "lr": learning_rates[name], "weight_decay": config.weight_decay})
        groups.append({"params": no_decay, "lr": learning_rates[name], "weight_decay": 0.0})
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98), eps=1e-6, fused=True)


def build_architecture(config: TrainConfig, train_rows: int) -> dict[str, Any]:
    """The model's architecture, its queue no longer than the data it trains on (a longer one
    would hold every example several times over)."""
    architecture = config.architecture()
    architecture["queue_size"] = min(config.queue_size, train_rows)
    return architecture


def build_model(stage: str, config: TrainConfig, architecture: dict[str, Any]) -> nn.Module:
    start = config.pretrained_checkpoint if isinstance(config, FinetuneConfig) else None
    model = create_model(stage, architecture, start or config.init_checkpoint)
    # Training's own backbone only: the momentum copy runs without gradients.
    model.backbone.set_grad_checkpointing(config.grad_checkpointing)
    return model


def build_stream(stage: str, config: TrainConfig, runtime: Runtime) -> FacePairStream | SketchEpisodeStream:
    tokenizer = get_tokenizer(config.model)
    size = configured_image_size(config.model)
    plan = StreamPlan(config.batch_size, runtime.world_size, runtime.rank)
    if stage == "pretrain":
        assert isinstance(config, PretrainConfig)
        return FacePairStream(
            config.paths.clean_dir, tokenizer, size, config.seed, config.holdout_fraction, plan, config.caption_source
        )
    assert isinstance(config, FinetuneConfig)
    held_out = config.validation_fraction if config.select_on == "validation" else 0.0
    return SketchEpisodeStream(
        config.episodes_dir, tokenizer, size, config.seed, plan, held_out_fraction=held_out, augment=config.augment
    )


def ramp(step: int, epochs: float, steps_per_epoch: int) -> float:
    """Linear 0 -> 1 over the first ``epochs`` epochs (1 throughout when ``epochs`` is 0)."""
    length = epochs * steps_per_epoch
    return min(1.0, (step + 1) / length) if length > 0 else 1.0


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed for the random draws inside one micro-batch (hard negatives); resume-stable."""
    return (seed * 1_000_003 + step * 1_009 + micro * 31 + rank) % (2**63)


def train(stage: str, config: TrainConfig) -> dict[str, Any]:
    """Train ``stage`` to completion (resuming if a checkpoint of this run exists).

    Returns ``{"run_id", "checkpoint", "steps", "metrics"}``: the checkpoint later stages take
    (fine-tuning: the selected epoch's weights) and rank 0's held-out metrics (fine-tuning: the
    selected epoch's, with ``selected_epoch`` and ``last_epoch_m_at_B``); other ranks return
    an empty dict for them.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if config.run_id is None:
        raise ValueError("config.run_id must be set (the launcher names the run)")
    runtime = setup_runtime(config)
    seed_everything(config.seed, runtime)
    folder = run_dir(config.paths.checkpoints_dir, stage, config.run_id)
    checkpoint_path = folder / CHECKPOINT_NAME
    config_json = config.model_dump_json()

    stream = build_stream(stage, config, runtime)
    architecture = build_architecture(config, stream.rows)
    model = build_model(stage, config, architecture).to(runtime.device)
    # A zero ITM weight skips the matching head's forward pass; frozen, it is no parameter that
    # never gets a gradient (DistributedDataParallel refuses those) and the optimizer skips it.
    if not config.trains_matching:
        model.grounded.requires_grad_(False)
    micro_per_epoch = stream.batches_per_epoch()
    steps_per_epoch = micro_per_epoch // config.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"{micro_per_epoch} batches per epoch cannot fill grad_accum={config.grad_accum}")
    total_steps = steps_per_epoch * config.epochs
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    step = 0
    # Fine-tuning keeps the epoch with the best m@B on the selection episodes (config.select_on).
    selection: dict[str, Any] = {"m_at_B": {}, "best_epoch": None, "best": None}
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        if checkpoint_config(state) != json.loads(config_json):
            raise ValueError(
                f"{checkpoint_path} was written with a different config; "
                "resume needs the same config (or pick a new run id)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        selection.update(state.get("selection", {}))
    elif runtime.is_main:
        write_run_config(folder, config_json)

    wrapped: nn.Module = model
    if runtime.world_size > 1:
        if runtime.device.type == "cuda":
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = DistributedDataParallel(
            wrapped,
            device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    def save(at_step: int, metrics: dict[str, float] | None = None, selected: bool = False) -> None:
        """The resumable checkpoint, or (``selected``) the kept epoch's weights: no optimizer
        state, momentum encoders or queues (about half the file of a ViT-B-16 run with them)."""
        if runtime.is_main:
            save_checkpoint(
                folder / SELECTED_NAME if selected else checkpoint_path,
                stage=stage,
                architecture=architecture,
                config_json=config_json,
                model=inference_state(model.state_dict()) if selected else model.state_dict(),
                optimizer={} if selected else optimizer.state_dict(),
                scheduler={} if selected else scheduler.state_dict(),
                step=at_step,
                total_steps=total_steps,
                metrics=metrics,
                selection=None if selected else selection,
            )

    def validate_epoch(epoch: int, at_step: int) -> None:
        """Score this epoch on the selection episodes; keep its weights when it is the best so far."""
        assert isinstance(config, FinetuneConfig)
        if runtime.is_main:
            model.eval()
            with torch.no_grad(), autocast:
                found = validate_finetune(model, config, runtime.device, *selection_episodes(config))
            wrapped.train()
            selection["m_at_B"][str(epoch)] = found["m_at_B"]
            if selection["best"] is None or found["m_at_B"] > selection["best"]["m_at_B"]:
                selection.update(best_epoch=epoch, best=found)
                save(at_step, {**found, "selected_epoch": float(epoch)}, selected=True)
            event = {"event": "validation", "stage": stage, "epoch": epoch, "step": at_step, "on": config.select_on}
            print(json.dumps({**event, "m_at_B": found["m_at_B"], "best_epoch": selection["best_epoch"]}), flush=True)
        if runtime.world_size > 1:
            dist.barrier()

    autocast = (
        torch.autocast(device_type=runtime.device.type, dtype=runtime.autocast_dtype)
        if runtime.autocast_dtype is not None
        else nullcontext()
    )
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=f"{stage} {config.run_id}",
        disable=not runtime.is_main,
        file=sys.stderr,
        mininterval=2.0,
        dynamic_ncols=True,
    )
    wrapped.train()
    last: dict[str, float] = {}
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        batches = epoch_batches(
            stream,
            epoch,
            start_batch=in_epoch * config.grad_accum,
            workers=config.data_workers(runtime.device.type),
            pin_memory=runtime.device.type == "cuda",
        )
        for _ in range(in_epoch, steps_per_epoch):
            started = time.perf_counter()
            # Kept on the device and read once per step (a read is a host sync on a GPU).
            totals: dict[str, torch.Tensor] = {}
            for micro in range(config.grad_accum):
                batch = {k: v.to(runtime.device, non_blocking=True) for k, v in next(batches).items()}
                sync = micro == config.grad_accum - 1 or runtime.world_size == 1
                # Soft targets come from a momentum model that starts untrained: ramp their
                # weight up (as ALBEF/BLIP do).
                batch["alpha"] = config.alpha * ramp(step, config.alpha_ramp_epochs, steps_per_epoch)
                batch["hardness"] = config.hard_negative_weight
                batch["match"] = config.trains_matching
                with nullcontext() if sync else wrapped.no_sync(), autocast:
                    parts = wrapped(**batch, seed=step_seed(config.seed, step, micro, runtime.rank))
                    loss = sum(config.loss_weights[name] * value for name, value in parts.items())
                (loss / config.grad_accum).backward()
                for name, value in {"loss": loss, **parts}.items():
                    totals[name] = totals.get(name, 0.0) + value.detach().float() / config.grad_accum
            sums = dict(zip(totals, torch.stack(list(totals.values())).tolist(), strict=True))
            if not all(math.isfinite(v) for v in sums.values()):
                raise FloatingPointError(f"{stage} step {step}: non-finite loss {sums}")
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            last = sums
            if runtime.is_main:
                samples = config.batch_size * config.grad_accum * runtime.world_size
                log = {
                    "event": "step",
                    "stage": stage,
                    "step": step,
                    "epoch": epoch,
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": round(samples / (time.perf_counter() - started), 2),
                    **{k: round(v, 5) for k, v in sums.items()},
                }
                print(json.dumps(log), flush=True)
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}")
            if step % config.checkpoint_every == 0 and step < total_steps:
                save(step)
        if isinstance(config, FinetuneConfig) and ((epoch + 1) % config.validate_every == 0 or step == total_steps):
            validate_epoch(epoch, step)
    bar.close()

    metrics: dict[str, float] = {f"final_{k}": v for k, v in last.items()}
    if runtime.is_main:
        if stage == "pretrain":
            model.eval()
            with torch.no_grad(), autocast:
                metrics.update(validate_pretrain(model, config, runtime.device))
        else:
            history = selection["m_at_B"]
            metrics.update(selection["best"] or {})
            metrics.update(
                selected_epoch=float(selection["best_epoch"]),
                last_epoch_m_at_B=history[max(history, key=int)],
                validated_epochs=float(len(history)),
            )
        save(step, metrics)
        write_text_atomic(folder / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
        mark_latest(config.paths.checkpoints_dir, stage, config.run_id)
        print(
            json.dumps(
                {
                    "event": "done",
                    "stage": stage,
                    "run_id": config.run_id,
                    "step": step,
                    "checkpoint": str(handed_on(folder)),
                    "metrics": metrics,
                }
            ),
            flush=True,
        )
    if runtime.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"run_id": config.run_id, "checkpoint": str(handed_on(folder)), "steps": step, "metrics": metrics}
