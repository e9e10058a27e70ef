"""Deterministic, resumable batch streams for pretraining and fine-tuning.

Every order is a pure function of (seed, epoch), so a run resumed at optimizer step s
replays exactly the batches an uninterrupted run would have seen: the stream is rebuilt
and the first ``start_batch`` batches are skipped without decoding any image.
Each rank takes its own slice of every global batch (batch_size x world_size rows).
"""

from __future__ import annotations

import hashlib
import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fvlp_core.transforms import image_bytes_tensor
from storage.clean import face_sample_ids, face_shards, read_face_pairs
from storage.episodes import SketchSteps, episode_lengths, episode_photos

Tokenizer = Callable[[list[str]], torch.Tensor]


def stable_key(value: str) -> int:
    """A signed 64-bit id of ``value``, the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little", signed=True)


def caption_group(caption: str) -> int:
    """Stable id shared by identical captions (they are positives of each other, not negatives)."""
    return stable_key(caption)


def is_held_out(key: int | str, fraction: float) -> bool:
    """Stable hash split (cleaned pairs by SAMPLE_ID, episode photos by photo_id): the same
    records are held out in every run."""
    digest = hashlib.blake2b(str(key).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % 10_000 < fraction * 10_000


@dataclass(frozen=True)
class StreamPlan:
    batch_size: int
    world_size: int = 1
    rank: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def my_rows(self, rows: list) -> list:
        return rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


class FacePairStream:
    """Cleaned (crop, caption) pairs streamed shard by shard in a seeded shard/row order.

    Under DDP each rank reads only its own shards (shard k belongs to rank k mod world size),
    so the ranks read the dataset once between them, not once each; every rank yields the
    same number of batches (the smallest rank's share; a larger share's last rows in that
    epoch's order are left out), as DistributedDataParallel needs. One process reads them all.
    """

    def __init__(
        self,
        clean_dir: Path,
        tokenizer: Tokenizer,
        image_size: int,
        seed: int,
        holdout_fraction: float,
        plan: StreamPlan,
        caption_source: str = "template",
    ):
        self.clean_dir = Path(clean_dir)
        self.caption_source = caption_source
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.seed = seed
        self.holdout_fraction = holdout_fraction
        self.plan = plan
        self.shards = face_shards(clean_dir)
        self.train_ids = {
            shard: [s for s in face_sample_ids(shard) if not is_held_out(s, holdout_fraction)] for shard in self.shards
        }
        self.rows = sum(len(ids) for ids in self.train_ids.values())
        rank_rows = [
            sum(len(self.train_ids[shard]) for shard in self.shards[rank :: plan.world_size])
            for rank in range(plan.world_size)
        ]
        if min(rank_rows) < plan.batch_size:
            raise ValueError(
                f"{self.clean_dir}: {self.rows} training pairs in {len(self.shards)} shard(s) leave a rank "
                f"{min(rank_rows)}, fewer than one batch ({plan.batch_size}) each of {plan.world_size} process(es)"
            )
        self.batches = min(rank_rows) // plan.batch_size

    def batches_per_epoch(self) -> int:
        return self.batches

    def _order(self, epoch: int) -> Iterator[tuple[Path, int]]:
        """This rank's pairs: the epoch's seeded shard order, each shard's rows shuffled (every
        shard's shuffle is drawn, so the stream of draws is the same whatever the rank)."""
        mine = set(self.shards[self.plan.rank :: self.plan.world_size])
        rng = random.Random(f"{self.seed}-{epoch}")
        shards = list(self.shards)
        rng.shuffle(shards)
        for shard in shards:
            ids = list(self.train_ids[shard])
            rng.shuffle(ids)
            if shard in mine:
                for sample_id in ids:
                    yield shard, sample_id

    def _pick_caption(self, caption: str, text: str | None, epoch: int, sample_id: int) -> str:
        """The pair's caption under ``caption_source`` (``both``: drawn per seed, epoch and sample,
        so a resumed run draws the same)."""
        if not text or self.caption_source == "template":
            return caption
        if self.caption_source == "original":
            return text
        return text if random.Random(f"{self.seed}-{epoch}-{sample_id}").random() < 0.5 else caption

    def epoch(self, epoch: int, start_batch: int = 0, share: Share = (0, 1)) -> Iterator[dict[str, torch.Tensor]]:
        """The epoch's batches from ``start_batch`` on; of those, only the ``share`` (k, n):
        batches k, k + n, ... (what loader worker k of n produces)."""
        order = self._order(epoch)
        loaded: dict[Path, dict[int, tuple[bytes, str, str | None]]] = {}
        for index in range(self.batches_per_epoch()):
            rows = [next(order) for _ in range(self.plan.batch_size)]
            if index < start_batch or not _in_share(index - start_batch, share):
                continue
            images, captions = [], []
            for shard, sample_id in rows:
                if shard not in loaded:
                    # One shard in memory at a time: the order visits shards contiguously.
                    loaded.clear()
                    table = read_face_pairs(shard)
                    columns = [table.column(c).to_pylist() for c in ("crop", "caption", "text")]
                    loaded[shard] = dict(zip(table.column("SAMPLE_ID").to_pylist(), zip(*columns)))
                crop, caption, text = loaded[shard][sample_id]
                images.append(image_bytes_tensor(crop, self.image_size, f"{shard} SAMPLE_ID {sample_id}"))
                captions.append(self._pick_caption(caption, text, epoch, sample_id))
            yield {
                "images": torch.stack(images),
                "text": self.tokenizer(captions),
                "groups": torch.tensor([caption_group(c) for c in captions]),
            }


class SketchEpisodeStream:
    """(photo, one random step of its sketch episode, caption) triples of the train split,
    less the photos held out for validation (``held_out_fraction``, :func:`is_held_out`)."""

    def __init__(
        self,
        episodes_dir: Path,
        tokenizer: Tokenizer,
        image_size: int,
        seed: int,
        plan: StreamPlan,
        split: str = "train",
        held_out_fraction: float = 0.0,
        augment: bool = False,
    ):
        self.episodes_dir = Path(episodes_dir)
        self.augment = augment
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.seed = seed
        self.plan = plan
        self.split = split
        photos = episode_photos(episodes_dir, split)
        every_id = photos.column("photo_id").to_pylist()
        self.photo_ids = [p for p in every_id if not is_held_out(p, held_out_fraction)]
        self.photos = dict(zip(every_id, photos.column("image").to_pylist()))
        self.captions = dict(zip(every_id, photos.column("caption").to_pylist()))
        lengths = episode_lengths(episodes_dir, split)
        without = [p for p in self.photo_ids if p not in lengths]
        if without:
            raise ValueError(
                f"{episodes_dir}: photo_id {without[0]} ({split}) has no sketches ({len(without)} such photos)"
            )
        self.lengths = {p: lengths[p] for p in self.photo_ids}
        self.sketch_steps = SketchSteps(episodes_dir, split)
        self.rows = len(self.photo_ids)
        if len(self.photo_ids) < plan.global_batch:
            raise ValueError(
                f"{episodes_dir}: {len(self.photo_ids)} {split} photos, fewer than one batch ({plan.global_batch})"
            )

    def batches_per_epoch(self) -> int:
        return len(self.photo_ids) // self.plan.global_batch

    def epoch(self, epoch: int, start_batch: int = 0, share: Share = (0, 1)) -> Iterator[dict[str, torch.Tensor]]:
        """As :meth:`FacePairStream.epoch`."""
        rng = random.Random(f"{self.seed}-{epoch}")
        order = list(self.photo_ids)
        rng.shuffle(order)
        steps = {p: rng.randrange(self.lengths[p]) for p in order}
        count = self.batches_per_epoch() * self.plan.global_batch
        mine = [
            self.plan.my_rows(order[i : i + self.plan.global_batch])
            for i in range(start_batch * self.plan.global_batch, count, self.plan.global_batch)
        ]
        for position, rows in enumerate(mine):
            if not _in_share(position, share):
                continue
            sketches = self.sketch_steps.read({p: steps[p] for p in rows})  # this batch's steps only
            captions = [self.captions[p] for p in rows]
            yield {
                "photos": torch.stack([self._tensor(self.photos[p], f"photo_id {p}", epoch) for p in rows]),
                "sketches": torch.stack(
                    [self._tensor(sketches[p], f"photo_id {p} step {steps[p]}", epoch) for p in rows]
                ),
                "text": self.tokenizer(captions),
                "groups": torch.tensor([caption_group(c) for c in captions]),
                "photo_keys": torch.tensor([stable_key(str(p)) for p in rows]),
            }

    def _tensor(self, data: bytes, record: str, epoch: int) -> torch.Tensor:
        # Augmentation draws are seeded by (seed, epoch, record): a resumed run replays them.
        rng = random.Random(f"{self.seed}-{epoch}-{record}") if self.augment else None
        return image_bytes_tensor(data, self.image_size, record, rng)


Batch = dict[str, torch.Tensor]
Share = tuple[int, int]  # (k, n): every n-th batch, starting with the k-th


def _in_share(position: int, share: Share) -> bool:
    worker, workers = share
    return position % workers == worker


class EpochBatches(IterableDataset):
    """One epoch of a stream for a DataLoader: worker k of n decodes batches k, k + n, ..., and
    the DataLoader, taking one batch from each worker in turn, hands them on in stream order."""

    def __init__(self, stream: FacePairStream | SketchEpisodeStream, epoch: int, start_batch: int):
        self.stream, self.epoch, self.start_batch = stream, epoch, start_batch

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        share = (0, 1) if info is None else (info.id, info.num_workers)
        return self.stream.epoch(self.epoch, self.start_batch, share)


def epoch_batches(
    stream: FacePairStream | SketchEpisodeStream, epoch: int, start_batch: int, workers: int, pin_memory: bool
) -> Iterator[Batch]:
    """The epoch's batches in stream order, decoded ahead of the training loop: by ``workers``
    DataLoader processes (a GPU eats images faster than one core decodes them), or with 0 by a
    thread beside the loop (on a CPU, worker processes would take the training's own cores)."""
    if workers == 0:
        return prefetched(stream.epoch(epoch, start_batch), pin_memory=pin_memory)
    loader = DataLoader(
        EpochBatches(stream, epoch, start_batch),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2,
    )
    return iter(loader)


def prefetched(batches: Iterator[Batch], depth: int = 2, pin_memory: bool = False) -> Iterator[Batch]:
    """``batches``, produced by a background thread up to ``depth`` ahead of the consumer, so
    reading and decoding the next batch overlaps the current step (PNG decoding and tensor
    ops release the GIL); with ``pin_memory`` (CUDA) the copy to the device can be async.
    Same batches in the same order; an error in the producer is raised in the consumer."""
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if pin_memory:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                if not put(("batch", batch)):
                    return
            put(("done", None))
        except BaseException as err:  # handed to the consumer, which raises it
            put(("error", err))

    producer = threading.Thread(target=produce, name="fvlp-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, item = slots.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(item, BaseException)
                raise item
            yield cast(Batch, item)
    finally:
        stop.set()  # the consumer stopped early: let the producer finish
        producer.join()
