"""Typed run configuration, validated once at the edge (CLI, Prefect form, env).

Every stage takes one frozen pydantic model. Unknown keys are rejected with a
message naming them, so a typo in a deployment's parameters fails before any
work starts. All on-disk locations hang off :class:`Paths`.

Precedence when a config is built by :func:`resolve_config`:
defaults < environment (``FVLP_<FIELD>``, nested ``FVLP_<GROUP>__<FIELD>``) < explicit overrides.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "FVLP_"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Paths(StrictModel):
    """Where everything lives. Only ``data_root`` is required; the rest derive from it."""

    data_root: Path = Field(Path("fvlp-data"), description="Root folder for shards, checkpoints and artifacts")
    results_path: Path | None = Field(None, description="DuckDB results store (default: results.duckdb in data_root)")

    @property
    def source_dir(self) -> Path:
        """Embedded corpus metadata and ground truth (LAION-Face-shaped input)."""
        return self.data_root / "source"

    @property
    def raw_dir(self) -> Path:
        return self.data_root / "raw"

    @property
    def clean_dir(self) -> Path:
        return self.data_root / "clean"

    @property
    def episodes_dir(self) -> Path:
        return self.data_root / "episodes"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_root / "checkpoints"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_root / "artifacts"

    @property
    def results_store(self) -> Path:
        return self.results_path or self.data_root / "results.duckdb"


class HttpFetchConfig(StrictModel):
    """How image URLs are fetched (source=url). Unsafe targets are refused, never fetched."""

    concurrency: int = Field(16, ge=1, le=512, description="Simultaneous HTTP requests")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection")
    read_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for any one read")
    total_timeout_s: float = Field(30.0, gt=0, description="Seconds for one attempt, redirects and body included")
    retries: int = Field(2, ge=0, le=10, description="Retries on timeouts, connection errors, 429 and 5xx")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles on every further retry")
    max_redirects: int = Field(5, ge=0, description="Redirect hops followed (each hop re-checked)")
    allow_private_addresses: bool = Field(
        False,
        description="Allow URLs resolving to loopback/private/link-local addresses, and so redirects to them from "
        "any host (local testing only)",
    )
    user_agent: str = Field("fvlp-ingest/0.1", description="User-Agent header sent with every request")


class IngestConfig(StrictModel):
    paths: Paths = Paths()
    source: Literal["embedded", "folder", "tar", "url"] = Field(
        "embedded",
        description="Where image bytes come from: the embedded generator, a folder or tars of images "
        "(named SAMPLE_ID.ext, or img2dataset output), or each row's URL over http(s)",
    )
    metadata: list[Path] = Field(
        default_factory=list,
        description="LAION-style metadata: Parquet, CSV, TSV or JSONL files (.gz too), folders of them or glob "
        "patterns (empty with source=embedded: the corpus is generated)",
    )
    images: list[Path] = Field(
        default_factory=list,
        description="source=folder: the image folder; source=tar: tar files, folders of tars or glob patterns "
        "(img2dataset webdataset shards). Images are named SAMPLE_ID.ext or carry the id in a .json sidecar",
    )
    id_col: str | None = Field(
        None, description="Input column with the sample id (default: SAMPLE_ID, else img2dataset's key, else derived)"
    )
    url_col: str | None = Field(None, description="Input column with the image URL (default: URL, else url)")
    caption_col: str | None = Field(
        None, description="Input column with the caption (default: TEXT, else caption, else txt)"
    )
    width_col: str | None = Field(
        None, description="Input column with the image width (default: WIDTH, else original_width; else measured)"
    )
    height_col: str | None = Field(
        None, description="Input column with the image height (default: HEIGHT, else original_height; else measured)"
    )
    similarity_col: str | None = Field(
        None, description="Input column with the CLIP image-text similarity (default: similarity; else null)"
    )
    max_failed_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The run ends Failed when more than this fraction of rows got no image (status counts in the "
        "message); the shards written stay, so a rerun resumes",
    )
    rows: int = Field(3000, ge=1, description="Embedded corpus size in rows")
    identities: int = Field(1200, ge=2, description="Embedded corpus: distinct face identities")
    seed: int = Field(0, description="Embedded corpus seed (same seed, same bytes)")
    shard_size: int = Field(
        500, ge=1, description="Rows per output shard (re-runs skip complete shards; keep it fixed per data root)"
    )
    max_image_bytes: int = Field(
        10_000_000, gt=0, description="Images larger than this get fetch_status too_large (any source)"
    )
    render_workers: int = Field(2, ge=1, description="Processes rendering embedded images (source=embedded)")
    parallel_shards: int = Field(
        2, ge=1, description="Shards fetched and written at once (a slow URL then holds up one shard, not the run)"
    )
    http: HttpFetchConfig = HttpFetchConfig()

    @field_validator("metadata", "images", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @property
    def column_names(self) -> dict[str, str | None]:
        """The input column named for each canonical one (None: look for the usual names)."""
        return {
            "SAMPLE_ID": self.id_col,
            "URL": self.url_col,
            "TEXT": self.caption_col,
            "WIDTH": self.width_col,
            "HEIGHT": self.height_col,
            "similarity": self.similarity_col,
        }

    @model_validator(mode="after")
    def _source_inputs(self) -> IngestConfig:
        if self.source in ("folder", "tar") and not self.images:
            raise ValueError(f"source={self.source!r} needs --images pointing at the {self.source}")
        if self.source == "folder" and len(self.images) != 1:
            raise ValueError(f"source='folder' reads one image folder, got {len(self.images)} --images paths")
        if self.source != "embedded" and not self.metadata:
            raise ValueError(f"source={self.source!r} needs --metadata Parquet file(s)")
        return self


class CleanConfig(StrictModel):
    """Face detection, face and caption filters, attribute captions. Every threshold is a rule's."""

    paths: Paths = Paths()
    detector: Literal["auto", "insightface", "retinaface", "yuface"] = Field(
        "auto", description="auto: insightface when --insightface-model is set, else the bundled RetinaFace"
    )
    insightface_model: Path | None = Field(None, description="Local SCRFD/RetinaFace ONNX (e.g. det_10g.onnx)")
    gpu: bool = Field(False, description="Run the detector with onnxruntime's CUDA provider when available")
    detector_max_side: int = Field(640, ge=64, description="Images are shrunk to this longest side for detection")
    detector_min_score: float = Field(0.5, ge=0, le=1, description="Detections below this score are not faces at all")
    dask_address: str | None = Field(
        None, description="Existing Dask scheduler (tcp://host:8786); default LocalCluster"
    )
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    detector_threads: int = Field(1, ge=1, description="onnxruntime threads per Dask worker")
    recompute: bool = Field(False, description="Ignore stored measurements and re-detect every shard")
    # image rules
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="image_too_large: reject by header size before decoding (decompression bombs)"
    )
    min_image_side: int = Field(96, ge=1, description="image_too_small: shorter image side in pixels")
    max_aspect_ratio: float = Field(3.0, ge=1, description="extreme_aspect_ratio: longer/shorter side")
    min_face_score: float = Field(0.9, ge=0, le=1, description="low_detection_score: main face's detector score")
    prominent_face_ratio: float = Field(
        0.3,
        gt=0,
        le=1,
        description="multiple_faces: another face is prominent if its area is this share of the largest",
    )
    min_face_fraction: float = Field(0.1, ge=0, le=1, description="face_too_small: sqrt(face box area / image area)")
    min_sharpness: float = Field(15.0, ge=0, description="too_blurry: variance of Laplacian of the face crop")
    max_duplicate_distance: int = Field(
        6,
        ge=-1,
        le=11,
        description="duplicate_image: Hamming distance of perceptual hashes to an earlier image (-1: off; "
        "at most 11: among a million unrelated images, about 20,000 pairs already lie within 11 bits)",
    )
    crop_size: int = Field(224, ge=32, description="Side of the square face crop")
    crop_margin: float = Field(0.25, ge=0, le=1, description="Context around the face in the crop, per side")
    # caption rules
    min_caption_words: int = Field(2, ge=0, description="caption_too_short: fewer words than this")
    max_caption_chars: int = Field(1000, ge=1, description="caption_too_long: more characters than this")
    min_english_ratio: float = Field(
        0.2, ge=0, le=1, description="not_english: lingua's English confidence over its top language's"
    )
    near_duplicate_jaccard: float = Field(
        1.0,
        gt=0,
        le=1,
        description="duplicate_caption: word-shingle Jaccard to an earlier caption (1.0: exact after normalising)",
    )
    agreement_checkpoint: Path | None = Field(
        None, description="Trained FVLP checkpoint: image_text_agreement is scored with it and then applied"
    )
    min_agreement: float = Field(0.2, ge=-1, le=1, description="image_text_agreement: image-caption cosine similarity")
    # attribute captions
    attribute_min_prob: float = Field(0.85, gt=0, lt=1, description="Predicted attributes kept above this probability")
    attribute_head_epochs: int = Field(15, ge=1, description="Training epochs of the attribute head")
    attribute_head: Path | None = Field(
        None, description="Attribute head checkpoint for rows without ground truth (default: train one on rows with it)"
    )
    seed: int = Field(0, description="Seeds the attribute head and the caption grammar")


class TrainConfig(StrictModel):
    """Shared by pretraining and fine-tuning."""

    stage_name: ClassVar[str] = ""

    paths: Paths = Paths()
    model: str = Field("fvlp-vit-tiny", description="open_clip model config name (ViT-B-16 on GPU)")
    init_checkpoint: Path | None = Field(
        None, description="open_clip weights (.pt/.bin/.safetensors) or fvlp checkpoint to start from; default random"
    )
    run_id: str | None = Field(None, description="Names the checkpoint folder; an existing run with it is resumed")
    seed: int = Field(0, description="Seeds initialisation, data order and hard-negative sampling")
    epochs: int = Field(3, ge=1, description="Passes over the training data")
    batch_size: int = Field(32, ge=2, description="Examples per process per micro-batch")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step")
    lr: float = Field(3e-4, gt=0, description="Peak AdamW learning rate of the encoders")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on norms, biases, scales)")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps before the cosine decay")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    nproc_per_node: int = Field(1, ge=1, description="torchrun processes per node (1: plain python)")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per training process (default: the cores this process may use / nproc_per_node)",
    )
    grad_checkpointing: bool = Field(
        False,
        description="Recompute each ViT and text block's activations in the backward pass (open_clip's "
        "set_grad_checkpointing): far less activation memory for larger GPU batches, for a second forward pass "
        "(10-15 percent more step time on a CPU)",
    )
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="Processes decoding training images ahead of each step (0: a thread beside the loop; "
        "default: 0 on a CPU, min(8, cores per training process - 1) on a GPU)",
    )
    nnodes: int = Field(1, ge=1, description="torchrun nodes")
    rdzv_endpoint: str | None = Field(None, description="torchrun rendezvous host:port when nnodes > 1")
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints")
    recipe: Literal["default", "fvlp-paper"] = Field(
        "default",
        description="Preset of training settings: default (sized for the embedded corpus on a CPU) or fvlp-paper "
        "(the reference recipe: ViT-B-16 at 224 px, queues, soft targets; see README); explicit values win",
    )
    momentum: float = Field(0.995, gt=0, lt=1, description="Momentum encoder EMA")
    queue_size: int = Field(
        0, ge=0, description="Contrastive feature queue length (0: in-batch negatives only); capped at the train rows"
    )
    alpha: float = Field(0.0, ge=0, le=1, description="Soft-target weight of the momentum model (0: hard targets)")
    alpha_ramp_epochs: float = Field(1.0, ge=0, description="Epochs over which alpha ramps up from 0")
    hard_negative_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="ITM negatives: weight of the similarity-weighted (hard) draw against a uniform one; the "
        "reference uses 1, but an ITM head trained from random weights learns only from easier negatives",
    )
    temperature_range: tuple[float, float] = Field(
        (0.01, 1.0), description="Bounds of the learnable contrastive temperature (initialised at 0.07)"
    )
    lr_schedule: Literal["cosine", "fvlp-reference"] = Field(
        "cosine",
        description="cosine: linear warm-up then cosine decay per step; fvlp-reference: warm-up from warmup_lr "
        "within the first epoch only, then cosine decay per epoch (as the reference code)",
    )
    warmup_lr: float = Field(1e-6, ge=0, description="Learning rate the fvlp-reference warm-up starts from")
    loss_weights: dict[str, float] = Field(
        default_factory=dict, description="Weight of each loss in the optimised sum (every loss of the stage named)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, values: Any) -> Any:
        """Fill the recipe's settings into every field the caller did not set."""
        if not isinstance(values, dict):
            return values
        preset = RECIPES.get(values.get("recipe", "default"), {}).get(cls.stage_name, {})
        return {**preset, **values}

    @model_validator(mode="after")
    def _temperature_range(self) -> TrainConfig:
        low, high = self.temperature_range
        if not 0 < low < 0.07 < high:
            raise ValueError(
                f"temperature_range must satisfy 0 < low < 0.07 (the initial temperature) < high, got {low, high}"
            )
        return self

    @model_validator(mode="after")
    def _loss_weights(self) -> TrainConfig:
        expected = set(type(self).model_fields["loss_weights"].default)
        if set(self.loss_weights) != expected:
            raise ValueError(f"loss_weights must name exactly {sorted(expected)}, got {sorted(self.loss_weights)}")
        return self

    @model_validator(mode="after")
    def _multi_node(self) -> TrainConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the rendezvous)")
        if self.nnodes * self.nproc_per_node > 1 and not self.run_id:
            raise ValueError("multi-process training needs an explicit run_id shared by every node")
        return self

    def threads_per_process(self) -> int:
        """``threads``, or the cores this process may run on shared by the node's processes."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.threads or max(1, cores // self.nproc_per_node)

    @property
    def trains_matching(self) -> bool:
        """False when the ITM loss weighs 0: training then skips the matching head and freezes it."""
        return self.loss_weights["itm"] > 0

    def data_workers(self, device_type: str) -> int:
        """``loader_workers``, or its default for a training process on ``device_type``."""
        if self.loader_workers is not None:
            return self.loader_workers
        return 0 if device_type != "cuda" else max(0, min(8, self.threads_per_process() - 1))

    def architecture(self) -> dict[str, Any]:
        """What :func:`fvlp_core.models.create_model` needs to rebuild this stage's model."""
        raise NotImplementedError(f"{type(self).__name__} names no model architecture")

    def _contrastive_settings(self) -> dict[str, Any]:
        return {
            "queue_size": self.queue_size,
            "momentum": self.momentum,
            "alpha": self.alpha,
            "temperature_range": list(self.temperature_range),
        }


class PretrainConfig(TrainConfig):
    """Defaults sized for the embedded corpus on a CPU, where a short run from random weights learns fastest with
    in-batch negatives and hard targets (measured in the README); queues and soft targets pay off on long runs."""

    stage_name: ClassVar[str] = "pretrain"
    epochs: int = Field(6, ge=1, description="Passes over the cleaned pairs")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of the encoders")
    loss_weights: dict[str, float] = Field(
        {"itc": 1.0, "itm": 1.0}, description="Weight of each loss in the optimised sum"
    )
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of cleaned pairs (stable hash of SAMPLE_ID) kept out for validation"
    )
    caption_source: Literal["template", "original", "both"] = Field(
        "template",
        description="Caption paired with each face: template = the attribute caption where attributes are known, "
        "else the LAION text (no face loses its caption); original = the filtered LAION text wherever it has one; "
        "both = one of the two drawn per pair and epoch",
    )

    def architecture(self) -> dict[str, Any]:
        return {"model_name": self.model, **self._contrastive_settings()}


class EpisodesInput(StrictModel):
    """The sketch-episode dataset a stage reads (or, for the episodes stage, writes)."""

    paths: Paths = Paths()
    episodes: Path | None = Field(None, description="Episodes dataset folder (default: episodes in the data root)")

    @property
    def episodes_dir(self) -> Path:
        return self.episodes or self.paths.episodes_dir


class EpisodesConfig(EpisodesInput):
    """Drawing episodes: generated from the cleaned faces, or read from an FS2K-SDE root."""

    steps_per_episode: int = Field(50, ge=1, description="T: sketch steps per drawing episode")
    fs2k_sde: Path | None = Field(
        None, description="FS2K-SDE root in any layout it is distributed in; default: episodes generated from faces"
    )
    fs2k_sde_layout: Literal["auto", "fvlp-reference", "slfir", "fvlp"] = Field(
        "auto",
        description="FS2K-SDE layout: fvlp-reference (annotation/ + images/), slfir (comp/ + sketch-seq/), "
        "fvlp (train.json/test.json); auto detects it",
    )
    workers: int = Field(2, ge=1, description="Processes drawing and encoding episode chunks")


class FinetuneConfig(TrainConfig, EpisodesInput):
    stage_name: ClassVar[str] = "finetune"
    epochs: int = Field(10, ge=1, description="Passes over the training photos (one random sketch step each)")
    batch_size: int = Field(16, ge=2, description="Examples per process per micro-batch")
    lr: float = Field(1e-4, gt=0, description="Peak AdamW learning rate of the encoders")
    fusion_lr: float = Field(1e-3, gt=0, description="Learning rate of the fusion conv/attention head")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps before the cosine decay")
    pretrained_checkpoint: Path | None = Field(None, description="FVLP pretraining checkpoint (default: latest)")
    from_scratch: bool = Field(
        False,
        description="Fine-tune from random weights, no pretraining: the baseline that shows what pretraining adds",
    )
    fusion_layers: list[int] | None = Field(
        None, description="ViT blocks (0-based) for multi-scale features; default 3/5/7/11 scaled to the depth"
    )
    fusion_channels: int | None = Field(None, ge=1, description="Fusion conv width; default 2048 x ViT width / 768")
    fusion_attention_channels: int | None = Field(None, ge=1, description="Attention hidden width; default conv / 4")
    fusion_embed_dim: int = Field(256, ge=1, description="Retrieval embedding size")
    select_on: Literal["validation", "test"] = Field(
        "validation",
        description="Episodes that choose the kept epoch (best m@B): a validation split carved from the train "
        "photos, or the test split as the published figures did",
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of train photos (stable hash of photo_id) held out for select_on=validation"
    )
    validate_every: int = Field(
        2,
        ge=1,
        description="Epochs between validations (the last epoch is always validated); each costs a third of "
        "a training epoch on the default CPU recipe",
    )
    augment: bool = Field(
        False, description="Random horizontal flip + RandAugment (2 ops, magnitude 5) on photos and sketches"
    )
    loss_weights: dict[str, float] = Field(
        {"itc": 1.0, "itsc": 1.0, "itm": 1.0}, description="Weight of each loss in the optimised sum"
    )

    @model_validator(mode="after")
    def _one_start(self) -> FinetuneConfig:
        if self.from_scratch and (self.init_checkpoint or self.pretrained_checkpoint):
            raise ValueError("from_scratch excludes init_checkpoint and pretrained_checkpoint")
        return self

    def architecture(self) -> dict[str, Any]:
        return {
            "model_name": self.model,
            "fusion_layers": self.fusion_layers,
            "conv_channels": self.fusion_channels,
            "attention_channels": self.fusion_attention_channels,
            "embed_dim": self.fusion_embed_dim,
            **self._contrastive_settings(),
        }


# The reference recipe (FVLP code: models/model.py, train.py, configs/refine_pretrain.yaml); the
# README's "Reproducing the paper" lists what still differs and why.
_PAPER_COMMON: dict[str, Any] = {
    # OpenAI's ViT-B/16 weights (the reference loads openai/clip-vit-base-patch16) use QuickGELU.
    "model": "ViT-B-16-quickgelu",
    "batch_size": 16,
    "weight_decay": 0.05,
    "queue_size": 57600,
    "momentum": 0.995,
    "alpha": 0.4,
    "temperature_range": (0.001, 0.5),
    "lr_schedule": "fvlp-reference",
    "warmup_lr": 1e-6,
    "warmup_steps": 20000,
    "hard_negative_weight": 1.0,
}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "fvlp-paper": {
        # FLIP's pretraining (configs/pretrain.yaml), which FVLP starts from.
        "pretrain": {**_PAPER_COMMON, "lr": 3e-5, "epochs": 15, "batch_size": 80, "queue_size": 61440},
        "finetune": {
            **_PAPER_COMMON,
            "lr": 3e-5,
            "fusion_lr": 1e-3,
            "epochs": 100,
            "alpha_ramp_epochs": 2.0,
            "augment": True,
            "validate_every": 1,  # the reference evaluates after every epoch
            # (i2t + t2i + ts2i + i2ts) / 4 + 10 * itm, as ITC and ITSC are each a mean of two.
            "loss_weights": {"itc": 0.5, "itsc": 0.5, "itm": 10.0},
        },
    },
}


class EvaluateConfig(EpisodesInput):
    checkpoint: Path | None = Field(None, description="Fine-tuned checkpoint (default: the latest finetune run)")
    split: str = Field("test", description="Episode split to evaluate (gallery = every photo of the split)")
    batch_size: int = Field(128, ge=1, description="Images per encoder batch")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    itm_rerank_k: int = Field(
        128, ge=0, description="Text-photo recall re-ranks each query's top k by ITM + similarity (0: skip)"
    )


class IndexConfig(EpisodesInput):
    """A gallery index: photos embedded with a fine-tuned checkpoint, for `fvlp app`."""

    checkpoint: Path | None = Field(None, description="Fine-tuned checkpoint (default: the latest finetune run)")
    source: Literal["episodes", "faces", "folder"] = Field(
        "episodes",
        description="Gallery photos: an episodes split (replayable), the cleaned faces, or a folder of photos "
        "(each cropped to its main face by the clean stage's detector and crop settings)",
    )
    photos: Path | None = Field(None, description="Folder of photos, subfolders included (source=folder)")
    split: str = Field("test", description="Episode split whose photos make the gallery (source=episodes)")
    gallery: Path | None = Field(None, description="Gallery index folder (default: gallery in the data root)")
    batch_size: int = Field(128, ge=1, description="Photos per encoder batch")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    thumbnail_size: int = Field(96, ge=16, le=512, description="Longer side of each stored thumbnail (pixels)")
    approximate_above: int = Field(
        100_000,
        ge=1,
        description="Galleries with more photos get an approximate HNSW index (faiss) as well; its recall@10 "
        "against exact search is measured and recorded",
    )
    hnsw_neighbours: int = Field(32, ge=4, le=256, description="HNSW graph neighbours per photo (faiss M)")
    hnsw_ef_search: int = Field(128, ge=10, description="HNSW search breadth: higher is slower and closer to exact")

    @property
    def gallery_dir(self) -> Path:
        return self.gallery or self.paths.data_root / "gallery"

    @model_validator(mode="after")
    def _photos_for_a_folder(self) -> IndexConfig:
        if (self.source == "folder") != (self.photos is not None):
            raise ValueError("--photos names the folder of source=folder, and only then")
        return self


PIPELINE_STAGES = ("ingest", "clean", "pretrain", "episodes", "finetune", "evaluate")


class PipelineConfig(StrictModel):
    """Every stage's config; a stage reads its upstream's output under its own ``paths``."""

    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    pretrain: PretrainConfig = PretrainConfig()
    episodes: EpisodesConfig = EpisodesConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    refresh: bool = Field(False, description="Re-run every stage even when a finished run had the same inputs")

    @model_validator(mode="after")
    def _one_data_root(self) -> PipelineConfig:
        stages = {name: getattr(self, name).paths for name in PIPELINE_STAGES}
        if len(set(stages.values())) > 1:
            listed = ", ".join(f"{name}: {paths.data_root}" for name, paths in stages.items())
            raise ValueError(f"all stages must share one data root and results store, got {listed}")
        return self


ConfigT = TypeVar("ConfigT", bound=StrictModel)


def _env_overrides(model: type[BaseModel], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """Collect FVLP_* variables for the fields of ``model`` (nested groups use ``__``)."""
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = _env_overrides(annotation, key + "__")
            if nested:
                found[name] = nested
        elif key in os.environ:
            raw = os.environ[key]
            # Lists and dicts come as JSON; scalars are left for pydantic to coerce.
            found[name] = json.loads(raw) if raw[:1] in "[{" else raw
    return found


def _paths_env() -> dict[str, Any]:
    """FVLP_DATA_ROOT / FVLP_RESULTS_PATH apply to every stage's ``paths``."""
    return _env_overrides(Paths)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def spread_paths(model: type[BaseModel], values: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """``shared`` path settings (data root, results path) under every ``paths`` field of
    ``model``, however deep; values already set there win."""
    if not shared:
        return values
    out = dict(values)
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if annotation is Paths:
            out[name] = _deep_merge(shared, out.get(name, {}))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = spread_paths(annotation, out.get(name, {}), shared)
    return out


class ConfigError(ValueError):
    """A configuration that failed validation; the message lists every offending key."""


def resolve_config(model: type[ConfigT], overrides: dict[str, Any] | None = None) -> ConfigT:
    """Build ``model`` from defaults, FVLP_* environment and ``overrides`` (CLI/form values)."""
    values = spread_paths(model, _env_overrides(model), _paths_env())
    values = _deep_merge(values, overrides or {})
    try:
        return model.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<config>'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid {model.__name__}: {problems}") from err


def flow_config(model: type[ConfigT], config: BaseModel | dict[str, Any] | None, data_root: Path | None) -> ConfigT:
    """The config a flow runs with. Only the values set explicitly (a deployment's form or
    ``--param``, the CLI's flags) are taken from ``config``; the FVLP_* environment of the
    process running the flow fills the rest, then the defaults. ``data_root`` reaches every
    ``paths`` group (the pipeline's six included) and wins over the data root in ``config``."""
    if isinstance(config, BaseModel):
        values = config.model_dump(mode="json", exclude_unset=True)
    else:
        values = dict(config or {})
    if data_root is not None:
        values = _deep_merge(values, spread_paths(model, {}, {"data_root": str(data_root)}))
    return resolve_config(model, values)
