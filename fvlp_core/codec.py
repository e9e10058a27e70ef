"""Image bytes <-> pixels: the one encoder and decoder for face crops, photos and sketches.

Face crops are JPEG at quality 95, as img2dataset stores LAION images: on 224 px face crops
that is 0.15 ms to encode and 12.6 KiB against PNG's 1.46 ms and 60.7 KiB (5x less disk at
LAION's 50M faces), 4x faster to decode for every training epoch, at 45 dB PSNR; the pixels
came out of a JPEG already. Sketches are line art and stay lossless PNG (small and exact).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# zlib level 1 with every row filtered "up" (against the row above) instead of libpng's
# per-row adaptive choice: on 224 px scikit-image photos 2.8 -> 1.9 ms per encode for 1.4% more
# bytes, and line-art sketches 0.19 -> 0.05 ms and smaller (level 1 alone was 30% faster than
# level 3 for 5% more bytes). Lossless either way: the pixels are the same.
PNG_SETTINGS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
CROP_JPEG_QUALITY = 95
JPEG_SETTINGS = [cv2.IMWRITE_JPEG_QUALITY, CROP_JPEG_QUALITY]
# Part of the image measurements' version: stored crops of another encoding are re-measured.
CROP_ENCODING = f"jpeg-{CROP_JPEG_QUALITY}"


def encode_png(pixels: np.ndarray) -> bytes:
    """An ``(H, W)`` greyscale or ``(H, W, 3)`` RGB uint8 array as PNG bytes."""
    return _encode(".png", pixels, PNG_SETTINGS)


def encode_crop(pixels: np.ndarray) -> bytes:
    """A face crop (``(H, W, 3)`` RGB uint8) as JPEG bytes (:data:`CROP_ENCODING`)."""
    return _encode(".jpg", pixels, JPEG_SETTINGS)


def _encode(extension: str, pixels: np.ndarray, settings: list[int]) -> bytes:
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(extension, pixels, settings)
    if not ok:
        raise ValueError(f"{extension} encoding of a {pixels.shape} array failed")
    return buffer.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """PNG, JPEG (or any image) bytes as an ``(H, W, 3)`` uint8 RGB array."""
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
