"""LAION-Face as people have it: img2dataset's own sample files, CSV / JSON lines metadata,
column mapping, and img2dataset's webdataset output ingested end to end into clean."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as skimage_data

from fvlp_core.config import CleanConfig, IngestConfig, Paths
from storage.clean import read_decisions, read_faces
from storage.raw import MetadataError, open_metadata, read_metadata, read_raw_manifest
from storage.shards import read_dataset
from tests.clean_fixtures import PORTRAIT, group_faces, jpeg
from tests.img2dataset_fixtures import SAMPLE_FILES, download_like_img2dataset

TEST_1000 = SAMPLE_FILES / "test_1000.parquet"
# Rows of img2dataset's test_1000.parquet whose captions are about a person.
PERSON_ROWS = (214, 481, 529, 684, 798, 543, 715, 27, 148, 216, 652, 805)


def test_img2dataset_sample_parquets_are_read_as_they_are(tmp_path):
    metadata = open_metadata([TEST_1000])
    assert metadata.total_rows == 1000
    assert metadata.columns == {
        "SAMPLE_ID": None,
        "URL": "URL",
        "TEXT": "TEXT",
        "WIDTH": None,
        "HEIGHT": None,
        "similarity": None,
    }
    table = metadata.read_rows(0, 1000)
    assert len(set(table.column("SAMPLE_ID").to_pylist())) == 1000  # derived, one per distinct URL and caption
    again = open_metadata([TEST_1000]).read_rows(0, 1000).column("SAMPLE_ID")
    assert again == table.column("SAMPLE_ID") and pc.min(again).as_py() >= 0  # the same ids every time, 63 bits
    assert table.column("WIDTH").null_count == 1000  # measured from the image at fetch time
    assert table.column("metadata_issues").to_pylist() == [[]] * 1000  # an absent column is no row's problem
    assert table.column("__index_level_0__") == pq.read_table(TEST_1000).column("__index_level_0__")  # an extra
    assert metadata.duplicate_rows() == {}

    lowercase = open_metadata([SAMPLE_FILES / "sample_image.parquet"])
    assert (lowercase.columns["URL"], lowercase.columns["TEXT"]) == ("url", "txt")
    # Its two rows are the same URL and caption: the same derived id, so the second is a duplicate.
    assert lowercase.duplicate_rows() == {1: (str(SAMPLE_FILES / "sample_image.parquet"), 0)}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".csv.gz"])
def test_text_metadata_reads_like_the_parquet_it_came_from(tmp_path, suffix):
    rows = pq.read_table(TEST_1000).slice(0, 30).drop_columns(["__index_level_0__"])
    rows = rows.append_column("SAMPLE_ID", pa.array(range(30), pa.int64()))
    rows = rows.set_column(1, "TEXT", pa.array(["1234"] + rows.column("TEXT").to_pylist()[1:]))  # digits stay text
    path = tmp_path / f"meta{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows.to_pylist()))
    else:
        options = pcsv.WriteOptions(delimiter="\t" if suffix == ".tsv" else ",")
        with pa.CompressedOutputStream(str(path), "gzip") if suffix.endswith(".gz") else open(path, "wb") as out:
            pcsv.write_csv(rows, out, options)
    read = read_metadata([path], staging_dir=tmp_path / "staged")
    for column in ("SAMPLE_ID", "URL", "TEXT"):
        assert read.column(column).to_pylist() == rows.column(column).to_pylist()
    assert read.column("input_file").to_pylist() == [str(path)] * 30  # rows name the file given, not its copy


def test_unreadable_text_metadata_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("URL,TEXT\nhttp://a/1.jpg,a man\nhttp://a/2.jpg,x,y,z\n")
    with pytest.raises(MetadataError, match=r"broken\.csv: not readable as CSV") as caught:
        open_metadata([path], staging_dir=tmp_path / "staged")
    assert "\n" not in str(caught.value)


def test_column_flags_name_other_columns_and_a_wrong_flag_names_the_file(tmp_path):
    table = pa.table({"id": [7, 8], "link": ["http://a/1.jpg", "http://a/2.jpg"], "alt": ["a man", "a woman"]})
    path = tmp_path / "custom.parquet"
    pq.write_table(table, path)
    with pytest.raises(MetadataError, match=r"custom\.parquet: missing required column\(s\) URL, TEXT"):
        open_metadata([path])
    read = read_metadata([path], {"SAMPLE_ID": "id", "URL": "link", "TEXT": "alt"})
    assert read.column("SAMPLE_ID").to_pylist() == [7, 8] and read.column("TEXT").to_pylist() == ["a man", "a woman"]
    assert "link" not in read.column_names  # mapped columns are not carried twice
    with pytest.raises(MetadataError, match=r"custom\.parquet: no column 'caption' \(named for TEXT"):
        open_metadata([path], {"URL": "link", "TEXT": "caption"})


def _person_rows() -> list[dict]:
    table = pq.read_table(TEST_1000).to_pylist()
    return [table[i] for i in PERSON_ROWS]


def _photos() -> dict[int, bytes]:
    """Eight real photos for the first eight rows (the other four fail to download)."""
    astronaut = Image.fromarray(skimage_data.astronaut()).crop((120, 0, 320, 200))
    photos = [jpeg(face) for face in group_faces()] + [PORTRAIT.read_bytes(), jpeg(astronaut)]
    return dict(enumerate(photos))


@pytest.mark.slow
def test_img2dataset_webdataset_output_is_ingested_and_cleaned_with_every_row_accounted(tmp_path, prefect_harness):
    """img2dataset's output as it lands on disk: its parquet is the metadata (every row, failed
    downloads included), its tars the images keyed by img2dataset's key; then clean."""
    from flows.clean import clean_flow
    from flows.ingest import ingest_flow

    rows = _person_rows()
    out = download_like_img2dataset(rows, _photos(), tmp_path / "laion_face_data", shard_size=5)
    paths = Paths(data_root=tmp_path / "data")
    # The folder, as an operator would type it: its parquet files are the metadata, its tars the images.
    result = ingest_flow(IngestConfig(paths=paths, source="tar", metadata=[out], images=[out], shard_size=4))
    assert result["status_counts"] == {"ok": 8, "not_found": 4}
    raw = read_dataset(paths.raw_dir)
    assert raw.column("TEXT").to_pylist() == [r["TEXT"] for r in rows]
    assert raw.column("SAMPLE_ID").to_pylist() == [int(f"{i // 5:05d}{i % 5:04d}") for i in range(12)]
    assert raw.column("status").to_pylist() == ["success"] * 8 + ["failed_to_download"] * 4  # img2dataset's own
    assert raw.column("WIDTH").to_pylist()[6] == Image.open(PORTRAIT).size[0]  # original_width
    assert read_raw_manifest(paths.raw_dir)["columns"] == {
        "SAMPLE_ID": "key",
        "URL": "url",
        "TEXT": "caption",
        "WIDTH": "original_width",
        "HEIGHT": "original_height",
        "similarity": "null",
    }

    summary = clean_flow(CleanConfig(paths=paths, workers=1))
    decisions = read_decisions(paths.clean_dir).to_pandas()
    assert len(decisions) == summary["input_rows"] == 12 and summary["kept"] + summary["rejected"] == 12
    faces = read_faces(paths.clean_dir, ["SAMPLE_ID", "caption", "text", "template_caption"]).to_pylist()
    assert faces, "at least one real photo with a person caption is kept"
    for face in faces:  # no attributes known here: the LAION caption is the caption
        assert face["template_caption"] is None and face["caption"] == face["text"]
        assert face["text"] in {r["TEXT"] for r in rows}
    assert summary["caption_sources"] == {"template": 0, "original": len(faces)}


@pytest.mark.slow
def test_laion_face_metadata_with_img2dataset_tars_keyed_by_the_saved_sample_id(tmp_path, prefect_harness):
    """FaRL's download script saves SAMPLE_ID into each sample's .json; member names are
    img2dataset's keys. A glob names the tars."""
    from flows.ingest import ingest_flow

    rows = [{**row, "SAMPLE_ID": 900_000 + i, "similarity": 0.31} for i, row in enumerate(_person_rows())]
    meta = tmp_path / "laion_face_meta" / "part-00000.parquet"
    meta.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), meta)
    out = download_like_img2dataset(
        rows, _photos(), tmp_path / "data_out", shard_size=5, save_additional_columns=("SAMPLE_ID", "similarity")
    )
    paths = Paths(data_root=tmp_path / "data")
    config = IngestConfig(paths=paths, source="tar", metadata=[meta.parent], images=[out / "*.tar"])
    assert ingest_flow(config)["status_counts"] == {"ok": 8, "not_found": 4}
    raw = read_dataset(paths.raw_dir)
    statuses = dict(zip(raw.column("SAMPLE_ID").to_pylist(), raw.column("fetch_status").to_pylist()))
    assert [statuses[900_000 + i] for i in range(12)] == ["ok"] * 8 + ["not_found"] * 4
    # No WIDTH/HEIGHT in LAION-Face's metadata here: measured from each image's header.
    sizes = list(zip(raw.column("WIDTH").to_pylist(), raw.column("HEIGHT").to_pylist()))
    assert sizes[6] == Image.open(PORTRAIT).size and sizes[11] == (None, None)


def test_a_run_where_most_rows_got_no_image_ends_failed_with_the_counts(tmp_path, prefect_harness):
    from flows.ingest import ingest_flow
    from tasks.ingest import TooManyFailures

    rows = _person_rows()
    out = download_like_img2dataset(rows, {0: _photos()[0]}, tmp_path / "out", shard_size=12)
    paths = Paths(data_root=tmp_path / "data")
    config = IngestConfig(paths=paths, source="tar", metadata=[out], images=[out])
    with pytest.raises(TooManyFailures, match=r"11 of 12 rows \(92%\) got no image.*\(not_found 11, ok 1\)"):
        ingest_flow(config)
    assert len(read_dataset(paths.raw_dir)) == 12  # the shards stay: every row is accounted for
    relaxed = config.model_copy(update={"max_failed_fraction": 1.0})
    assert ingest_flow(relaxed)["status_counts"] == {"not_found": 11, "ok": 1}


def test_tars_whose_sidecars_lack_the_id_say_so_per_row(tmp_path, prefect_harness):
    from flows.ingest import ingest_flow

    rows = [{**row, "SAMPLE_ID": 900_000 + i} for i, row in enumerate(_person_rows()[:2])]
    meta = tmp_path / "meta.parquet"
    pq.write_table(pa.Table.from_pylist(rows), meta)
    out = download_like_img2dataset(rows, _photos(), tmp_path / "out", shard_size=5)  # SAMPLE_ID not saved
    paths = Paths(data_root=tmp_path / "data")
    config = IngestConfig(paths=paths, source="tar", metadata=[meta], images=[out], max_failed_fraction=1.0)
    ingest_flow(config)
    errors = read_dataset(paths.raw_dir).column("fetch_error").to_pylist()
    assert all("2 sidecar .json file(s) have no 'SAMPLE_ID' field; --id-col names it" in e for e in errors)


def test_tar_and_folder_sources_need_an_id_column(tmp_path, prefect_harness):
    from flows.ingest import ingest_flow

    out = download_like_img2dataset(_person_rows()[:2], _photos(), tmp_path / "out", shard_size=5)
    config = IngestConfig(paths=Paths(data_root=tmp_path / "data"), source="tar", metadata=[TEST_1000], images=[out])
    with pytest.raises(MetadataError, match=r"test_1000\.parquet: no id column .* name it with --id-col"):
        ingest_flow(config)
