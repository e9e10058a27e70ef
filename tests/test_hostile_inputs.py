"""Every kind of hostile input, end to end through the real ingest and clean code.

One metadata file and one image folder hold them all: corrupt, truncated and zero-byte
images, HTML saved as .jpg, PNG and JPEG headers declaring 50k x 50k pixels, CMYK /
16-bit / palette / alpha images and an animated GIF, captions that are not UTF-8 or are
100 kB long, NaN and negative WIDTH/HEIGHT, and a duplicated SAMPLE_ID. Ingest then clean
must give every input row exactly one outcome - kept, or rejected with the named rule and
a message - without a shard failing. Hostile *files* (Parquet with missing or mistyped
columns, tar members named ``../``) stop with an error naming the file; they are tested
in tests/test_ingest.py and tests/test_fetch.py (see docs/guarantees.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fvlp_core.config import CleanConfig, IngestConfig, Paths
from fvlp_core.detection.images import ImageRejected, decode_rgb
from fvlp_core.fetch import FetchRequest, FolderFetcher, check_image
from storage.clean import read_decisions, read_raw_rows
from storage.shards import read_dataset, shard_path, write_shard
from tests.clean_fixtures import DISTINCT_CAPTIONS, PORTRAIT, bad_images, encode, portrait_variants

GOOD = encode(Image.open(PORTRAIT).convert("RGB").resize((224, 224)), "PNG")
UNDECODABLE = {"zero_bytes", "not_an_image", "truncated_png", "corrupt_jpeg"}
BOMBS = {"png_bomb", "jpeg_bomb"}


def hostile_rows() -> list[dict]:
    """One dict per metadata row: what goes in, and what must come out of ingest and clean."""
    captions = iter(DISTINCT_CAPTIONS)  # distinct, so duplicate_caption stays out of the way
    rows = [{"SAMPLE_ID": 1, "case": "good", "image": GOOD, "outcome": "kept-or-face-rule"}]
    for name, data in bad_images().items():
        rows.append(
            {"case": name, "image": data, "outcome": "image_too_large" if name in BOMBS else "undecodable_image"}
        )
    for name, data in portrait_variants().items():  # odd modes must decode like any RGB image
        rows.append({"case": name, "image": data, "outcome": "decoded"})
    rows += [
        {
            "case": "non_utf8_caption",
            "image": GOOD,
            "TEXT": b"Portr\xe4t of a man \xff\xfe",
            "outcome": "caption_not_utf8",
            "issues": ["TEXT: not valid UTF-8 (undecodable bytes replaced with U+FFFD)"],
        },
        {"case": "100kB_caption", "image": GOOD, "TEXT": "A smiling man " * 7500, "outcome": "caption_too_long"},
        {"case": "no_caption", "image": GOOD, "TEXT": None, "outcome": "caption_empty"},
        {
            "case": "nan_width",
            "image": GOOD,
            "WIDTH": float("nan"),
            "HEIGHT": -3.0,
            "outcome": "decoded",
            "issues": ["WIDTH: missing or NaN", "HEIGHT: not positive (-3)"],
        },
    ]
    for i, row in enumerate(rows):
        row.setdefault("SAMPLE_ID", 10 + i)
        if "TEXT" not in row:
            row["TEXT"] = next(captions)
    # The same id again, right after its first row (same shard): never fetched twice, never dropped.
    rows.insert(
        1,
        {"SAMPLE_ID": 1, "case": "duplicate_id", "image": GOOD, "TEXT": next(captions), "outcome": "undecodable_image"},
    )
    return rows


def write_inputs(root: Path, rows: list[dict]) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    for row in rows:
        if row["image"] is not None and row["case"] != "duplicate_id":
            suffix = {"cmyk_jpeg": "jpg", "jpeg_bomb": "jpg", "corrupt_jpeg": "jpg", "animated_gif": "gif"}.get(
                row["case"], "png"
            )
            (images / f"{row['SAMPLE_ID']}.{suffix}").write_bytes(row["image"])
    texts = [t.encode() if isinstance(t, str) else t for t in (r["TEXT"] for r in rows)]
    metadata = root / "metadata.parquet"
    pq.write_table(
        pa.table(
            {
                "SAMPLE_ID": pa.array([r["SAMPLE_ID"] for r in rows], pa.int64()),
                "URL": [f"https://example.com/{r['SAMPLE_ID']}.jpg" for r in rows],
                "TEXT": pa.array(texts, pa.binary()),
                "WIDTH": pa.array([r.get("WIDTH", 224.0) for r in rows], pa.float64()),
                "HEIGHT": pa.array([r.get("HEIGHT", 224.0) for r in rows], pa.float64()),
                "similarity": [0.3] * len(rows),
            }
        ),
        metadata,
    )
    return metadata, images


@pytest.fixture(scope="module")
def ingested_and_cleaned(tmp_path_factory, prefect_harness):
    from flows.clean import clean_flow
    from flows.ingest import ingest_flow

    root = tmp_path_factory.mktemp("hostile")
    rows = hostile_rows()
    metadata, images = write_inputs(root, rows)
    paths = Paths(data_root=root / "data")
    ingest = ingest_flow(IngestConfig(paths=paths, source="folder", metadata=[metadata], images=images, shard_size=8))
    clean = clean_flow(CleanConfig(paths=paths, workers=1))
    return rows, paths, ingest, clean


@pytest.mark.slow
def test_every_hostile_row_is_kept_or_rejected_with_a_named_rule(ingested_and_cleaned):
    rows, paths, ingest, clean = ingested_and_cleaned
    assert ingest["rows"] == clean["input_rows"] == len(rows)
    assert clean["kept"] + clean["rejected"] == len(rows)

    raw = read_dataset(paths.raw_dir).to_pylist()
    decisions = read_decisions(paths.clean_dir).to_pylist()  # shard order, row order: the input order
    assert [d["SAMPLE_ID"] for d in decisions] == [r["SAMPLE_ID"] for r in rows] == [r["SAMPLE_ID"] for r in raw]
    for row, fetched, decision in zip(rows, raw, decisions):
        reasons, measured = decision["reasons"], json.loads(decision["measurements"])
        context = (row["case"], fetched["fetch_status"], fetched["fetch_error"], reasons)
        assert decision["kept"] == (not reasons), context
        outcome = row["outcome"]
        if outcome in ("undecodable_image", "image_too_large"):
            # Bombs are stopped by ingest's header check or by clean's pixel limit: either way the
            # same rule, image_too_large, saying why.
            rule = outcome
            assert reasons == [rule], context
            assert measured[rule], context  # the message saying what was wrong
            if row["case"] in BOMBS:
                assert "50000" in measured[rule] or "decompression bomb" in measured[rule], measured[rule]
            if row["case"] == "duplicate_id":
                assert fetched["fetch_status"] == "duplicate_id" and "SAMPLE_ID 1 already at" in fetched["fetch_error"]
        elif outcome == "decoded":
            assert fetched["fetch_status"] == "ok", context
            assert not {"undecodable_image", "image_too_large"} & set(reasons), context
            assert measured["image_too_small"] == 224, context  # the decoded short side
        elif outcome == "kept-or-face-rule":
            assert decision["kept"], context
        else:
            assert outcome in reasons, context
        assert fetched["metadata_issues"] == row.get("issues", []), context
    caption = next(f for f, r in zip(raw, rows) if r["case"] == "non_utf8_caption")
    assert caption["TEXT"] == "Portr\ufffdt of a man \ufffd\ufffd"


@pytest.mark.slow
def test_kept_faces_never_come_from_a_duplicate_row(ingested_and_cleaned):
    from storage.clean import read_faces

    rows, paths, _, clean = ingested_and_cleaned
    faces = read_faces(paths.clean_dir, ["SAMPLE_ID", "crop"]).to_pylist()
    assert len(faces) == clean["kept"]
    ids = [f["SAMPLE_ID"] for f in faces]
    assert len(ids) == len(set(ids)) and 1 in ids
    assert all(f["crop"] for f in faces)


# ----------------------------------------------------------------------------- fast, per layer


@pytest.mark.parametrize("case", sorted(bad_images()))
def test_bad_image_bytes_are_named_by_the_decoder(case: str):
    data = bad_images()[case]
    with pytest.raises(ImageRejected) as rejected:
        decode_rgb(data, max_pixels=40_000_000)
    assert rejected.value.rule == ("image_too_large" if case in BOMBS else "undecodable_image")
    assert rejected.value.message


@pytest.mark.parametrize("case", sorted(portrait_variants()))
def test_image_modes_decode_to_rgb(case: str):
    rgb = decode_rgb(portrait_variants()[case], max_pixels=40_000_000)
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
    assert 40 < rgb.mean() < 230  # real content, not a blank or black frame


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_ingest_refuses_bombs_from_the_header_without_decoding(case: str):
    result = check_image(bad_images()[case], max_bytes=10_000_000)
    assert result.status == "too_large" and "decompression bomb" in result.error and result.image is None


def test_folder_fetcher_gives_every_hostile_file_a_status(tmp_path: Path):
    rows = [r for r in hostile_rows() if r["case"] != "duplicate_id"]
    write_inputs(tmp_path, rows)
    fetcher = FolderFetcher(tmp_path / "images", max_bytes=10_000_000)
    results = fetcher.fetch([FetchRequest(r["SAMPLE_ID"]) for r in rows])
    assert len(results) == len(rows)
    for row, result in zip(rows, results):
        assert result.status in ("ok", "not_found", "not_image", "too_large"), (row["case"], result)
        assert (result.status == "ok") == (result.image is not None)
        if result.status != "ok":
            assert result.error, row["case"]
        if row["case"] in BOMBS:
            assert result.status == "too_large"
        if row["case"] == "missing":
            assert result.status == "not_found" and f"SAMPLE_ID {row['SAMPLE_ID']}" in result.error


def test_raw_shard_missing_a_column_is_named_by_the_clean_reader(tmp_path: Path):
    broken = shard_path(tmp_path, 3)
    write_shard(pa.table({"SAMPLE_ID": [1], "TEXT": ["a man"]}), broken)
    with pytest.raises(ValueError, match=r"shard-00003\.parquet lacks column\(s\) image, fetch_status, fetch_error"):
        read_raw_rows(broken)


def test_folder_reads_only_regular_files_inside_it(tmp_path: Path):
    """A named pipe (as `tar x` of an untrusted archive creates) must not hang the reader, and a
    symlink may not hand over a file from outside the folder (a secret, or another image)."""
    import os
    import threading

    folder, outside = tmp_path / "images", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (folder / "1.jpg").write_bytes(PORTRAIT.read_bytes())
    os.mkfifo(folder / "2.jpg")
    secret = outside / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (folder / "3.jpg").symlink_to(secret)
    (outside / "4.jpg").write_bytes(PORTRAIT.read_bytes())
    (folder / "4.jpg").symlink_to(outside / "4.jpg")
    (folder / "5.jpg").symlink_to(folder / "1.jpg")  # stays inside: an ordinary alias

    fetcher = FolderFetcher(folder, max_bytes=10_000_000)
    found: list = []
    reader = threading.Thread(target=lambda: found.extend(fetcher.fetch([FetchRequest(i) for i in range(1, 6)])))
    reader.daemon = True
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading the folder hung on the named pipe"
    statuses = {i: (r.status, r.error) for i, r in zip(range(1, 6), found)}
    assert statuses[1][0] == statuses[5][0] == "ok"
    assert statuses[2] == ("error", f"{folder / '2.jpg'}: not a regular file (named pipe)")
    for sample_id in (3, 4):
        status, error = statuses[sample_id]
        assert status == "error" and "symbolic link leaving the image folder" in error
        assert "root:" not in error
