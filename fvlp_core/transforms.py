"""Model input preprocessing shared by training, evaluation and the embedding API."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import functional as TF

from fvlp_core.models.factory import IMAGE_MEAN, IMAGE_STD
from fvlp_core.png import open_image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparent areas on white: sketches are dark strokes on a white page."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        page = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(page, image).convert("RGB")
    return image.convert("RGB")


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP preprocessing: RGB (grayscale sketches replicated to 3 channels), resize, mean/std."""
    image = to_rgb(image).resize((size, size), Image.Resampling.BICUBIC)
    return TF.normalize(TF.to_tensor(image), IMAGE_MEAN, IMAGE_STD)


def image_bytes_tensor(data: bytes, size: int, record: str) -> torch.Tensor:
    """:func:`image_tensor` of encoded image bytes; a corrupt image is an error naming ``record``."""
    try:
        return image_tensor(open_image(data), size)
    except Exception as err:  # PIL raises several types for corrupt bytes
        raise ValueError(f"{record}: undecodable image ({err})") from err
