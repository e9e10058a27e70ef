"""The embedded corpus: determinism, noise labels, decodability, strokes and attributes."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fvlp_core.attributes import ATTRIBUTE_INDEX
from fvlp_core.corpus import (
    NOISE_LABELS,
    STROKE_GROUPS,
    EmbeddedCorpus,
    attributes_of,
    crop_strokes,
    face_strokes,
    render_face,
    sample_identity,
)
from fvlp_core.corpus.laion import CAPTION_NOISE, DUPLICATE_NOISE, IMAGE_NOISE
from storage.source import read_ground_truth, read_source_metadata, write_embedded_source


@pytest.fixture(scope="module")
def corpus() -> EmbeddedCorpus:
    return EmbeddedCorpus(rows=400, identities=150, seed=3)


def _rows_with(corpus: EmbeddedCorpus, label: str) -> list[int]:
    truth = corpus.ground_truth()
    return truth.loc[truth["noise"].map(lambda n: label in n), "SAMPLE_ID"].tolist()


def test_same_seed_same_metadata_and_bytes(corpus):
    again = EmbeddedCorpus(rows=400, identities=150, seed=3)
    pd.testing.assert_frame_equal(corpus.metadata(), again.metadata())
    pd.testing.assert_frame_equal(corpus.ground_truth(), again.ground_truth())
    ids = corpus.metadata()["SAMPLE_ID"].tolist()
    for sample_id in ids[:5] + ids[-3:]:
        assert corpus.image_bytes(sample_id) == again.image_bytes(sample_id)
    # The order images are asked for does not matter.
    assert again.image_bytes(ids[-1]) == corpus.image_bytes(ids[-1])


def test_different_seed_different_corpus(corpus):
    other = EmbeddedCorpus(rows=400, identities=150, seed=4)
    assert not corpus.metadata()["TEXT"].equals(other.metadata()["TEXT"])
    assert corpus.image_bytes(corpus.sample_ids()[0]) != other.image_bytes(other.sample_ids()[0])
    assert corpus.identity_params(0) != other.identity_params(0)


def test_ground_truth_shape_and_labels(corpus):
    meta, truth = corpus.metadata(), corpus.ground_truth()
    assert len(meta) == len(truth) == 400
    assert meta["SAMPLE_ID"].is_unique and (meta["SAMPLE_ID"].to_numpy() == truth["SAMPLE_ID"].to_numpy()).all()
    assert set(truth["noise"].explode().dropna()) <= set(NOISE_LABELS)
    assert (truth["expected_keep"] == truth["noise"].map(len).eq(0)).all()
    assert set(truth["split"]) == {"train", "test"}
    # Every identity appears, and an identity never spans both splits.
    people = truth[truth["identity_id"] >= 0]
    assert set(people["identity_id"]) == set(range(150))
    assert people.groupby("identity_id")["split"].nunique().max() == 1
    assert (truth.loc[truth["identity_id"] < 0, "noise"].map(lambda n: "no_face" in n or "multi_face" in n)).all()


def test_noise_proportions():
    truth = EmbeddedCorpus(rows=3000, identities=1200, seed=0).ground_truth()
    counts = truth["noise"].explode().value_counts()
    for label, share in {**IMAGE_NOISE, **CAPTION_NOISE, **DUPLICATE_NOISE}.items():
        assert abs(counts.get(label, 0) / 3000 - share) < max(0.5 * share, 0.01), label
    assert 0.55 < truth["expected_keep"].mean() < 0.75
    multi = truth[truth["noise"].map(lambda n: "multi_face" in n)]
    assert (multi["n_faces"] >= 2).all()
    assert (truth.loc[truth["noise"].map(lambda n: "no_face" in n), "n_faces"] == 0).all()


def test_broken_images_fail_to_decode(corpus):
    for label in ("corrupt_image", "truncated_image"):
        rows = _rows_with(corpus, label)
        assert rows, label
        for sample_id in rows:
            with pytest.raises((OSError, SyntaxError, ValueError)):
                image = Image.open(io.BytesIO(corpus.image_bytes(sample_id)))
                image.load()


def test_images_decode_with_metadata_sizes(corpus):
    meta = corpus.metadata().set_index("SAMPLE_ID")
    for label in ("no_face", "multi_face", "tiny_face", "low_resolution", "near_duplicate"):
        sample_id = _rows_with(corpus, label)[0]
        image = corpus.image(sample_id)
        assert image.size == (meta.loc[sample_id, "WIDTH"], meta.loc[sample_id, "HEIGHT"]), label
    truth = corpus.ground_truth()
    clean = truth.loc[truth["expected_keep"], "SAMPLE_ID"].iloc[0]
    assert corpus.image(clean).size == (meta.loc[clean, "WIDTH"], meta.loc[clean, "HEIGHT"])


def test_duplicates_repeat_an_original(corpus):
    truth = corpus.ground_truth()
    for label in ("duplicate", "near_duplicate"):
        copy = _rows_with(corpus, label)[0]
        person = truth.loc[truth["SAMPLE_ID"] == copy, "identity_id"].item()
        same_person = truth[(truth["identity_id"] == person) & (truth["SAMPLE_ID"] < copy)]
        if label == "duplicate":
            assert corpus.image_bytes(copy) in {corpus.image_bytes(s) for s in same_person["SAMPLE_ID"]}
        else:  # cropped, resized, colour-shifted and re-encoded, but the same picture

            def thumb(sample_id):
                pixels = np.asarray(corpus.image(sample_id).convert("L").resize((32, 32)), np.float32).ravel()
                return (pixels - pixels.mean()) / pixels.std()

            decodable = [
                s
                for s in same_person["SAMPLE_ID"]
                if not {"corrupt_image", "truncated_image"} & set(truth.loc[truth["SAMPLE_ID"] == s, "noise"].item())
            ]
            assert max(float(thumb(copy) @ thumb(s)) / 1024 for s in decodable) > 0.9


def test_caption_noise_matches_text(corpus):
    meta = corpus.metadata().set_index("SAMPLE_ID")
    for sample_id in _rows_with(corpus, "empty_caption"):
        text = meta.loc[sample_id, "TEXT"]
        assert pd.isna(text) or not str(text).strip()
    clean = corpus.ground_truth().query("expected_keep")["SAMPLE_ID"]
    assert meta.loc[clean, "TEXT"].map(lambda t: isinstance(t, str) and len(t) > 3).all()


def test_source_round_trip(tmp_path, corpus):
    meta_path, truth_path = write_embedded_source(tmp_path, corpus)
    assert meta_path.exists() and truth_path.exists()
    truth = read_ground_truth(tmp_path)
    expected = corpus.ground_truth()
    assert truth["SAMPLE_ID"].tolist() == expected["SAMPLE_ID"].tolist()
    assert truth["noise"].tolist() == expected["noise"].tolist()
    assert truth["attributes"].tolist() == expected["attributes"].tolist()
    meta = read_source_metadata(tmp_path)
    assert meta["TEXT"].isna().sum() == corpus.metadata()["TEXT"].isna().sum()


def test_read_ground_truth_names_bad_record(tmp_path, corpus):
    write_embedded_source(tmp_path, corpus)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "ground_truth.parquet").to_pandas()
    table.loc[0, "noise"] = ["cosmic_rays"]
    table.to_parquet(tmp_path / "ground_truth.parquet")
    with pytest.raises(ValueError, match=f"SAMPLE_ID {table.loc[0, 'SAMPLE_ID']}.*cosmic_rays"):
        read_ground_truth(tmp_path)


def test_attributes_from_vocabulary():
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(300):
        names = attributes_of(sample_identity(rng))
        assert all(name in ATTRIBUTE_INDEX for name in names)
        assert not ("No_Beard" in names and "Goatee" in names)
        assert not ("Bald" in names and "Bangs" in names)
        seen.update(names)
    assert {"Male", "Young", "Eyeglasses", "Smiling", "Bangs", "Blond_Hair", "Goatee", "Wearing_Hat"} <= seen


def test_identities_are_distinct():
    rng = np.random.default_rng(11)
    people = [sample_identity(rng) for _ in range(1000)]
    assert len(set(people)) == 1000
    assert len({tuple(attributes_of(p)) for p in people}) > 300


def test_strokes_in_frame_and_in_group_order():
    rng = np.random.default_rng(5)
    for _ in range(20):
        params = sample_identity(rng)
        strokes = face_strokes(params, 224)
        assert 25 <= len(strokes) <= 90
        order = [STROKE_GROUPS.index(s.group) for s in strokes]
        assert order == sorted(order)
        assert {"hair", "contour", "mouth", "eyes", "nose"} <= {s.group for s in strokes} | (
            {"hair"} if params.hair_style == "bald" and params.hat == "none" else set()
        )
        for stroke in strokes:
            assert stroke.points.ndim == 2 and stroke.points.shape[1] == 2 and len(stroke.points) >= 2
            assert (stroke.points >= 0).all() and (stroke.points <= 223).all()
            assert stroke.width >= 1


def test_strokes_trace_the_rendered_face():
    """Line art and photo share one frame: stroke pixels sit on strong edges of the photo."""
    params = sample_identity(np.random.default_rng(2))
    assert _edge_ratio(render_face(params, 192), face_strokes(params, 192)) > 2


def _edge_ratio(image: Image.Image, strokes) -> float:
    """Median edge strength under the strokes, relative to the image's median edge strength."""
    grey = np.asarray(image.convert("L"), np.float32)
    h, w = grey.shape
    edges = np.hypot(*np.gradient(grey))
    pts = np.concatenate([s.points for s in strokes if s.group in ("contour", "eyes", "mouth")])
    xs, ys = pts[:, 0].round().astype(int), pts[:, 1].round().astype(int)
    near = np.max(
        [edges[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
        axis=0,
    )
    return float(np.median(near) / np.median(edges))


def test_photo_strokes_follow_each_corpus_photo(corpus):
    truth = corpus.ground_truth()
    clean = truth.loc[truth["expected_keep"], "SAMPLE_ID"].iloc[:3].tolist()
    near = _rows_with(corpus, "near_duplicate")
    near = [
        s
        for s in near
        if not {"corrupt_image", "truncated_image"} & set(truth.loc[truth["SAMPLE_ID"] == s, "noise"].item())
    ][:2]
    for sample_id in clean + near:
        image, strokes = corpus.image(sample_id), corpus.photo_strokes(sample_id)
        assert all((s.points >= 0).all() and (s.points <= np.array(image.size) - 1).all() for s in strokes)
        assert _edge_ratio(image, strokes) > 2, sample_id
        # The same strokes shifted off the face no longer trace it.
        shifted = [replace(s, points=s.points + [image.size[0] * 0.07, 0]) for s in strokes]
        assert _edge_ratio(image, shifted) < _edge_ratio(image, strokes)
    with pytest.raises(ValueError, match="no single person"):
        corpus.photo_strokes(_rows_with(corpus, "no_face")[0])


def test_crop_strokes_keeps_only_the_crop():
    strokes = face_strokes(sample_identity(np.random.default_rng(4)), 200)
    cropped = crop_strokes(strokes, (50, 40, 150, 140), (64, 64))
    assert cropped and all((s.points >= 0).all() and (s.points <= 63).all() for s in cropped)
    assert len(cropped) >= len([s for s in strokes if s.group in ("eyes", "nose")])


def test_render_jitter_changes_photo_not_person():
    params = sample_identity(np.random.default_rng(9))
    plain = render_face(params, 128)
    assert plain.size == (128, 128) and plain.mode == "RGB"
    assert np.array_equal(np.asarray(plain), np.asarray(render_face(params, 128)))
    a = np.asarray(render_face(params, 128, np.random.default_rng(1)))
    b = np.asarray(render_face(params, 128, np.random.default_rng(2)))
    assert not np.array_equal(a, b)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="identities"):
        EmbeddedCorpus(rows=50, identities=200, seed=0)
    with pytest.raises(ValueError, match="seed"):
        EmbeddedCorpus(rows=50, identities=10, seed=-1)
    with pytest.raises(KeyError, match="SAMPLE_ID 7"):
        EmbeddedCorpus(rows=50, identities=10, seed=0).image_bytes(7)
