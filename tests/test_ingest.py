"""Ingest: the metadata contract, hostile metadata, the raw schema, idempotence and crashes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fvlp_core.config import IngestConfig, Paths
from storage.raw import FETCH_STATUSES, MetadataError, open_metadata, read_metadata
from storage.shards import list_shards, read_dataset, read_manifest
from tests.test_fetch import add_member, png_bytes

LAION_EXTRAS = {"LICENSE": "?", "NSFW": "UNLIKELY", "original_width": 640}


def laion_table(ids, **columns) -> pa.Table:
    """A LAION-Face-shaped metadata table; keyword columns replace or add columns."""
    n = len(ids)
    data = {
        "SAMPLE_ID": pa.array(ids, pa.int64()),
        "URL": [f"https://example.com/{i}.jpg" for i in ids],
        "TEXT": [f"a photo of person {i}" for i in ids],
        "WIDTH": pa.array([64] * n, pa.int64()),
        "HEIGHT": pa.array([48] * n, pa.int64()),
        "similarity": [0.31] * n,
        **{name: [value] * n for name, value in LAION_EXTRAS.items()},
    }
    data.update(columns)
    return pa.table(data)


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


# ----------------------------------------------------------------------------- metadata


def test_metadata_is_normalised_and_extras_are_carried(tmp_path: Path):
    first = write(laion_table([1, 2], SAMPLE_ID=pa.array([1, 2], pa.int32())), tmp_path / "a.parquet")
    second = write(
        laion_table([3], WIDTH=pa.array([64.0]), HEIGHT=pa.array([48.0]), punsafe=[0.01]),
        tmp_path / "b.parquet",
    )
    table = read_metadata([first, second])
    assert table.schema.names == [
        "SAMPLE_ID",
        "URL",
        "TEXT",
        "WIDTH",
        "HEIGHT",
        "similarity",
        "LICENSE",
        "NSFW",
        "original_width",
        "punsafe",
        "metadata_issues",
        "input_file",
        "input_row",
    ]
    assert table.schema.field("SAMPLE_ID").type == pa.int64()
    assert table.schema.field("WIDTH").type == pa.int64()
    assert table.column("SAMPLE_ID").to_pylist() == [1, 2, 3]
    assert table.column("punsafe").to_pylist() == [None, None, 0.01]  # missing extra -> null
    assert table.column("input_file").to_pylist() == [str(first), str(first), str(second)]
    assert table.column("input_row").to_pylist() == [0, 1, 0]
    assert table.column("metadata_issues").to_pylist() == [[], [], []]


def test_missing_required_column_names_file_column_and_the_names_looked_for(tmp_path: Path):
    path = write(laion_table([1]).drop_columns(["TEXT"]), tmp_path / "part-7.parquet")
    with pytest.raises(
        MetadataError, match=r"part-7\.parquet: missing required column\(s\) TEXT \(looked for TEXT: TEXT or caption"
    ):
        open_metadata([path])


@pytest.mark.parametrize(
    "column, values, expected",
    [
        ("SAMPLE_ID", pa.array([b"1"]), "SAMPLE_ID has type binary, expected an integer"),
        ("URL", pa.array([7]), "URL has type int64, expected a string"),
        ("WIDTH", pa.array(["64"]), "WIDTH has type string, expected a number"),
        ("similarity", pa.array([True]), "similarity has type bool, expected a number"),
        ("TEXT", pa.array([1.5]), "TEXT has type double, expected a string or binary"),
    ],
)
def test_mistyped_column_names_file_and_column(tmp_path: Path, column, values, expected):
    path = write(laion_table([1], **{column: values}), tmp_path / "typed.parquet")
    with pytest.raises(MetadataError, match="typed.parquet: column " + expected):
        open_metadata([path])


def test_extra_column_type_conflict_between_files(tmp_path: Path):
    a = write(laion_table([1]), tmp_path / "a.parquet")
    b = write(laion_table([2], original_width=["640px"]), tmp_path / "b.parquet")
    with pytest.raises(
        MetadataError, match=r"b\.parquet: column original_width has type string, but .*a\.parquet has int64"
    ):
        open_metadata([a, b])


def test_reserved_and_unreadable_inputs(tmp_path: Path):
    clash = write(laion_table([1], fetch_status=["ok"]), tmp_path / "clash.parquet")
    with pytest.raises(MetadataError, match="clash.parquet: column fetch_status clashes"):
        open_metadata([clash])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(MetadataError, match="garbage.parquet: not a readable Parquet file"):
        open_metadata([garbage])
    with pytest.raises(MetadataError, match="absent.parquet: metadata file not found"):
        open_metadata([tmp_path / "absent.parquet"])
    twice = pa.Table.from_arrays(
        [*laion_table([1]).columns, pa.array(["a"])], names=[*laion_table([1]).column_names, "TEXT"]
    )
    write(twice, tmp_path / "twice.parquet")
    with pytest.raises(MetadataError, match=r"twice.parquet: column\(s\) TEXT appear more than once"):
        open_metadata([tmp_path / "twice.parquet"])


def test_null_or_fractional_sample_id_is_an_error_naming_rows(tmp_path: Path):
    nulls = write(laion_table([1, 2, 3], SAMPLE_ID=pa.array([1, None, 3], pa.int64())), tmp_path / "n.parquet")
    with pytest.raises(MetadataError, match=r"n\.parquet: column SAMPLE_ID is null in row\(s\) 1"):
        read_metadata([nulls])
    fractional = write(laion_table([1, 2], SAMPLE_ID=pa.array([1.0, 2.5])), tmp_path / "f.parquet")
    with pytest.raises(MetadataError, match=r"f\.parquet: column SAMPLE_ID is not a whole number in row\(s\) 1"):
        read_metadata([fractional])


def test_hostile_values_are_kept_and_recorded(tmp_path: Path):
    invalid_utf8 = pa.array([b"ok caption", b"caf\xe9 \xff", None, b"x", b"y"], pa.binary())
    path = write(
        laion_table(
            [1, 2, 3, 4, 5],
            WIDTH=pa.array([64.0, np.nan, -5.0, 12.5, None]),
            HEIGHT=pa.array([48, 0, 48, 48, 48], pa.int64()),
            similarity=pa.array([0.3, 0.3, np.nan, 0.3, 0.3]),
            TEXT=invalid_utf8,
        ),
        tmp_path / "hostile.parquet",
    )
    table = read_metadata([path])
    assert table.num_rows == 5
    assert table.column("WIDTH").to_pylist() == [64, None, -5, None, None]
    assert table.column("similarity").to_pylist() == [0.3, 0.3, None, 0.3, 0.3]
    assert table.column("TEXT").to_pylist() == ["ok caption", "caf\ufffd \ufffd", None, "x", "y"]
    assert table.column("metadata_issues").to_pylist() == [
        [],
        [
            "TEXT: not valid UTF-8 (undecodable bytes replaced with U+FFFD)",
            "WIDTH: missing or NaN",
            "HEIGHT: not positive (0)",
        ],
        ["WIDTH: not positive (-5)", "similarity: NaN"],
        ["WIDTH: not a whole number (12.5)"],
        ["WIDTH: missing or NaN"],
    ]


def test_invalid_utf8_inside_a_string_column_is_repaired(tmp_path: Path):
    # Writers sometimes store raw bytes under a string type; pyarrow reads them back unchecked.
    text = pa.array([b"fine", b"\xc3\x28 broken"], pa.binary()).view(pa.string())
    path = write(laion_table([1, 2], TEXT=text), tmp_path / "bytes-as-string.parquet")
    table = read_metadata([path])
    assert table.column("TEXT").to_pylist() == ["fine", "\ufffd( broken"]
    assert table.column("metadata_issues").to_pylist()[1] == [
        "TEXT: not valid UTF-8 (undecodable bytes replaced with U+FFFD)"
    ]


def test_duplicate_ids_point_at_the_first_occurrence(tmp_path: Path):
    a = write(laion_table([5, 6, 5]), tmp_path / "a.parquet")
    b = write(laion_table([7, 6, 5]), tmp_path / "b.parquet")
    duplicates = open_metadata([a, b]).duplicate_rows()
    assert duplicates == {2: (str(a), 0), 4: (str(a), 1), 5: (str(a), 0)}


# ----------------------------------------------------------------------------- flows


def image_folder(folder: Path, ids) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"{i}.png").write_bytes(png_bytes(8 + i % 5))
    return folder


def folder_config(tmp_path: Path, metadata: list[Path], images: Path, shard_size: int = 4) -> IngestConfig:
    return IngestConfig(
        paths=Paths(data_root=tmp_path / "data"),
        source="folder",
        metadata=metadata,
        images=images,
        shard_size=shard_size,
    )


def test_raw_schema_contract_and_accounting(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow

    ids = list(range(1, 11))
    a = write(laion_table(ids[:6]), tmp_path / "a.parquet")
    b = write(laion_table(ids[6:] + [3], WIDTH=pa.array([64, -1, 64, 64, 64], pa.int64())), tmp_path / "b.parquet")
    images = image_folder(tmp_path / "images", [i for i in ids if i != 4])
    (images / "9.png").write_bytes(b"GIF89a but not really")
    config = folder_config(tmp_path, [a, b], images)

    result = ingest_flow(config)
    assert result.pop("run_id").startswith("ingest-")
    assert result == {
        "raw_dir": str(config.paths.raw_dir),
        "rows": 11,
        "shards": 3,
        "written_shards": 3,
        "status_counts": {"duplicate_id": 1, "not_found": 1, "not_image": 1, "ok": 8},
    }
    table = read_dataset(config.paths.raw_dir)
    assert table.schema.names == [
        "SAMPLE_ID",
        "URL",
        "TEXT",
        "WIDTH",
        "HEIGHT",
        "similarity",
        *LAION_EXTRAS,
        "image",
        "fetch_status",
        "fetch_error",
        "metadata_issues",
        "input_file",
        "input_row",
    ]
    types = {f.name: f.type for f in table.schema}
    assert types["image"] == pa.binary() and types["input_row"] == pa.int64()
    assert types["metadata_issues"] == pa.list_(pa.string())
    assert set(table.column("fetch_status").to_pylist()) <= set(FETCH_STATUSES)
    # Every input row exactly once, in input order.
    assert list(zip(table.column("input_file").to_pylist(), table.column("input_row").to_pylist())) == [
        (str(a), r) for r in range(6)
    ] + [(str(b), r) for r in range(5)]
    rows = table.to_pylist()
    assert rows[3]["fetch_status"] == "not_found" and rows[3]["image"] is None
    assert rows[8]["fetch_status"] == "not_image"
    assert rows[10]["fetch_status"] == "duplicate_id" and f"{a} row 2" in rows[10]["fetch_error"]
    assert rows[7]["metadata_issues"] == ["WIDTH: not positive (-1)"] and rows[7]["fetch_status"] == "ok"
    assert rows[0]["image"] == png_bytes(9) and rows[0]["fetch_error"] is None
    # Encoded images are stored as they came (zstd would shrink them by ~2% at twice the write
    # time); every other column is compressed.
    footer = pq.ParquetFile(list_shards(config.paths.raw_dir)[0]).metadata.row_group(0)
    compression = {footer.column(i).path_in_schema: footer.column(i).compression for i in range(footer.num_columns)}
    assert compression.pop("image") == "UNCOMPRESSED", compression
    assert set(compression.values()) == {"ZSTD"}, compression

    manifest = read_manifest(config.paths.raw_dir)
    assert manifest["rows"] == 11 and manifest["complete"] is True
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 3]
    assert manifest["status_counts"] == result["status_counts"]

    # The next stage reads the same folder with Dask.
    frame = dd.read_parquet(config.paths.raw_dir)
    assert len(frame) == 11 and frame.npartitions == 3

    # A second run writes nothing new: no shard, not even the manifest.
    files = list_shards(config.paths.raw_dir) + [config.paths.raw_dir / "manifest.json"]
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert ingest_flow(config)["written_shards"] == 0
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert sorted(p.name for p in config.paths.raw_dir.iterdir()) == sorted(p.name for p in files)


def test_crash_mid_shard_then_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
):
    from flows.ingest import ingest_flow

    ids = list(range(1, 15))
    meta = write(laion_table(ids), tmp_path / "m.parquet")
    config = folder_config(tmp_path, [meta], image_folder(tmp_path / "images", ids))
    raw_dir = config.paths.raw_dir

    # Die in the middle of writing the third shard: its bytes reach the temp file, the
    # rename never happens. (The first two shards are complete by then.)
    _ingest_killed_at_write(config, monkeypatch, 3, leave_half_shard=True)

    assert [p.name for p in list_shards(raw_dir)] == ["shard-00000.parquet", "shard-00001.parquet"]
    leftovers = [p.name for p in raw_dir.iterdir() if p.name.startswith(".shard-00002")]
    assert leftovers, "the crash should leave a temp file behind"
    assert len(dd.read_parquet(raw_dir)) == 8  # readers never see the half shard
    # A shard truncated under its final name (say, copied by hand) is not "complete" either.
    first = raw_dir / "shard-00001.parquet"
    pq.write_table(pq.read_table(first).slice(0, 2), first)

    result = ingest_flow(config)
    assert result["written_shards"] == 3  # shards 1 (truncated), 2 and 3
    table = read_dataset(raw_dir)
    assert table.column("SAMPLE_ID").to_pylist() == ids
    assert table.column("fetch_status").to_pylist() == ["ok"] * len(ids)
    assert len(dd.read_parquet(raw_dir)) == len(ids)


def test_a_failing_shard_lets_the_shard_beside_it_finish_before_the_fetcher_closes(
    tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
):
    """Shards run two at a time: when one fails, the run fails, and the other, still reading
    from the shared fetcher, is written whole before the fetcher is closed under it."""
    import threading
    import time

    import fvlp_core.fetch
    import tasks.ingest
    from flows.ingest import ingest_flow

    ids = list(range(1, 9))
    meta = write(laion_table(ids), tmp_path / "m.parquet")
    config = folder_config(tmp_path, [meta], image_folder(tmp_path / "images", ids))
    assert config.parallel_shards == 2
    real_fetch_shard, events, both_started = tasks.ingest.fetch_shard, [], threading.Barrier(2, timeout=30)

    def fetch_shard(plan, spec, fetcher):
        both_started.wait()
        if spec.index == 0:
            raise ValueError("simulated bad shard")
        time.sleep(0.5)  # still fetching when shard 0 fails
        counts = real_fetch_shard(plan, spec, fetcher)
        events.append("shard 1 written")
        return counts

    real_close = fvlp_core.fetch.FolderFetcher.close
    monkeypatch.setattr(tasks.ingest, "fetch_shard", fetch_shard)
    monkeypatch.setattr(
        fvlp_core.fetch.FolderFetcher, "close", lambda self: (events.append("fetcher closed"), real_close(self))
    )
    with pytest.raises(ValueError, match="simulated bad shard"):
        ingest_flow(config)
    assert events == ["shard 1 written", "fetcher closed"]
    assert [p.name for p in list_shards(config.paths.raw_dir)] == ["shard-00001.parquet"]


def test_rerun_with_a_different_plan_is_refused(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow

    ids = list(range(1, 6))
    meta = write(laion_table(ids), tmp_path / "m.parquet")
    images = image_folder(tmp_path / "images", ids)
    ingest_flow(folder_config(tmp_path, [meta], images, shard_size=2))
    with pytest.raises(RuntimeError, match="already holds shards from a different ingest"):
        ingest_flow(folder_config(tmp_path, [meta], images, shard_size=3))


def _ingest_killed_at_write(config: IngestConfig, monkeypatch, kill_at: int, leave_half_shard: bool = False) -> None:
    """Run the ingest flow, one shard at a time so the writes come in plan order, until its
    ``kill_at``-th Parquet write, which dies (after writing half a shard's bytes to its temp
    file, with ``leave_half_shard``)."""
    import storage.shards
    from flows.ingest import ingest_flow

    real_write_table = pq.write_table
    calls = {"n": 0}

    def dying_write_table(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            if leave_half_shard:
                Path(where).write_bytes(b"PAR1 half a shard")
            raise KeyboardInterrupt("simulated crash")
        return real_write_table(table, where, **kwargs)

    monkeypatch.setattr(storage.shards.pq, "write_table", dying_write_table)
    with pytest.raises(BaseException, match="simulated crash"):
        ingest_flow(config.model_copy(update={"parallel_shards": 1}))
    monkeypatch.setattr(storage.shards.pq, "write_table", real_write_table)


def _interrupted_ingest(tmp_path: Path, ids: list[int], images: Path, meta: Path, monkeypatch) -> IngestConfig:
    """An ingest killed after its first shard (shard size 2)."""
    config = folder_config(tmp_path, [meta], images, shard_size=2)
    _ingest_killed_at_write(config, monkeypatch, 2)
    assert len(list_shards(config.paths.raw_dir)) == 1
    return config


def test_metadata_replaced_by_a_file_of_the_same_size_is_not_mixed_on_resume(
    tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
):
    from flows.ingest import ingest_flow

    ids = list(range(1, 7))
    meta = tmp_path / "m.parquet"
    pq.write_table(laion_table(ids), meta, compression="none")
    config = _interrupted_ingest(tmp_path, ids, image_folder(tmp_path / "images", ids), meta, monkeypatch)
    size = meta.stat().st_size
    # Same ids, same byte count, other captions (reversed order): a different input.
    pq.write_table(laion_table(ids, TEXT=[f"a photo of person {i}" for i in reversed(ids)]), meta, compression="none")
    assert meta.stat().st_size == size
    with pytest.raises(RuntimeError, match="already holds shards from a different ingest"):
        ingest_flow(config)


def test_images_added_to_the_folder_after_an_interruption_are_not_mixed_on_resume(
    tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
):
    from flows.ingest import ingest_flow

    ids = list(range(1, 7))
    meta = write(laion_table(ids), tmp_path / "m.parquet")
    images = image_folder(tmp_path / "images", ids[:4])  # 5 and 6 not there yet
    config = _interrupted_ingest(tmp_path, ids, images, meta, monkeypatch)
    image_folder(images, ids[4:])
    with pytest.raises(RuntimeError, match="already holds shards from a different ingest"):
        ingest_flow(config)


def test_tar_source_with_path_traversal(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow

    meta = write(laion_table([1, 2, 3]), tmp_path / "m.parquet")
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as archive:
        add_member(archive, "1.png", png_bytes())
        add_member(archive, "../../2.png", png_bytes())
    config = IngestConfig(
        paths=Paths(data_root=tmp_path / "data"), source="tar", metadata=[meta], images=tar_path, max_failed_fraction=1
    )
    ingest_flow(config)
    table = read_dataset(config.paths.raw_dir)
    assert table.column("fetch_status").to_pylist() == ["ok", "refused", "not_found"]
    assert "path traversal" in table.column("fetch_error").to_pylist()[1]
    assert not (tmp_path.parent / "2.png").exists()


def test_bad_metadata_fails_before_any_shard(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow

    meta = write(laion_table([1, 2]).drop_columns(["URL"]), tmp_path / "no-url.parquet")
    config = folder_config(tmp_path, [meta], image_folder(tmp_path / "images", [1, 2]))
    with pytest.raises(MetadataError, match=r"no-url\.parquet: missing required column\(s\) URL"):
        ingest_flow(config)
    assert list_shards(config.paths.raw_dir) == []


def test_a_corrupt_page_in_a_later_row_group_stops_planning_naming_file_and_row_group(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow

    meta = tmp_path / "m.parquet"
    pq.write_table(laion_table(list(range(1, 7))), meta, row_group_size=2, compression="none")
    # Overwrite the TEXT column's first page header in row group 2 (rows 4-5); the footer stays whole.
    chunk = pq.ParquetFile(meta).metadata.row_group(2).column(laion_table([1]).column_names.index("TEXT"))
    data = bytearray(meta.read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 16] = b"\xff" * 16
    meta.write_bytes(bytes(data))
    config = folder_config(tmp_path, [meta], image_folder(tmp_path / "images", list(range(1, 7))), shard_size=2)
    with pytest.raises(MetadataError, match=r"m\.parquet: row group 2 \(rows 4-5\) cannot be read"):
        ingest_flow(config)
    assert list_shards(config.paths.raw_dir) == []  # planning stopped it, not shard 2's write


def test_cli_help_documents_every_ingest_flag():
    from flows.cli import build_parser

    parser = build_parser()
    ingest = parser._subparsers._group_actions[0].choices["ingest"]
    help_text = ingest.format_help()
    for flag in (
        "--source",
        "--metadata",
        "--images",
        "--rows",
        "--shard-size",
        "--max-image-bytes",
        "--http-concurrency",
        "--http-connect-timeout-s",
        "--http-read-timeout-s",
        "--http-total-timeout-s",
        "--http-retries",
        "--http-backoff-s",
        "--http-max-redirects",
        "--http-allow-private-addresses",
    ):
        assert flag in help_text, flag
    assert json.dumps(IngestConfig().model_dump(mode="json"))  # the config is JSON-serialisable


def test_embedded_corpus_is_generated_once_and_ingested(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow
    from fvlp_core.corpus import EmbeddedCorpus
    from storage.source import read_ground_truth

    config = IngestConfig(
        paths=Paths(data_root=tmp_path), rows=30, identities=10, seed=3, shard_size=8, render_workers=1
    )
    result = ingest_flow(config)
    assert (result["rows"], result["shards"], result["written_shards"]) == (30, 4, 4)
    table = read_dataset(config.paths.raw_dir)
    corpus = EmbeddedCorpus(30, 10, 3)
    assert table.column("SAMPLE_ID").to_pylist() == corpus.sample_ids()
    truth = read_ground_truth(config.paths.source_dir)
    noise = dict(zip(truth["SAMPLE_ID"], truth["noise"]))
    for row in table.select(["SAMPLE_ID", "image", "fetch_status"]).to_pylist():
        if row["fetch_status"] == "ok":
            assert row["image"] == corpus.image_bytes(row["SAMPLE_ID"])
        else:  # only deliberately broken images fail to fetch
            assert row["fetch_status"] == "not_image"
            assert {"corrupt_image", "truncated_image"} & set(noise[row["SAMPLE_ID"]])

    source_files = sorted(config.paths.source_dir.iterdir())
    mtimes = [p.stat().st_mtime_ns for p in source_files]
    assert ingest_flow(config)["written_shards"] == 0
    assert [p.stat().st_mtime_ns for p in source_files] == mtimes  # not regenerated


def test_embedded_render_workers_give_the_same_bytes():
    from fvlp_core.corpus import EmbeddedCorpus
    from fvlp_core.fetch import EmbeddedFetcher, FetchRequest

    corpus = EmbeddedCorpus(12, 4, 1)
    requests = [FetchRequest(i) for i in corpus.sample_ids()] + [FetchRequest(-5)]
    serial = EmbeddedFetcher(corpus, 10_000_000).fetch(requests)
    pooled = EmbeddedFetcher(corpus, 10_000_000, workers=2)
    try:
        assert pooled.fetch(requests) == serial
    finally:
        pooled.close()
    assert serial[-1].status == "not_found"


def test_embedded_images_for_given_metadata(tmp_path: Path, prefect_harness):
    from flows.ingest import ingest_flow
    from fvlp_core.corpus import EmbeddedCorpus

    corpus = EmbeddedCorpus(10, 4, 2)
    known = corpus.sample_ids()[:3]
    meta = write(laion_table(known + [10**12]), tmp_path / "mine.parquet")
    config = IngestConfig(
        paths=Paths(data_root=tmp_path / "data"), metadata=[meta], rows=10, identities=4, seed=2, render_workers=1
    )
    ingest_flow(config)
    table = read_dataset(config.paths.raw_dir)
    assert table.column("fetch_status").to_pylist()[-1] == "not_found"
    assert table.column("image").to_pylist()[:3] == [
        corpus.image_bytes(i) if s == "ok" else None for i, s in zip(known, table.column("fetch_status").to_pylist())
    ]
    assert not config.paths.source_dir.exists()  # given metadata: no corpus files written
