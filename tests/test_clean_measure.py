"""Measuring one raw shard (what a Dask worker runs): reuse, partial recompute, agreement scores."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fvlp_core.config import CleanConfig, Paths
from storage.clean import read_measurements, stored_versions
from tasks import clean_worker as clean_tasks
from tests.clean_fixtures import GROUP_PHOTO, PORTRAIT, bad_images, write_raw_shards


@pytest.fixture()
def shard(tmp_path):
    rows = [
        {"SAMPLE_ID": 1, "TEXT": "A group of friends at a party", "image": GROUP_PHOTO.read_bytes()},
        {"SAMPLE_ID": 2, "TEXT": "Tom Hanks at the premiere", "image": PORTRAIT.read_bytes()},
        {"SAMPLE_ID": 3, "TEXT": None, "image": bad_images()["truncated_png"]},
    ]
    raw = write_raw_shards(tmp_path / "raw", [rows])[0]
    return raw, tmp_path / "measurements" / raw.name


def test_measurements_are_reused_until_raw_shard_or_settings_change(shard, tmp_path):
    raw, out = shard
    settings = clean_tasks.measure_settings(CleanConfig(paths=Paths(data_root=tmp_path)))
    first = clean_tasks.measure_shard(str(raw), str(out), settings)
    assert first == {"shard": raw.name, "rows": 3, "remeasured": ["image", "caption", "agreement"]}
    table = read_measurements(out)
    assert table.column("SAMPLE_ID").to_pylist() == [1, 2, 3]
    assert len(table.column("face_scores")[0].as_py()) >= 5 and table.column("crop")[1].as_py() is not None
    assert table.column("image_error_rule").to_pylist()[2] == "undecodable_image"

    stamp = out.stat().st_mtime_ns
    assert clean_tasks.measure_shard(str(raw), str(out), settings)["remeasured"] == []
    assert out.stat().st_mtime_ns == stamp

    other = clean_tasks.measure_settings(CleanConfig(paths=Paths(data_root=tmp_path), detector="yuface"))
    assert clean_tasks.measure_shard(str(raw), str(out), other)["remeasured"] == ["image"]
    assert read_measurements(out).column("english_ratio").to_pylist() == table.column("english_ratio").to_pylist()
    assert stored_versions(out)["image"] == other.versions["image"] != settings.versions["image"]


class FakeEncoder:
    """Stands in for FVLPEncoder: unit vectors, crop PNG bytes and captions in, tensors out."""

    def encode_images(self, images):
        assert all(isinstance(i, bytes) for i in images)  # crops go in as PNG bytes
        return torch.nn.functional.normalize(torch.ones(len(images), 4), dim=-1)

    def encode_texts(self, texts):
        return torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0]] * len(texts)), dim=-1)


def test_agreement_is_measured_with_the_configured_model(shard, tmp_path, monkeypatch):
    raw, out = shard
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"trained weights")
    monkeypatch.setitem(clean_tasks._ENCODERS, str(checkpoint.resolve()), FakeEncoder())
    settings = clean_tasks.measure_settings(
        CleanConfig(paths=Paths(data_root=tmp_path), agreement_checkpoint=checkpoint)
    )
    clean_tasks.measure_shard(str(raw), str(out), settings)
    scores = read_measurements(out).column("agreement").to_pylist()
    assert scores[0] == pytest.approx(np.sqrt(0.5)) and scores[1] == pytest.approx(np.sqrt(0.5))
    assert scores[2] is None  # no crop, no caption: nothing to compare


def test_no_checkpoint_records_no_agreement(shard, tmp_path):
    raw, out = shard
    settings = clean_tasks.measure_settings(CleanConfig(paths=Paths(data_root=tmp_path)))
    clean_tasks.measure_shard(str(raw), str(out), settings)
    assert read_measurements(out).column("agreement").to_pylist() == [None, None, None]


def test_insightface_without_a_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--insightface-model"):
        clean_tasks.measure_settings(CleanConfig(paths=Paths(data_root=tmp_path), detector="insightface"))


@pytest.mark.slow  # starts a LocalCluster with a worker process
def test_the_dask_cluster_leaves_the_process_environment_as_it_found_it(tmp_path, monkeypatch):
    """Dask's nannies set OMP_NUM_THREADS=1 in the parent process; a training child that
    `fvlp run` launches after the clean stage would inherit it and compute on one thread."""
    from tasks.clean import dask_client

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with dask_client(CleanConfig(paths=Paths(data_root=tmp_path), workers=1)) as client:
        assert client.run(lambda: os.environ.get("OMP_NUM_THREADS"))  # the workers do get their setting
    assert dict(os.environ) == before
