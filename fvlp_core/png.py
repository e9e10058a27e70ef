"""PNG bytes <-> pixels: the one encoder and decoder for crops, photos and sketches."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# zlib level 1: on 224 px crops of real photos 30% less encode time than level 3 for 5% more
# bytes (encoding was a third of the cleaning task; measured on insightface/scikit-image photos)
PNG_COMPRESSION = 1


def encode_png(pixels: np.ndarray) -> bytes:
    """An ``(H, W)`` greyscale or ``(H, W, 3)`` RGB uint8 array as PNG bytes."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError(f"PNG encoding of a {pixels.shape} array failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any image) bytes as an ``(H, W, 3)`` uint8 RGB array."""
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def png_from_file(path: Path, mode: str) -> bytes:
    """An image file converted to PIL ``mode`` (``RGB``, ``L``) and re-encoded as PNG."""
    try:
        with Image.open(path) as image:
            return encode_png(np.asarray(image.convert(mode)))
    except OSError as err:
        raise ValueError(f"{path}: unreadable image ({err})") from err


def open_image(data: bytes) -> Image.Image:
    """Image bytes as a PIL image (lazy: pixels are decoded on first use)."""
    return Image.open(io.BytesIO(data))
