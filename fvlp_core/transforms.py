"""Model input preprocessing shared by training, evaluation and the embedding API."""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms import functional as TF

from fvlp_core.codec import open_image
from fvlp_core.models.factory import IMAGE_MEAN, IMAGE_STD


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparent areas on white: sketches are dark strokes on a white page."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        page = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(page, image).convert("RGB")
    return image.convert("RGB")


def image_tensor(image: Image.Image, size: int, augment_rng: random.Random | None = None) -> torch.Tensor:
    """CLIP preprocessing: RGB (grayscale sketches replicated to 3 channels), resize, mean/std;
    with ``augment_rng``, the training augmentation (:func:`augment`) after the resize."""
    image = to_rgb(image).resize((size, size), Image.Resampling.BICUBIC)
    if augment_rng is not None:
        image = augment(image, augment_rng)
    return TF.normalize(TF.to_tensor(image), IMAGE_MEAN, IMAGE_STD)


# The reference's RandomAugment(2, 5): two of these ops (drawn with replacement), each applied
# with probability 0.5, at magnitude 5 of 10. At that magnitude the enhance factor is 1.0, so
# Brightness and Sharpness change nothing, exactly as in the reference.
AUGMENT_OPS = (
    "Identity",
    "Brightness",
    "Sharpness",
    "Equalize",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
AUGMENT_LEVEL = 5 / 10
AUGMENT_FILL = (128, 128, 128)
# Reference magnitudes at level 10 (translation in pixels of a 224-px image, scaled to ours).
MAX_SHEAR, MAX_TRANSLATE_224, MAX_ROTATE_DEGREES = 0.3, 10, 30


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """Random horizontal flip, then the reference's RandAugment ops, all drawn from ``rng``."""
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for op in rng.choices(AUGMENT_OPS, k=2):
        if rng.random() < 0.5:
            image = _augment_op(image, op, rng.choice((-1, 1)))
    return image


def _augment_op(image: Image.Image, op: str, sign: int) -> Image.Image:
    shear = sign * AUGMENT_LEVEL * MAX_SHEAR
    shift = sign * AUGMENT_LEVEL * MAX_TRANSLATE_224 * image.width / 224
    affine = {
        "ShearX": (1, shear, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, shear, 1, 0),
        "TranslateX": (1, 0, shift, 0, 1, 0),
        "TranslateY": (1, 0, 0, 0, 1, shift),
    }
    if op in affine:
        return image.transform(
            image.size, Image.Transform.AFFINE, affine[op], Image.Resampling.BILINEAR, fillcolor=AUGMENT_FILL
        )
    if op == "Rotate":
        return image.rotate(sign * AUGMENT_LEVEL * MAX_ROTATE_DEGREES, fillcolor=AUGMENT_FILL)
    if op == "Equalize":
        return ImageOps.equalize(image)
    if op in ("Brightness", "Sharpness"):
        enhancer = ImageEnhance.Brightness if op == "Brightness" else ImageEnhance.Sharpness
        return enhancer(image).enhance(AUGMENT_LEVEL * 1.8 + 0.1)
    return image


def image_bytes_tensor(data: bytes, size: int, record: str, augment_rng: random.Random | None = None) -> torch.Tensor:
    """:func:`image_tensor` of encoded image bytes; a corrupt image is an error naming ``record``."""
    try:
        return image_tensor(open_image(data), size, augment_rng)
    except Exception as err:  # PIL raises several types for corrupt bytes
        raise ValueError(f"{record}: undecodable image ({err})") from err
