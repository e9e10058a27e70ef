"""img2dataset's output layouts, built in a test from real metadata rows and real photos.

img2dataset (the downloader FaRL's LAION-Face script runs) writes, per input shard:
``NNNNN.tar`` holding ``<key>.jpg``, ``<key>.txt`` (the caption) and ``<key>.json`` (the
input row's saved columns plus ``url``, ``caption``, ``key``, ``status``, ``error_message``,
``width``, ``height``, ``original_width``, ``original_height``) for each downloaded sample,
and ``NNNNN.parquet`` with the same metadata for every sample, failed downloads included
(``status`` ``failed_to_download``, the reason in ``error_message``). Keys are the shard
number and the row within it, zero-padded: ``000010003`` is row 3 of shard 1.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SAMPLE_FILES = Path(__file__).parent / "fixtures" / "img2dataset"
DNS_FAILURE = "<urlopen error [Errno -2] Name or service not known>"  # img2dataset's error_message


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def download_like_img2dataset(
    rows: list[dict[str, Any]],
    photos: dict[int, bytes],
    out: Path,
    shard_size: int,
    url_col: str = "URL",
    caption_col: str = "TEXT",
    save_additional_columns: tuple[str, ...] = (),
) -> Path:
    """Write img2dataset's webdataset output for ``rows``: row ``i`` "downloads" ``photos[i]``
    when present and fails otherwise. Returns the output folder."""
    out.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(rows), shard_size)):
        metas = []
        with tarfile.open(out / f"{shard:05d}.tar", "w") as archive:
            for offset, row in enumerate(rows[start : start + shard_size]):
                key = f"{shard:05d}{offset:04d}"
                photo = photos.get(start + offset)
                meta: dict[str, Any] = {name: row[name] for name in save_additional_columns}
                meta.update(url=row[url_col], caption=row[caption_col], key=key)
                if photo is None:
                    meta.update(
                        status="failed_to_download",
                        error_message="<urlopen error [Errno -2] Name or service not known>",
                    )
                    meta.update(width=None, height=None, original_width=None, original_height=None)
                else:
                    width, height = Image.open(io.BytesIO(photo)).size
                    meta.update(status="success", error_message=None, width=width, height=height)
                    meta.update(original_width=width, original_height=height)
                    _add(archive, f"{key}.jpg", photo)
                    _add(archive, f"{key}.txt", str(row[caption_col]).encode())
                    _add(archive, f"{key}.json", json.dumps(meta, indent=4).encode())
                metas.append(meta)
        pq.write_table(pa.Table.from_pylist(metas), out / f"{shard:05d}.parquet")
    return out
