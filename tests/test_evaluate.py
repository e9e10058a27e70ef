"""The episodes and evaluate flows end to end on tiny data: episodes built, both variants scored, store written.

The model is replaced by a small deterministic encoder (pixel thumbnails; captions hashed
to vectors) so these tests exercise the flow, the ranking and the results store, not
training. A crash injected mid-embedding must leave a failed run and no results.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fvlp_core.config import CleanConfig, EpisodesConfig, EvaluateConfig, Paths
from fvlp_core.corpus import EmbeddedCorpus, render_face
from storage.clean import FACE_SCHEMA, faces_dir, write_clean_manifest
from storage.results import ResultsStore
from storage.shards import DatasetError, shard_path, write_shard
from storage.source import write_embedded_source
from tests.test_fs2k import make_fs2k_tree

STEPS = 6

# Each runs a real Prefect flow against the local test server (tens of seconds on 2 cores).
pytestmark = pytest.mark.slow


class ThumbnailEncoder:
    """Embeds an image as its normalised 8x8 grey thumbnail (ink-inverted), a text as a hashed vector."""

    dim = 64

    def __init__(self, fail_after_sketch_batches: int | None = None):
        self.fail_after = fail_after_sketch_batches
        self.sketch_batches = 0

    @staticmethod
    def _norm(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

    def _thumbs(self, images) -> np.ndarray:
        grey = [255.0 - np.asarray(im.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.float32) for im in images]
        return self._norm(np.stack([g.ravel() - g.mean() + 1e-3 for g in grey]))

    def encode_images(self, images):
        edges = [im.convert("L").filter(__import__("PIL.ImageFilter").ImageFilter.FIND_EDGES) for im in images]
        return self._thumbs([Image.eval(e, lambda v: 255 - v) for e in edges])

    def encode_texts(self, texts):
        vectors = [
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(self.dim)
            for t in texts
        ]
        return self._norm(np.stack(vectors).astype(np.float32))

    def encode_image_tokens(self, images):
        return torch.from_numpy(self.encode_images(images))[:, None, :]

    def match_logits(self, captions, image_tokens, image_index=None):
        """A stand-in ITM head: the caption vector's agreement with the photo, sharpened."""
        tokens = image_tokens if image_index is None else image_tokens[image_index]
        return torch.from_numpy(5.0 * (self.encode_texts(captions) * tokens[:, 0].numpy()).sum(axis=1))

    def encode_sketch_queries(self, sketches, captions):
        self.sketch_batches += 1
        if self.fail_after is not None and self.sketch_batches > self.fail_after:
            raise RuntimeError("simulated crash mid-evaluation")
        found = self._thumbs(sketches)
        return found, self._norm(found + self.encode_texts(captions))


def make_clean_faces(paths: Paths, rows: int = 40, identities: int = 12, size: int = 64) -> None:
    """Embedded source + a faces shard and manifest shaped like the clean stage's (crops are jittered renders)."""
    corpus = EmbeddedCorpus(rows, identities, seed=0)
    write_embedded_source(paths.source_dir, corpus)
    write_clean_manifest(
        paths.clean_dir,
        {
            "settings": CleanConfig().model_dump(mode="json", exclude={"paths"}),
            "corpus": {"rows": rows, "identities": identities, "seed": 0},
        },
    )
    truth = corpus.ground_truth()
    faces = []
    for sample_id, identity, n_faces in zip(truth["SAMPLE_ID"], truth["identity_id"], truth["n_faces"]):
        if n_faces != 1:
            continue
        buffer = io.BytesIO()
        params = corpus.identity_params(int(identity)) if identity >= 0 else corpus.identity_params(0)
        render_face(params, size, np.random.default_rng(int(sample_id))).save(buffer, format="PNG")
        faces.append(
            {
                "SAMPLE_ID": int(sample_id),
                "crop": buffer.getvalue(),
                "caption": f"person {identity}",
                "text": None,
                "attributes": [],
                "det_score": 0.99,
                "box": [0.0, 0.0, 1.0, 1.0],
                "landmarks": None,
                "identity_id": int(identity),
            }
        )
    write_shard(pa.Table.from_pylist(faces, schema=FACE_SCHEMA), shard_path(faces_dir(paths.clean_dir), 0), FACE_SCHEMA)


@pytest.fixture
def data_root(tmp_path: Path) -> Paths:
    paths = Paths(data_root=tmp_path / "data")
    make_clean_faces(paths)
    checkpoint = paths.checkpoints_dir / "finetune" / "run-1" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    (paths.checkpoints_dir / "finetune" / "LATEST").write_text("run-1\n")
    return paths


def _use_encoder(monkeypatch: pytest.MonkeyPatch, encoder: ThumbnailEncoder) -> None:
    monkeypatch.setattr("tasks.evaluate.load_encoder", lambda checkpoint, device: encoder)


def _build_episodes(paths: Paths, **overrides) -> dict:
    from flows.episodes import episodes_flow

    return episodes_flow(EpisodesConfig(paths=paths, **{"steps_per_episode": STEPS, **overrides}))


def test_evaluate_writes_metrics_curves_and_artifacts(prefect_harness, data_root: Paths, monkeypatch) -> None:
    from flows.evaluate import evaluate_flow

    _use_encoder(monkeypatch, ThumbnailEncoder())
    assert _build_episodes(data_root)["built"]
    config = EvaluateConfig(paths=data_root, batch_size=16)
    out = evaluate_flow(config)

    store = ResultsStore(data_root.results_store)
    status, model_fp, dataset_fp = store.query(
        "SELECT status, model_fingerprint, dataset_fingerprint FROM runs WHERE run_id = ?", [out["run_id"]]
    )[0]
    assert status == "finished" and model_fp.startswith("sha256:") and dataset_fp.endswith(":test")
    names = {(v, n) for v, n in store.query("SELECT variant, name FROM metrics WHERE run_id = ?", [out["run_id"]])}
    for variant in ("sketch", "sketch+text"):
        for name in ("m_at_A", "m_at_B", "wm_at_A", "wm_at_B", "acc_at_10_at_20pct", "acc_at_1_final"):
            assert (variant, name) in names
    assert ("text-image", "t2i_r_at_1") in names and ("text-image", "i2t_r_at_10") in names
    assert ("text-image-itm", "t2i_r_at_1") in names and ("text-image-itm", "i2t_r_at_10") in names
    assert ("dataset", "captions") in names
    curves = store.query("SELECT count(*), max(step) FROM curves WHERE run_id = ?", [out["run_id"]])[0]
    assert curves == (2 * 5 * STEPS, STEPS)
    early = store.query(
        "SELECT variant, wm_at_B FROM early_stage_by_variant WHERE run_id = ? ORDER BY variant", [out["run_id"]]
    )
    assert [v for v, _ in early] == ["sketch", "sketch+text"]

    # The two variants are scored from different query embeddings of the same episodes.
    headline = out["headline"]
    assert headline["sketch+text"] != headline["sketch"]
    for found in headline.values():
        assert 0 <= found["m_at_A"] <= 100 and 0 < found["m_at_B"] <= 100 and found["wm_at_A"] <= 62.7
    assert Path(out["plot"]).stat().st_size > 1000
    assert "| sketch+text |" in Path(out["summary"]).read_text()
    kinds = {k for (k,) in store.query("SELECT kind FROM artifacts WHERE run_id = ?", [out["run_id"]])}
    assert kinds == {"curves_png", "summary_md"}

    # A second build with the same inputs and T keeps the episodes; evaluating again reads them as they are.
    manifest = data_root.episodes_dir / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert not _build_episodes(data_root)["built"]
    evaluate_flow(config)
    assert manifest.stat().st_mtime_ns == before
    assert store.query("SELECT count(DISTINCT run_id) FROM latest_metrics") == [(1,)]


def test_episode_chunks_drawn_in_worker_processes_equal_the_inline_build(
    prefect_harness, data_root: Paths, monkeypatch
) -> None:
    """Spawned workers draw the same chunks, written in the same order, as the build without them."""
    import pyarrow.parquet as pq

    monkeypatch.setattr("tasks.episodes.CHUNK_PHOTOS", 4)  # several chunks from the fixture's dozen faces
    builds = {}
    for workers in (1, 2):
        folder = data_root.data_root / f"episodes-{workers}-workers"
        _build_episodes(data_root, episodes=folder, workers=workers)
        assert len(list((folder / "sketches").glob("*.parquet"))) > 2
        builds[workers] = {
            str(path.relative_to(folder)): pq.read_table(path) if path.suffix == ".parquet" else path.read_text()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".")  # dot-files cache digests by mtime
        }
    assert builds[1].keys() == builds[2].keys()
    for name, content in builds[1].items():
        assert content.equals(builds[2][name]) if not isinstance(content, str) else content == builds[2][name], name


def test_stages_with_different_episode_settings_read_their_own_builds(
    prefect_harness, data_root: Paths, monkeypatch
) -> None:
    """Episodes of another T live in their own folder; evaluating one never rebuilds or deletes the other."""
    from flows.evaluate import evaluate_flow

    _use_encoder(monkeypatch, ThumbnailEncoder())
    short = data_root.data_root / "episodes-T3"
    _build_episodes(data_root)
    _build_episodes(data_root, steps_per_episode=3, episodes=short)

    def snapshot(folder: Path) -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot(data_root.episodes_dir), snapshot(short)
    long_run = evaluate_flow(EvaluateConfig(paths=data_root))
    short_run = evaluate_flow(EvaluateConfig(paths=data_root, episodes=short))
    assert (snapshot(data_root.episodes_dir), snapshot(short)) == before
    assert long_run["metrics"]["dataset/steps"] == STEPS and short_run["metrics"]["dataset/steps"] == 3

    empty = data_root.data_root / "no-episodes"
    with pytest.raises(DatasetError, match="run `fvlp episodes` first"):
        evaluate_flow(EvaluateConfig(paths=data_root, episodes=empty))
    assert not empty.exists()


def test_crash_mid_evaluation_leaves_failed_run_and_no_results(prefect_harness, data_root: Paths, monkeypatch) -> None:
    from flows.evaluate import evaluate_flow

    _use_encoder(monkeypatch, ThumbnailEncoder(fail_after_sketch_batches=1))
    _build_episodes(data_root)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_flow(EvaluateConfig(paths=data_root, batch_size=8))
    store = ResultsStore(data_root.results_store)
    ((status, error),) = store.query("SELECT status, error FROM runs")
    assert status == "failed" and "simulated crash" in error
    for table in ("metrics", "curves", "artifacts"):
        assert store.query(f"SELECT count(*) FROM {table}") == [(0,)], table


def test_evaluate_on_fs2k_sde_tree(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    from flows.evaluate import evaluate_flow

    root = make_fs2k_tree(tmp_path / "fs2k", test_ids=("0101", "0102", "0103"), steps=4)
    paths = Paths(data_root=tmp_path / "data")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    _use_encoder(monkeypatch, ThumbnailEncoder())
    _build_episodes(paths, fs2k_sde=root)
    out = evaluate_flow(EvaluateConfig(paths=paths, checkpoint=checkpoint))
    assert out["metrics"]["dataset/gallery_size"] == 3.0
    assert out["metrics"]["dataset/episodes"] == 3.0
    assert out["metrics"]["dataset/steps"] == float(STEPS)


def test_real_photos_get_line_art_episodes(prefect_harness, data_root: Paths, monkeypatch) -> None:
    """Without the corpus ground truth every kept face is its own episode, drawn from edges."""
    from flows.evaluate import evaluate_flow

    (data_root.source_dir / "ground_truth.parquet").unlink()
    _use_encoder(monkeypatch, ThumbnailEncoder())
    _build_episodes(data_root)
    out = evaluate_flow(EvaluateConfig(paths=data_root))
    manifest = json.loads((data_root.episodes_dir / "manifest.json").read_text())
    assert manifest["drawing"] == "line-art" and manifest["skipped"] == {}
    assert manifest["photos"] == sum(manifest["splits"].values())
    assert out["metrics"]["dataset/episodes"] == manifest["splits"]["test"]


def test_itm_candidates_score_each_pair_once_and_as_the_head_would_alone() -> None:
    from fvlp_core.evaluation import embed_gallery, match_candidates

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
    captions = [[f"a face {i}"] + ([f"another face {i}"] if i % 2 else []) for i in range(6)]
    encoder = ThumbnailEncoder()
    scored: list[int] = []
    passed_images: list[int] = []
    match_logits = encoder.match_logits

    def counted(texts, tokens, index):
        scored.append(len(texts))
        passed_images.append(len(tokens))
        return match_logits(texts, tokens, index)

    encoder.match_logits = counted
    gallery = embed_gallery(encoder, [f"p{i}" for i in range(6)], images, captions, batch_size=4)
    matches = match_candidates(encoder, gallery, images, k=3, batch_size=5)

    tokens = encoder.encode_image_tokens(images)
    t2i_rows, i2t_rows = matches.ranking.text_to_image.top_rows, matches.ranking.image_to_text.top_rows
    t2i_logits, i2t_logits = matches.text_to_image, matches.image_to_text
    assert list(matches.ranking.image_rows) == list(range(6))  # every photo has a caption
    for caption in range(len(gallery.captions)):
        for slot, photo in enumerate(t2i_rows[caption]):
            alone = match_logits([gallery.captions[caption]], tokens[[photo]])
            assert t2i_logits[caption, slot] == pytest.approx(float(alone[0]), rel=1e-6)
    for photo in range(6):
        for slot, caption in enumerate(i2t_rows[photo]):
            alone = match_logits([gallery.captions[caption]], tokens[[photo]])
            assert i2t_logits[photo, slot] == pytest.approx(float(alone[0]), rel=1e-6)
    nominated = {(c, int(p)) for c in range(len(gallery.captions)) for p in t2i_rows[c]}
    nominated |= {(int(c), p) for p in range(6) for c in i2t_rows[p]}
    assert sum(scored) == len(nominated) < t2i_rows.size + i2t_rows.size
    # Batches go in photo order: a photo's tokens are passed once per batch, not once per pair.
    assert sum(passed_images) < sum(scored)


def test_a_step_repeating_the_picture_before_it_is_encoded_once(prefect_harness, data_root: Paths, monkeypatch) -> None:
    """Steps that add no stroke repeat the previous picture: evaluation encodes it once and
    fills the step from it (an unfilled step would fail the evaluation as a partial episode)."""
    from flows.evaluate import evaluate_flow
    from storage.episodes import sketches_dir
    from storage.shards import list_shards, read_shard, write_shard

    encoder = ThumbnailEncoder()
    encoded: list[int] = []
    encode = encoder.encode_sketch_queries
    monkeypatch.setattr(encoder, "encode_sketch_queries", lambda s, c: encoded.append(len(s)) or encode(s, c))
    _use_encoder(monkeypatch, encoder)
    assert _build_episodes(data_root)["built"]
    # Plant repeats: in every test episode, steps 2 and 3 show step 1's picture again.
    steps, repeats = 0, 0
    for path in list_shards(sketches_dir(data_root.episodes_dir)):
        rows = read_shard(path).to_pylist()
        step_one = {r["photo_id"]: r["image"] for r in rows if r["split"] == "test" and r["step"] == 1}
        repeats += 2 * len(step_one)
        for r in rows:
            if r["split"] == "test":
                steps += 1
                if r["step"] in (2, 3):
                    r["image"] = step_one[r["photo_id"]]
        write_shard(pa.Table.from_pylist(rows, schema=read_shard(path).schema), path, row_group_per="photo_id")
    out = evaluate_flow(EvaluateConfig(paths=data_root, batch_size=16))
    assert sum(encoded) == steps - repeats
    store = ResultsStore(data_root.results_store)
    assert store.query("SELECT count(*) FROM curves WHERE run_id = ?", [out["run_id"]]) == [(2 * 5 * STEPS,)]
