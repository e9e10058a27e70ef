"""Embedding API over a trained checkpoint, for evaluation and retrieval services.

    encoder = FVLPEncoder.load("fvlp-data/checkpoints/finetune/<run>/checkpoint.pt", device="cuda")
    gallery = encoder.encode_images(photos)                  # list[PIL.Image] or [B,3,H,W] tensor
    queries = encoder.encode_sketches(sketches, captions)    # fused sketch+text (captions optional)
    only, fused = encoder.encode_sketch_queries(sketches, captions)  # both, one image pass
    texts = encoder.encode_texts(["a young woman with arched eyebrows"])

Every method returns L2-normalised float32 CPU tensors in ONE embedding space (dot product
= cosine similarity). A fine-tuning checkpoint embeds with the multi-scale fusion head; a
pretraining checkpoint with the CLIP projections (photos and sketches alike).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from PIL import Image

from fvlp_core.checkpoint import checkpoint_architecture, load_checkpoint
from fvlp_core.codec import open_image
from fvlp_core.models import FVLPFusion, create_model, get_tokenizer
from fvlp_core.models.factory import encode_image_tokens, encode_text_tokens, image_size
from fvlp_core.transforms import image_tensor

ImageInput = Sequence[Image.Image] | Sequence[bytes] | torch.Tensor


class FVLPEncoder:
    def __init__(
        self,
        model: torch.nn.Module,
        model_name: str,
        stage: str,
        device: torch.device,
        batch_size: int = 64,
        grounded: torch.nn.Module | None = None,
    ):
        self.model: Any = model.to(device).eval()  # FVLPFusion, or an open_clip CLIP for a pretraining checkpoint
        self.grounded = None if grounded is None else grounded.to(device).eval()  # the ITM encoder
        self.model_name = model_name
        self.stage = stage
        self.device = device
        self.batch_size = batch_size
        self.backbone = model.backbone if stage == "finetune" else model
        self.image_size = image_size(self.backbone)
        self.tokenizer = get_tokenizer(model_name)

    @classmethod
    def load(
        cls, checkpoint_path: Path | str, device: str | torch.device = "auto", batch_size: int = 64
    ) -> FVLPEncoder:
        """Load a pretraining or fine-tuning checkpoint (weights only: no code runs)."""
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        state = load_checkpoint(Path(checkpoint_path))
        architecture = checkpoint_architecture(state)
        trained: torch.nn.Module
        if state["stage"] == "finetune":
            trained = FVLPFusion.for_inference(architecture, state["model"])
        else:
            trained = create_model(state["stage"], architecture)
            trained.load_state_dict(state["model"])
        # A pretraining checkpoint embeds with the CLIP projections; its ITM and momentum parts stay behind.
        model = cast(torch.nn.Module, trained.backbone) if state["stage"] == "pretrain" else trained
        grounded = cast(torch.nn.Module, trained.grounded)
        return cls(model, architecture["model_name"], state["stage"], torch.device(device), batch_size, grounded)

    @property
    def embed_dim(self) -> int:
        return self.encode_texts(["a face"]).shape[1]

    def _pixels(self, images: ImageInput) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        decoded = [open_image(bytes(i)) if isinstance(i, (bytes, bytearray)) else i for i in images]
        return torch.stack([image_tensor(image, self.image_size) for image in decoded])

    def _chunks(self, count: int):
        return (slice(start, start + self.batch_size) for start in range(0, count, self.batch_size))

    def _raw(self, batch: torch.Tensor, tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's image embedding and, with ``tokens``, its text embedding, as the fused query
        adds them before normalising (a pretraining checkpoint adds the normalised projections)."""
        if self.stage == "finetune":
            image = self.model._image_forward(batch)[0].float()
            text = None if tokens is None else self.model._text_forward(tokens).float()
        else:
            image = F.normalize(encode_image_tokens(self.backbone, batch)[0].float(), dim=-1)
            text = None if tokens is None else F.normalize(encode_text_tokens(self.backbone, tokens)[0].float(), dim=-1)
        return image, text

    def _batches(
        self, images: ImageInput, texts: Sequence[str] | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        pixels = self._pixels(images)
        if texts is not None and len(texts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} sketches but {len(texts)} captions")
        for chunk in self._chunks(pixels.shape[0]):
            tokens = None if texts is None else self.tokenizer(list(texts[chunk])).to(self.device)
            yield self._raw(pixels[chunk].to(self.device), tokens)

    @torch.no_grad()
    def _image_embeddings(self, images: ImageInput, texts: Sequence[str] | None) -> torch.Tensor:
        out = [
            F.normalize(image if text is None else image + text, dim=-1).cpu()
            for image, text in self._batches(images, texts)
        ]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def encode_sketch_queries(self, sketches: ImageInput, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sketch-only, fused sketch+caption) queries of the same sketches from ONE pass of the
        image tower: evaluation scores both, and the image pass is what costs."""
        only, fused = [], []
        for image, text in self._batches(sketches, captions):
            assert text is not None  # captions were given
            only.append(F.normalize(image, dim=-1).cpu())
            fused.append(F.normalize(image + text, dim=-1).cpu())
        if not only:
            empty = torch.empty(0, self.embed_dim)
            return empty, empty
        return torch.cat(only), torch.cat(fused)

    def encode_images(self, images: ImageInput) -> torch.Tensor:
        """Photos -> [N, D]. Accepts PIL images, PNG/JPEG bytes, or preprocessed [N,3,H,W] tensors."""
        return self._image_embeddings(images, None)

    def encode_sketches(self, sketches: ImageInput, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Partial sketches -> [N, D]; with ``captions`` (one per sketch) the fused sketch+text query."""
        return self._image_embeddings(sketches, captions)

    @torch.no_grad()
    def encode_image_tokens(self, images: ImageInput) -> torch.Tensor:
        """Photos -> the final-block patch tokens [N, P, W] the ITM head attends to (on the CPU)."""
        pixels = self._pixels(images)
        parts = [
            encode_image_tokens(self.backbone, pixels[c].to(self.device))[1].cpu() for c in self._chunks(len(pixels))
        ]
        return torch.cat(parts)

    @torch.no_grad()
    def match_logits(
        self, captions: Sequence[str], image_tokens: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ITM head's match logit for each caption and its image, as the reference adds it to
        the similarity when re-ranking: ``image_tokens[image_index[i]]`` for caption i (default:
        ``image_tokens[i]``), so an image several captions are matched with is passed once."""
        if self.grounded is None:
            raise ValueError("this encoder has no image-text matching head")
        if image_index is None:
            image_index = torch.arange(len(captions))
        parts = []
        for chunk in self._chunks(len(captions)):
            text = self.tokenizer(list(captions[chunk])).to(self.device)
            images, index = torch.unique(image_index[chunk], return_inverse=True)
            logits = self.grounded(
                self.backbone, text, image_tokens[images].to(self.device), image_index=index.to(self.device)
            )
            parts.append(logits[:, 1].float().cpu())
        return torch.cat(parts)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for chunk in self._chunks(len(texts)):
            tokens = self.tokenizer(list(texts[chunk])).to(self.device)
            if self.stage == "finetune":
                emb = self.model.encode_texts(tokens)
            else:
                emb = encode_text_tokens(self.backbone, tokens)[0]
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)
