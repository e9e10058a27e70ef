"""Images and raw shards for the clean-stage tests: real photos plus every kind of bad bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import insightface
import numpy as np
import pyarrow as pa
from PIL import Image

from storage.shards import shard_path, write_shard

INSIGHTFACE_IMAGES = Path(insightface.__file__).parent / "data" / "images"
GROUP_PHOTO = INSIGHTFACE_IMAGES / "t1.jpg"  # six faces
PORTRAIT = INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"  # one face, 112 x 112

# Person captions that are all different, so duplicate_caption stays out of a test's way.
DISTINCT_CAPTIONS = (
    "Young woman with glasses reading outdoors",
    "Elderly gentleman wearing a hat in the park",
    "Bride laughing at her wedding reception",
    "Businessman giving a talk at a conference",
    "Teen girl with curly red hair posing",
    "Father and son fishing by the lake",
    "Actress Emma Stone attends the Oscars",
    "Close up face of a bearded man",
    "Smiling nurse in a hospital corridor",
    "Grandmother baking cookies with her grandson",
    "Singer performing on stage at night",
    "Student portrait for the yearbook",
    "Portrait of a smiling man with short hair",
    "Doctor in a white coat smiling",
    "Chef tasting soup in a busy kitchen",
    "Soldier saluting at a parade",
    "Author signing books at a store",
    "Dancer stretching before a show",
)


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring ``width x height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small real JPEG whose SOF0 marker is patched to declare ``width x height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 150, 100)), "JPEG", quality=90))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# Face boxes (x1, y1, x2, y2) in t1.jpg, as the offline detector finds them.
GROUP_FACE_BOXES = (
    (464, 263, 574, 408),
    (742, 343, 842, 471),
    (51, 261, 168, 401),
    (272, 147, 375, 278),
    (902, 56, 1010, 201),
    (1127, 273, 1225, 401),
)


def group_faces(mirrored: bool = False) -> list[Image.Image]:
    """Six distinct one-person photos cut from the group photo (each face with some context)."""
    group = Image.open(GROUP_PHOTO).convert("RGB")
    faces = []
    for x1, y1, x2, y2 in GROUP_FACE_BOXES:
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, 0.8 * max(x2 - x1, y2 - y1)
        face = group.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
        faces.append(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else face)
    return faces


def portrait_variants(sources: list[Image.Image] | None = None) -> dict[str, bytes]:
    """One-face photos in the image modes web data brings (each should stay usable).

    ``sources``: five RGB photos, one per variant (default: the portrait five times).
    """
    sources = sources or [Image.open(PORTRAIT).convert("RGB").resize((224, 224))] * 5
    cmyk, grey, palette, alpha, animated = sources
    grey16 = Image.fromarray(np.asarray(grey.convert("L"), dtype=np.uint16) * 257)
    gif = io.BytesIO()
    animated.save(gif, format="GIF", save_all=True, append_images=[animated.rotate(10)], duration=100, loop=0)
    return {
        "cmyk_jpeg": encode(cmyk.convert("CMYK"), "JPEG", quality=95),
        "grey16_png": png_bytes(grey16),
        "palette_png": png_bytes(palette.convert("P", palette=Image.Palette.ADAPTIVE)),
        "rgba_png": png_bytes(alpha.convert("RGBA")),
        "animated_gif": gif.getvalue(),
    }


def jpeg(image: Image.Image) -> bytes:
    return encode(image, "JPEG", quality=92)


def bad_images() -> dict[str, bytes | None]:
    good = PORTRAIT.read_bytes()
    return {
        "zero_bytes": b"",
        "missing": None,
        "not_an_image": b"<html><body>404 Not Found</body></html>",
        "truncated_png": good[: len(good) // 3],
        "corrupt_jpeg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "png_bomb": png_bomb(),
        "jpeg_bomb": jpeg_bomb(),
    }


def raw_table(rows: list[dict]) -> pa.Table:
    """Rows (SAMPLE_ID, TEXT, image, optional fetch_status) in the raw shard schema of docs/architecture.md."""
    n = len(rows)
    return pa.table(
        {
            "SAMPLE_ID": pa.array([r["SAMPLE_ID"] for r in rows], pa.int64()),
            "URL": pa.array([f"https://example.com/{r['SAMPLE_ID']}.jpg" for r in rows], pa.string()),
            "TEXT": pa.array([r.get("TEXT") for r in rows], pa.string()),
            "WIDTH": pa.array([None] * n, pa.int64()),
            "HEIGHT": pa.array([None] * n, pa.int64()),
            "similarity": pa.array([0.3] * n, pa.float64()),
            "image": pa.array([r.get("image") for r in rows], pa.binary()),
            "fetch_status": pa.array([r.get("fetch_status", "ok") for r in rows], pa.string()),
            "fetch_error": pa.array([r.get("fetch_error") for r in rows], pa.string()),
            "metadata_issues": pa.array([[] for _ in rows], pa.list_(pa.string())),
            "input_file": pa.array(["metadata.parquet"] * n, pa.string()),
            "input_row": pa.array(list(range(n)), pa.int64()),
        }
    )


def write_raw_shards(raw_dir: Path, shards: list[list[dict]]) -> list[Path]:
    return [write_shard(raw_table(rows), shard_path(raw_dir, i)) for i, rows in enumerate(shards)]
