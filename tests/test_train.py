"""Training engine: deterministic streams, exact resume after a kill, safe checkpoints, flows."""

from __future__ import annotations

import io
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageDraw
from prefect import flow

from fvlp_core.checkpoint import checkpoint_architecture, load_checkpoint
from fvlp_core.config import EpisodesConfig, FinetuneConfig, Paths, PretrainConfig
from fvlp_core.models import get_tokenizer
from fvlp_core.models.pretrain import EMPTY_GROUP
from fvlp_train import train
from fvlp_train.__main__ import main as train_main
from fvlp_train.data import FacePairStream, SketchEpisodeStream, StreamPlan
from fvlp_train.engine import build_scheduler, warmup_cosine
from storage.checkpoints import latest_checkpoint
from storage.episodes import write_episode_chunk, write_episodes_manifest
from storage.shards import shard_path, write_shard
from tasks.train import run_training, training_command

REPO = Path(__file__).resolve().parent.parent
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _shape(colour: str, shape: str, rng: random.Random, line_art: bool = False, progress: float = 1.0) -> Image.Image:
    """A coloured shape (photo) or its partial outline (sketch step) on white."""
    image = Image.new("L" if line_art else "RGB", (40, 40), "white")
    draw = ImageDraw.Draw(image)
    x, y = rng.randint(2, 10), rng.randint(2, 10)
    box = [x, y, x + 26, y + 26]
    if line_art:
        draw.arc(box, 0, int(360 * progress), fill=0, width=2)
    else:
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def make_clean_faces(clean_dir: Path, pairs: int = 48, per_shard: int = 20, seed: int = 0) -> None:
    """``clean_dir/faces`` shards with the documented columns (crop PNG + caption)."""
    rng = random.Random(seed)
    rows = []
    for sample_id in range(pairs):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        rows.append(
            {
                "SAMPLE_ID": sample_id,
                "crop": _png(_shape(colour, shape, rng)),
                "caption": f"a {colour} {shape}",
                "text": "",
                "attributes": [],
                "det_score": 0.99,
                "box": [0.0, 0.0, 40.0, 40.0],
                "landmarks": None,
                "identity_id": sample_id,
            }
        )
    for index, start in enumerate(range(0, pairs, per_shard)):
        write_shard(pa.Table.from_pylist(rows[start : start + per_shard]), shard_path(clean_dir / "faces", index))


def episode_rows(train: int = 16, test: int = 8, steps: int = 3, seed: int = 1):
    rng = random.Random(seed)
    photos, sketches = [], []
    for index in range(train + test):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        photo_id, split = f"p{index:03d}", "train" if index < train else "test"
        caption = f"a {colour} {shape}"
        state = rng.getstate()
        photos.append(
            {
                "photo_id": photo_id,
                "split": split,
                "image": _png(_shape(colour, shape, rng)),
                "caption": caption,
                "captions": [caption],
                "source": "generated",
            }
        )
        for step in range(steps):
            rng.setstate(state)  # same position as the photo
            sketch = _shape(colour, shape, rng, line_art=True, progress=(step + 1) / steps)
            sketches.append({"photo_id": photo_id, "split": split, "step": step, "image": _png(sketch)})
    return photos, sketches


def make_episodes(episodes_dir: Path, **kwargs) -> None:
    """A complete one-chunk episodes build, as the episodes stage leaves it."""
    photos, sketches = episode_rows(**kwargs)
    write_episode_chunk(episodes_dir, 0, photos, sketches)
    splits = {split: sum(p["split"] == split for p in photos) for split in ("train", "test")}
    write_episodes_manifest(
        episodes_dir,
        {
            "source": "generated",
            "steps": kwargs.get("steps", 3),
            "chunks": 1,
            "input_fingerprint": "test",
            "photos": len(photos),
            "splits": splits,
        },
    )


@pytest.fixture()
def data_root(tmp_path) -> Path:
    paths = Paths(data_root=tmp_path / "data")
    make_clean_faces(paths.clean_dir)
    make_episodes(paths.episodes_dir)
    return paths.data_root


def pretrain_config(data_root: Path, **overrides) -> PretrainConfig:
    values = dict(
        paths={"data_root": data_root},
        run_id="pre",
        epochs=2,
        batch_size=8,
        queue_size=16,
        warmup_steps=1,
        checkpoint_every=2,
        device="cpu",
        holdout_fraction=0.15,
    )
    return PretrainConfig.model_validate({**values, **overrides})


# Holds out 4 of the 16 train photos p000..p015 (none at the default 0.1: too few photos).
VALIDATION_FRACTION = 0.45


def finetune_config(data_root: Path, pretrained: str, **overrides) -> FinetuneConfig:
    values = dict(
        paths={"data_root": data_root},
        run_id="fine",
        epochs=1,
        batch_size=4,
        device="cpu",
        warmup_steps=1,
        pretrained_checkpoint=pretrained,
        validation_fraction=VALIDATION_FRACTION,
    )
    return FinetuneConfig.model_validate({**values, **overrides})


def test_face_stream_is_seeded_and_skips_exactly(data_root):
    tokenizer = get_tokenizer("fvlp-vit-tiny")
    stream = FacePairStream(
        Paths(data_root=data_root).clean_dir,
        tokenizer,
        32,
        seed=3,
        holdout_fraction=0.15,
        plan=StreamPlan(batch_size=8),
    )
    full = list(stream.epoch(1))
    assert len(full) == stream.batches_per_epoch() >= 3
    resumed = list(stream.epoch(1, start_batch=2))
    assert all(
        torch.equal(a["images"], b["images"]) and torch.equal(a["text"], b["text"])
        for a, b in zip(full[2:], resumed, strict=True)
    )
    assert not torch.equal(full[0]["groups"], list(stream.epoch(2))[0]["groups"])  # a new order each epoch


def test_loader_worker_processes_hand_on_the_same_batches_in_the_same_order(data_root):
    """Worker k of n decodes batches k, k + n, ...; the DataLoader's round robin restores the
    stream's order, from any resume point, with augmentation drawn per record as before."""
    from fvlp_train.data import epoch_batches

    tokenizer = get_tokenizer("fvlp-vit-tiny")
    paths = Paths(data_root=data_root)
    streams = [
        FacePairStream(paths.clean_dir, tokenizer, 32, seed=3, holdout_fraction=0.15, plan=StreamPlan(batch_size=2)),
        SketchEpisodeStream(paths.episodes_dir, tokenizer, 32, seed=1, plan=StreamPlan(batch_size=3), augment=True),
    ]
    for stream in streams:
        assert stream.batches_per_epoch() >= 5
        for start in (0, 1):
            expected = list(epoch_batches(stream, 1, start, workers=0, pin_memory=False))
            found = list(epoch_batches(stream, 1, start, workers=2, pin_memory=False))
            assert len(found) == len(expected) == stream.batches_per_epoch() - start
            for a, b in zip(expected, found, strict=True):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Decoding processes by default only beside a GPU: on a CPU they would take the training's cores.
    assert PretrainConfig(threads=4).data_workers("cpu") == 0
    assert PretrainConfig(threads=4).data_workers("cuda") == 3
    assert PretrainConfig(threads=32).data_workers("cuda") == 8
    assert PretrainConfig(threads=4, loader_workers=2).data_workers("cpu") == 2


def test_ddp_ranks_read_only_their_own_face_shards_and_yield_as_many_batches(data_root, monkeypatch):
    import fvlp_train.data as data

    tokenizer = get_tokenizer("fvlp-vit-tiny")
    clean_dir = Paths(data_root=data_root).clean_dir

    def stream(world_size: int, rank: int) -> FacePairStream:
        plan = StreamPlan(batch_size=4, world_size=world_size, rank=rank)
        return FacePairStream(clean_dir, tokenizer, 32, seed=3, holdout_fraction=0.15, plan=plan)

    read_face_pairs = data.read_face_pairs
    read: dict[int, set[str]] = {0: set(), 1: set()}
    seen: dict[int, list[int]] = {0: [], 1: []}
    ranks = [stream(2, rank) for rank in (0, 1)]
    assert ranks[0].batches_per_epoch() == ranks[1].batches_per_epoch() > 0
    for rank, ranked in enumerate(ranks):
        monkeypatch.setattr(
            data, "read_face_pairs", lambda shard, r=rank: read[r].add(shard.name) or read_face_pairs(shard)
        )
        for batch in ranked.epoch(0):
            seen[rank] += batch["groups"].tolist()
    assert read[0] and read[1] and not read[0] & read[1]  # the shards split between the ranks
    assert len(seen[0]) == len(seen[1]) == 4 * ranks[0].batches_per_epoch()
    # One process reads every shard, in the order it always had.
    single = stream(1, 0)
    assert single.batches_per_epoch() == single.rows // 4


def test_ranks_take_disjoint_slices_of_each_global_batch(data_root):
    tokenizer = get_tokenizer("fvlp-vit-tiny")
    episodes = Paths(data_root=data_root).episodes_dir
    streams = [
        SketchEpisodeStream(episodes, tokenizer, 32, seed=0, plan=StreamPlan(4, world_size=2, rank=r)) for r in (0, 1)
    ]
    first = [next(s.epoch(0)) for s in streams]
    assert first[0]["photos"].shape == (4, 3, 32, 32)
    assert not torch.equal(first[0]["photos"], first[1]["photos"])


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_steps=4, total_steps=20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(12) == pytest.approx(0.5)
    assert factor(20) == pytest.approx(0.0)


def test_reference_schedule_warms_up_within_the_first_epoch_then_decays_per_epoch():
    config = FinetuneConfig(recipe="fvlp-paper", epochs=4, warmup_steps=10)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "lr": config.lr}, {"params": [model.bias], "lr": 1e-3}])
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=5)
    seen = []
    for _ in range(20):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # Epoch 0: every group from warmup_lr up toward the encoder lr (cut off after 5 of 10 steps).
    assert seen[0] == pytest.approx([1e-6, 1e-6])
    assert seen[4][0] == pytest.approx(1e-6 + (3e-5 - 1e-6) * 4 / 10) == seen[4][1]
    # Then a cosine per epoch from each group's own peak, constant within an epoch.
    assert seen[5] == pytest.approx(
        [3e-5 * 0.5 * (1 + math.cos(math.pi / 4)), 1e-3 * 0.5 * (1 + math.cos(math.pi / 4))]
    )
    assert seen[5] == seen[9] and seen[15][1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(3 * math.pi / 4)))


def test_paper_recipe_fills_what_the_caller_left_unset():
    paper = FinetuneConfig(recipe="fvlp-paper", epochs=2)
    assert (paper.model, paper.batch_size, paper.lr, paper.fusion_lr, paper.epochs) == (
        "ViT-B-16-quickgelu",
        16,
        3e-5,
        1e-3,
        2,
    )
    assert (paper.queue_size, paper.alpha, paper.temperature_range, paper.augment) == (57600, 0.4, (0.001, 0.5), True)
    assert paper.loss_weights == {"itc": 0.5, "itsc": 0.5, "itm": 10.0}
    assert json.loads(paper.model_dump_json())["recipe"] == "fvlp-paper"  # recorded with the run
    assert FinetuneConfig().queue_size == 0 and PretrainConfig(recipe="fvlp-paper").batch_size == 80
    with pytest.raises(ValueError, match="loss_weights must name exactly"):
        FinetuneConfig(loss_weights={"itc": 1.0, "itm": 1.0})


def test_unknown_config_keys_are_rejected(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"run_id": "x", "learning_rate": 0.1}))
    with pytest.raises(SystemExit):
        train_main(["pretrain", "--config", str(config)])
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [3, None])
def test_a_training_child_takes_its_threads_from_the_config_not_from_a_leaked_environment(monkeypatch, threads):
    """A Dask LocalCluster created earlier in the same process leaves OMP_NUM_THREADS=1 behind:
    the training child must not inherit it and run on one core."""
    from tasks.train import training_environment

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = PretrainConfig(device="cpu", threads=threads)
    expected = config.threads_per_process()
    assert expected == (threads or len(os.sched_getaffinity(0)))
    probe = (
        "import os, torch; from fvlp_core.config import PretrainConfig; from fvlp_train.engine import setup_runtime; "
        f"setup_runtime(PretrainConfig(device='cpu', threads={threads})); "
        "print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], torch.get_num_threads())"
    )
    seen = subprocess.run(
        [sys.executable, "-c", probe], env=training_environment(config), capture_output=True, text=True, check=True
    )
    assert seen.stdout.split() == [str(expected)] * 3


def test_training_children_spin_wait_only_with_the_cpu_to_themselves_unless_told(monkeypatch):
    from tasks.train import SHARING_CPU, training_environment

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    config = PretrainConfig(device="cpu")
    assert training_environment(config)["OMP_WAIT_POLICY"] == "PASSIVE"  # started alone: unknown neighbours
    alone = SHARING_CPU.set(False)
    try:
        assert training_environment(config)["OMP_WAIT_POLICY"] == "ACTIVE"
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the operator's word wins
        assert training_environment(config)["OMP_WAIT_POLICY"] == "PASSIVE"
    finally:
        SHARING_CPU.reset(alone)


def test_gradient_checkpointing_recomputes_activations_without_changing_the_gradients():
    from fvlp_train.engine import build_model

    batch = 4
    images, groups = torch.randn(batch, 3, 64, 64), torch.arange(batch)
    text = get_tokenizer("fvlp-vit-tiny")([f"a face {i}" for i in range(batch)])
    gradients = []
    for checkpointing in (False, True):
        config = PretrainConfig(device="cpu", grad_checkpointing=checkpointing)
        torch.manual_seed(0)
        model = build_model("pretrain", config, config.architecture())
        assert model.backbone.visual.transformer.grad_checkpointing is checkpointing
        sum(model(images, text, groups, seed=0).values()).backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_torchrun_command_for_several_processes(tmp_path):
    config = PretrainConfig(run_id="r", nproc_per_node=4, nnodes=2, rdzv_endpoint="head:29400")
    command = training_command("pretrain", config, tmp_path / "c.json")
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"]
    assert "--rdzv-endpoint" in command and "head:29400" in command
    assert command[-5:] == ["-m", "fvlp_train", "pretrain", "--config", str(tmp_path / "c.json")]
    single = training_command("pretrain", PretrainConfig(run_id="r"), tmp_path / "c.json")
    assert single == [sys.executable, "-m", "fvlp_train", "pretrain", "--config", str(tmp_path / "c.json")]


def test_pretrain_then_finetune_in_process_write_safe_checkpoints(data_root):
    result = train("pretrain", pretrain_config(data_root, epochs=1))
    state = torch.load(result["checkpoint"], weights_only=True)
    assert state["step"] == result["steps"] > 0
    assert {"heldout_t2i_r_at_1", "chance_r_at_1"} <= set(result["metrics"])
    assert latest_checkpoint(Paths(data_root=data_root).checkpoints_dir, "pretrain") == Path(result["checkpoint"])

    tuned = train("finetune", finetune_config(data_root, result["checkpoint"], select_on="test"))
    metrics = tuned["metrics"]
    assert metrics["episodes"] == 8 and metrics["gallery_size"] == 8 and metrics["selected_epoch"] == 0
    assert 0 < metrics["m_at_B"] <= 100 and metrics["chance_m_at_B"] == pytest.approx(100 * 2.717857 / 8)
    assert torch.isfinite(torch.tensor(list(metrics.values()))).all()


def test_finetune_with_momentum_queues_and_augmentation_hands_on_a_loadable_model(data_root):
    from fvlp_core.embed import FVLPEncoder

    pre = train("pretrain", pretrain_config(data_root, epochs=1))
    config = finetune_config(
        data_root, pre["checkpoint"], run_id="queued", select_on="test", queue_size=1000, alpha=0.4, augment=True
    )
    tuned = train("finetune", config)
    state = load_checkpoint(Path(tuned["checkpoint"]).with_name("checkpoint.pt"))
    # The queue is capped at the 16 train photos and holds the 4 x 4 photos seen, by photo key.
    assert checkpoint_architecture(state)["queue_size"] == 16
    assert int((state["model"]["photo_key_queue"] != EMPTY_GROUP).sum()) == 16
    assert torch.isfinite(torch.tensor(list(tuned["metrics"].values()))).all()
    encoder = FVLPEncoder.load(tuned["checkpoint"], device="cpu")
    assert encoder.model.momentum_encoders is None


def test_a_zero_matching_weight_skips_the_matching_head_and_leaves_its_weights_alone(data_root):
    pre = train("pretrain", pretrain_config(data_root, epochs=1))
    config = finetune_config(
        data_root, pre["checkpoint"], run_id="no-itm", select_on="test", loss_weights={"itc": 1, "itsc": 1, "itm": 0}
    )
    tuned = train("finetune", config)
    assert "final_itm" not in tuned["metrics"] and "final_itsc" in tuned["metrics"]
    untrained = train(
        "pretrain", pretrain_config(data_root, epochs=1, run_id="pre-no-itm", loss_weights={"itc": 1, "itm": 0})
    )
    assert "heldout_t2i_r_at_1" in untrained["metrics"] and "heldout_itm_auc" not in untrained["metrics"]
    before = load_checkpoint(Path(pre["checkpoint"]))["model"]
    after = load_checkpoint(Path(tuned["checkpoint"]).with_name("checkpoint.pt"))["model"]
    grounded = [name for name in before if name.startswith("grounded.")]
    assert grounded and all(torch.equal(before[name], after[name]) for name in grounded)
    assert not torch.equal(before["backbone.visual.conv1.weight"], after["backbone.visual.conv1.weight"])


def test_augmentation_is_seeded_per_record_and_epoch(data_root):
    paths = Paths(data_root=data_root)
    stream = SketchEpisodeStream(paths.episodes_dir, get_tokenizer("fvlp-vit-tiny"), 32, 0, StreamPlan(4), augment=True)
    plain = SketchEpisodeStream(paths.episodes_dir, get_tokenizer("fvlp-vit-tiny"), 32, 0, StreamPlan(4))
    first, again, other_epoch = (next(stream.epoch(e)) for e in (0, 0, 1))
    assert torch.equal(first["photos"], again["photos"])
    assert not torch.equal(first["photos"], next(plain.epoch(0))["photos"])
    assert first["photo_keys"].dtype == torch.long and len(set(first["photo_keys"].tolist())) == 4
    assert not torch.equal(first["photos"], other_epoch["photos"])


def test_finetune_keeps_the_epoch_best_on_validation_photos_it_never_trains_on(data_root):
    """Selection without peeking at the test set: each epoch is scored on held-out train photos,
    the best epoch's weights are handed on as selected.pt, and the training stream never sees them."""
    from fvlp_core.embed import FVLPEncoder
    from fvlp_train.data import is_held_out

    pre = train("pretrain", pretrain_config(data_root, epochs=1))
    config = finetune_config(data_root, pre["checkpoint"], run_id="selecting", epochs=3, validate_every=1)
    held_out = [f"p{i:03d}" for i in range(16) if is_held_out(f"p{i:03d}", VALIDATION_FRACTION)]
    stream = SketchEpisodeStream(
        config.episodes_dir, get_tokenizer("fvlp-vit-tiny"), 32, 0, StreamPlan(4), held_out_fraction=VALIDATION_FRACTION
    )
    assert (
        len(held_out) >= 2 and not set(held_out) & set(stream.photo_ids) and len(stream.photo_ids) == 16 - len(held_out)
    )

    tuned = train("finetune", config)
    metrics = tuned["metrics"]
    assert Path(tuned["checkpoint"]).name == "selected.pt"
    assert metrics["gallery_size"] == len(held_out) and metrics["validated_epochs"] == 3
    history = load_checkpoint(Path(tuned["checkpoint"]).with_name("checkpoint.pt"))["selection"]["m_at_B"]
    assert metrics["m_at_B"] == max(history.values()) == history[str(int(metrics["selected_epoch"]))]
    assert metrics["last_epoch_m_at_B"] == history["2"]
    selected = load_checkpoint(tuned["checkpoint"])
    assert selected["metrics"]["selected_epoch"] == metrics["selected_epoch"] and selected["optimizer"] == {}
    FVLPEncoder.load(tuned["checkpoint"], device="cpu")  # hands on a loadable model
    assert latest_checkpoint(Paths(data_root=data_root).checkpoints_dir, "finetune") == Path(tuned["checkpoint"])


def test_resume_refuses_a_changed_config(data_root):
    train("pretrain", pretrain_config(data_root, epochs=1))
    with pytest.raises(ValueError, match="different config"):
        train("pretrain", pretrain_config(data_root, epochs=1, lr=3e-3))


def _launch(config: PretrainConfig, path: Path) -> subprocess.Popen:
    path.write_text(config.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fvlp_train", "pretrain", "--config", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_kill_and_resume_reproduces_an_uninterrupted_run(data_root, tmp_path):
    straight = pretrain_config(data_root, run_id="straight", epochs=3)
    killed = pretrain_config(data_root, run_id="killed", epochs=3)
    _launch(straight, tmp_path / "straight.json").communicate(timeout=600)

    child = _launch(killed, tmp_path / "killed.json")
    assert child.stdout is not None
    for line in child.stdout:  # SIGKILL right after the step-5 line: the step-4 checkpoint is on disk
        if '"step": 5,' in line:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    folder = Paths(data_root=data_root).checkpoints_dir / "pretrain"
    assert load_checkpoint(folder / "killed" / "checkpoint.pt")["step"] == 4

    resumed = _launch(killed, tmp_path / "killed.json")
    resumed.communicate(timeout=600)
    assert resumed.returncode == 0
    a = load_checkpoint(folder / "straight" / "checkpoint.pt")
    b = load_checkpoint(folder / "killed" / "checkpoint.pt")
    assert a["step"] == b["step"] == a["total_steps"]
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.slow
def test_checkpoint_loads_into_a_fresh_process(data_root, tmp_path):
    result = train("pretrain", pretrain_config(data_root, epochs=1))
    checkpoint = train("finetune", finetune_config(data_root, result["checkpoint"]))["checkpoint"]
    script = (
        "import sys, torch\n"
        "from fvlp_core.embed import FVLPEncoder\n"
        "enc = FVLPEncoder.load(sys.argv[1], device='cpu')\n"
        "from PIL import Image\n"
        "img = [Image.new('L', (40, 40), 255)] * 3\n"
        "e = [enc.encode_images(img), enc.encode_sketches(img, ['a red circle'] * 3), enc.encode_texts(['a'])]\n"
        "print([tuple(x.shape) for x in e], float(e[1].norm(dim=-1).mean()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, checkpoint], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    shapes, norm = out.stdout.strip().rsplit(" ", 1)
    assert shapes == "[(3, 256), (3, 256), (1, 256)]" and abs(float(norm) - 1.0) < 1e-6


def make_fs2k_sde(root: Path) -> None:
    photos, sketches = episode_rows()
    for split in ("train", "test"):
        rows = []
        for photo in (p for p in photos if p["split"] == split):
            pid = photo["photo_id"]
            (root / "photos").mkdir(parents=True, exist_ok=True)
            (root / "photos" / f"{pid}.png").write_bytes(photo["image"])
            paths = []
            for sketch in (s for s in sketches if s["photo_id"] == pid):
                path = root / "sketches" / pid / f"{sketch['step']}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(sketch["image"])
                paths.append(str(path.relative_to(root)))
            caption = photo["caption"] if split == "train" else [photo["caption"]]
            rows.append({"photo": f"photos/{pid}.png", "photo_id": pid, "caption": caption, "sketch_sde": paths})
        (root / f"{split}.json").write_text(json.dumps(rows))


@pytest.mark.slow
def test_pretrain_and_finetune_flows_tie_run_ids_checkpoints_and_results(tmp_path, prefect_harness):
    from flows.episodes import episodes_flow
    from flows.finetune import finetune_flow
    from flows.pretrain import pretrain_flow
    from storage.results import ResultsStore

    paths = Paths(data_root=tmp_path / "data")
    make_clean_faces(paths.clean_dir)
    make_fs2k_sde(tmp_path / "fs2k")
    pre = pretrain_flow(
        PretrainConfig(paths=paths, epochs=1, batch_size=8, queue_size=16, device="cpu", holdout_fraction=0.15)
    )
    assert Path(pre["checkpoint"]) == paths.checkpoints_dir / "pretrain" / pre["run_id"] / "checkpoint.pt"
    assert (paths.checkpoints_dir / "pretrain" / "LATEST").read_text().strip() == pre["run_id"]

    episodes_flow(EpisodesConfig(paths=paths, steps_per_episode=3, fs2k_sde=tmp_path / "fs2k"))
    fine = finetune_flow(
        FinetuneConfig(paths=paths, epochs=1, batch_size=4, device="cpu", validation_fraction=VALIDATION_FRACTION)
    )
    config = json.loads((paths.checkpoints_dir / "finetune" / fine["run_id"] / "config.json").read_text())
    assert config["pretrained_checkpoint"] == pre["checkpoint"]
    store = ResultsStore(paths.results_store)
    runs = dict(store.query("SELECT run_id, status FROM runs"))
    assert runs[pre["run_id"]] == runs[fine["run_id"]] == "finished"
    rows = store.query("SELECT split, name FROM metrics WHERE run_id = ?", [fine["run_id"]])
    assert {("validation", name) for name in ("m_at_B", "chance_m_at_B", "final_itsc", "selected_epoch")} <= set(rows)


def test_a_failed_training_child_names_its_error_in_the_task_failure(tmp_path, prefect_harness):
    """The child's traceback reaches the raised error (and so the Prefect UI), not only the console."""

    @flow
    def launch() -> None:
        run_training("pretrain", PretrainConfig(paths=Paths(data_root=tmp_path), run_id="no-data", device="cpu"))

    with pytest.raises(RuntimeError) as failure:
        launch()
    message = str(failure.value)
    assert "pretrain run no-data failed (exit 1)" in message
    assert "no face shards in" in message and "run the clean stage first" in message


def test_prefetched_batches_keep_order_raise_producer_errors_and_stop_early():
    from fvlp_train.data import prefetched

    batches = [{"x": torch.full((2,), float(i))} for i in range(7)]
    got = list(prefetched(iter(batches), depth=2))
    assert [int(b["x"][0]) for b in got] == list(range(7))

    def broken():
        yield batches[0]
        raise ValueError("shard-00003.parquet: photo_id 7 has no sketch")

    stream = prefetched(broken())
    assert int(next(stream)["x"][0]) == 0
    with pytest.raises(ValueError, match="photo_id 7"):
        next(stream)

    produced = []

    def endless():
        for i in range(10**6):
            produced.append(i)
            yield {"x": torch.zeros(1)}

    early = prefetched(endless(), depth=2)
    next(early)
    early.close()  # the consumer stops: the producer thread ends instead of running on
    assert len(produced) <= 5
