"""Decoding untrusted image bytes into RGB arrays, one clear rejection per bad record.

Web-scraped bytes are hostile: empty bodies, truncated files, HTML saved as .jpg,
PNG/JPEG headers declaring 50k x 50k pixels (a decompression bomb), CMYK, 16-bit,
palette and alpha images, animated GIFs. The header's size is checked *before* any
pixel is decoded, and every failure becomes an :class:`ImageRejected` naming the
rule, never an exception that takes the shard down.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated file is a bad record, not something to paper over with grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageRejected(Exception):
    """An image that cannot be used; ``rule`` is the cleaning rule it failed."""

    rule: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


# A progressive JPEG has about 10 scans; each further one costs a pass over the whole image,
# so a small file with thousands of empty scans takes seconds to minutes to decode.
MAX_JPEG_SCANS = 100
_START_OF_SCAN = b"\xff\xda"  # entropy-coded data stuffs 0xFF with 0x00: this is only ever a marker


def _check_scan_count(data: bytes) -> None:
    scans = data.count(_START_OF_SCAN)
    if scans > MAX_JPEG_SCANS:
        raise ImageRejected(
            "undecodable_image", "too_many_scans", f"JPEG with {scans} scans (limit {MAX_JPEG_SCANS}): decode refused"
        )


def decode_rgb(data: bytes | None, max_pixels: int) -> np.ndarray:
    """``data`` as an ``(H, W, 3)`` uint8 RGB array, or :class:`ImageRejected`.

    Rules raised: ``undecodable_image`` (missing, empty, not an image, truncated),
    ``image_too_large`` (header declares more than ``max_pixels`` pixels).
    """
    if data is None or len(data) == 0:
        raise ImageRejected("undecodable_image", "empty", "no image bytes")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning is replaced by the explicit max_pixels check below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected(
                        "image_too_large",
                        width * height,
                        f"header declares {width}x{height} pixels (limit {max_pixels})",
                    )
                if image.format == "JPEG":
                    _check_scan_count(data)
                image.seek(0)  # animated GIF/WebP/APNG: the first frame
                image.load()
                return to_rgb_array(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        # PIL refuses headers beyond twice its own limit before we see the size.
        raise ImageRejected("image_too_large", None, f"header declares too many pixels: {err}") from None
    except UnidentifiedImageError:
        raise ImageRejected(
            "undecodable_image", "not_image", f"not a decodable image ({len(data)} bytes of unknown format)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL reports truncated/corrupt streams as OSError (and a few codecs as the others).
        raise ImageRejected("undecodable_image", "corrupt", f"corrupt or truncated image: {err}") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode as 8-bit RGB; transparency is composited onto white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the used range down to 8 bits instead of clipping, in
        # integers (x * 255 / 65535 == x / 257): a float64 copy of a 40-megapixel scan is 320 MB.
        pixels = np.asarray(image)
        if pixels.dtype != np.uint16:
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
        top = int(pixels.max()) if pixels.size else 0
        grey = (pixels // 257 if top > 255 else pixels).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        low = float(pixels.min()) if pixels.size else 0.0
        span = (float(pixels.max()) - low if pixels.size else 0.0) or 1.0
        grey = ((pixels - low) * np.float32(255 / span)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA")
    elif mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    if image.mode != "RGB":
        image = image.convert("RGB")  # CMYK, YCbCr, L, 1, LAB, HSV
    return np.asarray(image, dtype=np.uint8)
