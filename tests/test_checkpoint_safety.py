"""Loading a checkpoint never runs code; configs are validated and unknown keys named.

The hostile checkpoint is a pickle whose ``__reduce__`` would create a marker file when
unpickled: each loader must refuse it *and* the marker must not exist afterwards.
(open_clip weights via ``read_weights`` are covered by
tests/test_models.py::test_checkpoint_reading_never_unpickles_code.)
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fvlp_core.checkpoint import FORMAT, load_checkpoint
from fvlp_core.config import (
    CleanConfig,
    ConfigError,
    IngestConfig,
    PipelineConfig,
    PretrainConfig,
    resolve_config,
)

REPO = Path(__file__).resolve().parents[1]


class _Exploit:
    """Unpickling this calls ``os.system`` (here: touch a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path: Path, marker: Path, *, zipped: bool) -> Path:
    payload = {"format": FORMAT, "model": {"weight": torch.zeros(2)}, "config": "{}", "hook": _Exploit(marker)}
    if zipped:  # torch.save's zip container around the pickle, as a real checkpoint.pt is
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def _load_attribute_head(path: Path):
    from fvlp_core.attribute_head import load_attribute_head

    return load_attribute_head(path)


def _load_encoder(path: Path):
    from fvlp_core.embed import FVLPEncoder

    return FVLPEncoder.load(path, device="cpu")


LOADERS = {
    "train_checkpoint": load_checkpoint,
    "attribute_head": _load_attribute_head,
    "fvlp_encoder": _load_encoder,
}


@pytest.mark.parametrize("zipped", [True, False], ids=["torch_save", "raw_pickle"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_checkpoint_loaders_refuse_pickled_code(tmp_path: Path, loader: str, zipped: bool):
    marker = tmp_path / "pwned"
    path = _malicious_checkpoint(tmp_path / "evil.pt", marker, zipped=zipped)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|not an fvlp checkpoint"):
        LOADERS[loader](path)
    assert not marker.exists(), f"{loader} executed code from a checkpoint"


def write_face_pairs(clean_dir: Path, rows: int, seed: int = 0) -> None:
    """A small clean/faces dataset (random 32x32 crops, distinct captions) for training runs."""
    import numpy as np

    from fvlp_core.codec import encode_png
    from storage.clean import new_generation, write_clean_manifest, write_faces

    rng = np.random.default_rng(seed)

    def crop() -> bytes:
        return encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))

    write_faces(
        {
            "SAMPLE_ID": list(range(rows)),
            "crop": [crop() for _ in range(rows)],
            "caption": [f"a person with {i} freckles" for i in range(rows)],
            "text": ["t"] * rows,
            "template_caption": [None] * rows,
            "attributes": [[] for _ in range(rows)],
            "det_score": [0.99] * rows,
            "box": [[0.0, 0.0, 1.0, 1.0]] * rows,
            "landmarks": [None] * rows,
            "identity_id": [-1] * rows,
        },
        clean_dir,
        0,
        generation := new_generation(),
    )
    write_clean_manifest(clean_dir, {"generation": generation})


def test_training_resume_refuses_a_planted_checkpoint(tmp_path: Path):
    """A checkpoint.pt swapped into a run folder is refused before any code in it runs."""
    marker = tmp_path / "pwned"
    write_face_pairs(tmp_path / "clean", rows=12)
    config = PretrainConfig.model_validate(
        {"paths": {"data_root": str(tmp_path)}, "run_id": "r1", "device": "cpu", "batch_size": 4}
    )
    run = tmp_path / "checkpoints" / "pretrain" / "r1"
    run.mkdir(parents=True)
    _malicious_checkpoint(run / "checkpoint.pt", marker, zipped=True)
    (tmp_path / "cfg.json").write_text(config.model_dump_json())
    done = subprocess.run(
        [sys.executable, "-m", "fvlp_train", "pretrain", "--config", str(tmp_path / "cfg.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "Weights only load failed" in done.stderr, done.stderr[-2000:]
    assert not marker.exists()


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "model, overrides, named",
    [
        (IngestConfig, {"shard_sise": 10}, "shard_sise"),
        (IngestConfig, {"http": {"timeout": 3}}, "http.timeout"),
        (CleanConfig, {"paths": {"data_rot": "x"}}, "paths.data_rot"),
        (PipelineConfig, {"clean": {"min_face_scor": 0.5}}, "clean.min_face_scor"),
        (PretrainConfig, {"learning_rate": 1e-3}, "learning_rate"),
    ],
)
def test_unknown_config_keys_are_rejected_by_name(model, overrides, named: str):
    with pytest.raises(ConfigError, match=rf"invalid {model.__name__}: .*{named}.*(?i:extra)"):
        resolve_config(model, overrides)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"shard_size": 0}, "shard_size"),
        ({"http": {"max_redirects": -1}}, "http.max_redirects"),
        ({"source": "ftp"}, "source"),
        ({"source": "tar"}, "needs --images"),
    ],
)
def test_invalid_config_values_are_rejected_with_the_field(overrides, named: str):
    with pytest.raises(ConfigError, match=named):
        resolve_config(IngestConfig, overrides)


def test_environment_values_are_validated_too(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FVLP_SHARD_SIZE", "many")
    with pytest.raises(ConfigError, match="shard_size"):
        resolve_config(IngestConfig)


def test_cli_rejects_a_bad_value_before_running(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--shard-size", "0", "--data-root", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "shard_size" in done.stderr
    assert not (tmp_path / "raw").exists()
