"""The clean flow end to end on real photos and hostile bytes: every row decided, reruns incremental."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fvlp_core.codec import decode_image
from fvlp_core.config import CleanConfig, Paths
from storage.clean import read_decisions, read_faces
from tests.clean_fixtures import (
    DISTINCT_CAPTIONS,
    GROUP_PHOTO,
    PORTRAIT,
    bad_images,
    group_faces,
    jpeg,
    portrait_variants,
    write_raw_shards,
)

GOOD_TEXT = "Portrait of a smiling man with short hair"
DISTINCT_TEXTS = DISTINCT_CAPTIONS[:12]  # none of them is GOOD_TEXT


def _rows() -> list[list[dict]]:
    """Two raw shards: real photos, hostile bytes, web image modes, and one row per caption rule.

    Every usable image is a different photo (faces cut from the group photo, some mirrored),
    so only the rows meant to be duplicates are.
    """
    faces, mirrored = group_faces(), group_faces(mirrored=True)
    first = [
        {"SAMPLE_ID": 1, "TEXT": "A group of young women smiling at a party", "image": GROUP_PHOTO.read_bytes()},
        {"SAMPLE_ID": 2, "TEXT": "Tom Hanks at the premiere of his new film", "image": PORTRAIT.read_bytes()},
        {"SAMPLE_ID": 3, "TEXT": GOOD_TEXT, "image": None, "fetch_status": "not_found", "fetch_error": "HTTP 404"},
    ]
    first += [
        {"SAMPLE_ID": 10 + i, "TEXT": DISTINCT_TEXTS[i], "image": data} for i, data in enumerate(bad_images().values())
    ]
    second = [
        {"SAMPLE_ID": 100 + i, "TEXT": DISTINCT_TEXTS[-1 - i], "image": data}
        for i, data in enumerate(portrait_variants(faces[:5]).values())
    ]
    second += [
        {"SAMPLE_ID": 200, "TEXT": "Porträt eines älteren Mannes im Studio", "image": jpeg(faces[5])},
        {"SAMPLE_ID": 201, "TEXT": "Click here to buy now www.best-deals.biz", "image": jpeg(mirrored[0])},
        {"SAMPLE_ID": 202, "TEXT": None, "image": jpeg(mirrored[1])},
        {"SAMPLE_ID": 203, "TEXT": "x" * 100_000, "image": jpeg(mirrored[2])},
        {"SAMPLE_ID": 204, "TEXT": "Tom Hanks at the premiere of his new film", "image": jpeg(mirrored[3])},
        {"SAMPLE_ID": 205, "TEXT": "Caf\ufffd au lait with a smiling man", "image": jpeg(mirrored[4])},
        {"SAMPLE_ID": 206, "TEXT": "The same portrait posted again by a fan site", "image": PORTRAIT.read_bytes()},
    ]
    return [first, second]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, prefect_harness):
    """One clean run shared by the tests of this module (the rerun test runs last: it changes settings)."""
    from flows.clean import clean_flow

    root = tmp_path_factory.mktemp("clean")
    rows = _rows()
    write_raw_shards(root / "raw", rows)
    config = CleanConfig(paths=Paths(data_root=root), workers=1)
    return config, clean_flow(config), sum(len(r) for r in rows)


def _decisions(config: CleanConfig) -> pd.DataFrame:
    return read_decisions(config.paths.clean_dir).to_pandas().set_index("SAMPLE_ID")


@pytest.mark.slow
def test_every_row_is_decided_with_the_right_rule(cleaned):
    config, result, total = cleaned
    decisions = _decisions(config)
    assert result["input_rows"] == total == len(decisions)
    assert result["kept"] + result["rejected"] == total
    for shard, rows in zip(sorted(decisions["raw_shard"].unique()), _rows()):
        assert (decisions["raw_shard"] == shard).sum() == len(rows)

    reasons = decisions["reasons"].map(list)
    assert "multiple_faces" in reasons[1]
    assert decisions.loc[2, "kept"], reasons[2]
    assert reasons[3] == ["undecodable_image"]
    expected = {
        "zero_bytes": "undecodable_image",
        "missing": "undecodable_image",
        "not_an_image": "undecodable_image",
        "truncated_png": "undecodable_image",
        "corrupt_jpeg": "undecodable_image",
        "png_bomb": "image_too_large",
        "jpeg_bomb": "image_too_large",
    }
    for i, rule in enumerate(expected.values()):
        assert reasons[10 + i] == [rule]
    for i in range(len(portrait_variants())):
        assert decisions.loc[100 + i, "kept"], reasons[100 + i]
    assert "not_english" in reasons[200]
    assert "caption_spam" in reasons[201]
    assert "caption_empty" in reasons[202]
    assert "caption_too_long" in reasons[203]
    assert reasons[204] == ["duplicate_caption"]  # same caption as sample 2, which came first
    assert "caption_not_utf8" in reasons[205]
    assert reasons[206] == ["duplicate_image"]  # the portrait of sample 2, re-posted

    measured = json.loads(decisions.loc[1, "measurements"])
    assert measured["multiple_faces"] > 0.3 and measured["no_face"] >= 4


@pytest.mark.slow
def test_kept_faces_have_crops_and_attribute_captions(cleaned):
    config, result, _ = cleaned
    faces = read_faces(config.paths.clean_dir).to_pandas()
    assert len(faces) == result["kept"]
    crop = decode_image(faces.iloc[0]["crop"])
    assert crop.shape == (config.crop_size, config.crop_size, 3)
    assert all(faces["caption"].str.len() > 10)
    assert (faces["identity_id"] == -1).all()  # no ground truth in this corpus


@pytest.mark.slow
def test_rerun_with_new_threshold_redecides_without_detecting(cleaned):
    from flows.clean import clean_flow

    config, first, _ = cleaned
    measurement_files = sorted((config.paths.clean_dir / "measurements").glob("shard-*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in measurement_files]

    stricter = config.model_copy(update={"min_caption_words": 9})
    second = clean_flow(stricter)
    assert second["remeasured_rows"] == 0
    assert [p.stat().st_mtime_ns for p in measurement_files] == stamps
    assert second["changed_rules"] == ["caption_too_short"]
    assert second["rejected"] > first["rejected"]
    assert second["kept"] + second["rejected"] == first["input_rows"]

    other_detector = stricter.model_copy(update={"detector": "yuface"})
    third = clean_flow(other_detector)
    assert third["remeasured_rows"] == first["input_rows"]
    changed = set(third["changed_rules"])
    assert "no_face" in changed and "caption_too_short" not in changed and "not_english" not in changed


@pytest.mark.slow
def test_flow_runs_on_an_existing_cluster_given_by_address(tmp_path, prefect_harness):
    from distributed import LocalCluster

    from flows.clean import clean_flow

    rows = [
        {"SAMPLE_ID": 1, "TEXT": "A group of young women smiling at a party", "image": GROUP_PHOTO.read_bytes()},
        {"SAMPLE_ID": 2, "TEXT": "Tom Hanks at the premiere of his new film", "image": PORTRAIT.read_bytes()},
        {"SAMPLE_ID": 3, "TEXT": GOOD_TEXT, "image": b""},
    ]
    write_raw_shards(tmp_path / "raw", [rows[:2], rows[2:]])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        config = CleanConfig(paths=Paths(data_root=tmp_path), dask_address=cluster.scheduler_address)
        result = clean_flow(config)
        # The shards were measured by this cluster, not by a LocalCluster of the flow's own.
        assert "measure_shard" in cluster.scheduler.task_prefixes
    assert (result["input_rows"], result["kept"], result["rejected"]) == (3, 1, 2)


@pytest.mark.slow
def test_a_re_clean_killed_half_way_is_refused_until_a_run_finishes(cleaned, monkeypatch):
    """Killed after its first new faces shard: decisions and faces of two runs sit side by side
    with the old manifest; every reader refuses the mix, and the next clean run repairs it."""
    import tasks.clean
    from flows.clean import clean_flow
    from storage.clean import face_shards
    from storage.shards import DatasetError

    config, _, input_rows = cleaned
    stricter = config.model_copy(update={"min_caption_words": 4})
    real_write_faces = tasks.clean.write_faces
    calls = {"n": 0}

    def dying_write_faces(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed after the first new faces shard")
        return real_write_faces(*args, **kwargs)

    monkeypatch.setattr(tasks.clean, "write_faces", dying_write_faces)
    with pytest.raises(BaseException, match="killed after the first new faces shard"):
        clean_flow(stricter)
    monkeypatch.setattr(tasks.clean, "write_faces", real_write_faces)

    for read in (lambda: read_decisions(config.paths.clean_dir), lambda: face_shards(config.paths.clean_dir)):
        with pytest.raises(DatasetError, match="stopped half-way and the output is mixed"):
            read()

    done = clean_flow(stricter)
    decisions = read_decisions(config.paths.clean_dir).to_pandas()
    assert len(decisions) == input_rows and decisions["rule_version"].nunique() == 1
    assert int(decisions["kept"].sum()) == done["kept"] == len(read_faces(config.paths.clean_dir))
