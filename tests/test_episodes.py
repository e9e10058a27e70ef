"""Drawing-episode generation: pacing, drawing order, alignment, edge line art, shard round trip."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fvlp_core.corpus.faces import STROKE_GROUPS, Stroke, face_strokes, render_face, sample_identity
from fvlp_core.detection.crop import crop_face
from fvlp_core.episodes import (
    corpus_episode,
    face_region,
    line_art_strokes,
    order_strokes,
    render_episode,
    stroke_landmarks,
    transform_strokes,
)
from fvlp_core.png import encode_png
from storage.episodes import complete_chunks, iter_sketch_chunks, read_photos, write_episode_chunk


def _ink(frame: np.ndarray) -> int:
    return int((frame < 128).sum())


def test_episode_is_cumulative_and_ends_complete() -> None:
    params = sample_identity(np.random.default_rng(1))
    strokes = face_strokes(params, 96)
    frames = render_episode(strokes, 96, steps=50)
    assert frames.shape == (50, 96, 96) and frames.dtype == np.uint8
    inks = [_ink(f) for f in frames]
    assert inks[0] > 0 and all(b >= a for a, b in zip(inks, inks[1:]))
    # Cumulative: nothing drawn at step t disappears at step t + 1.
    assert not ((frames[:-1] < 128) & (frames[1:] >= 128)).any()
    # The last step is the whole drawing, whatever T is (up to a few pixels where a
    # step boundary split a stroke, so its pieces join slightly differently).
    differ = (render_episode(strokes, 96, steps=7)[-1] < 128) != (frames[-1] < 128)
    assert differ.sum() <= 0.01 * inks[-1]
    assert len(np.unique(inks)) > 40  # the ink spreads over the steps


def test_single_step_episode_is_the_finished_sketch() -> None:
    strokes = [Stroke("hair", np.array([[2.0, 2.0], [20.0, 2.0]]), 1.0), Stroke("eyes", np.array([[5.0, 10.0]]), 2.0)]
    (only,) = render_episode(strokes, 24, steps=1)
    assert only[2, 10] == 0 and only[10, 5] == 0  # the line and the dot


def test_hair_comes_first_and_details_last() -> None:
    params = sample_identity(np.random.default_rng(2))
    strokes = face_strokes(params, 96)
    groups = [s.group for s in strokes]
    assert groups == [s.group for s in order_strokes(strokes)]
    frames = render_episode([s for s in strokes if s.group == "hair"], 96, steps=1)
    hair_only = frames[-1] < 128
    first_steps = render_episode(strokes, 96, steps=50)[:5] < 128
    # Early steps only put ink where the hair strokes go.
    assert (first_steps & ~cv2.dilate(hair_only.astype(np.uint8), np.ones((3, 3))).astype(bool)).sum() == 0


def test_order_strokes_rejects_unknown_group() -> None:
    with pytest.raises(ValueError, match="unknown stroke group"):
        order_strokes([Stroke("ears", np.zeros((2, 2)), 1.0)])


def test_stroke_landmarks_sit_on_the_drawn_face() -> None:
    strokes = face_strokes(sample_identity(np.random.default_rng(3)), 128)
    left_eye, right_eye, nose, mouth_left, mouth_right = stroke_landmarks(strokes)
    assert left_eye[0] < nose[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 4
    assert left_eye[1] < nose[1] < mouth_left[1] and mouth_left[0] < nose[0] < mouth_right[0]
    assert stroke_landmarks([s for s in strokes if s.group != "eyes"]) is None


def test_corpus_sketch_lands_on_the_cleaned_crop() -> None:
    """Crop a jittered photo the way the clean stage does (on its landmarks); the sketch must follow."""
    params = sample_identity(np.random.default_rng(4))
    strokes = face_strokes(params, 160)
    # A "photo": the canonical render moved, zoomed and rolled; its landmarks move with it.
    angle, scale = 0.1, 1.2
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    jitter = np.array([[c, -s, -10.0], [s, c, -25.0]])
    photo = cv2.warpAffine(np.asarray(render_face(params, 160)), jitter, (160, 160), borderMode=cv2.BORDER_REPLICATE)
    marks = stroke_landmarks(transform_strokes(strokes, jitter))
    crop = crop_face(photo, np.array([0, 0, 160, 160]), marks, 96, 0.25)

    frames, aligned = corpus_episode(face_strokes(params, 96), 96, steps=3, crop_margin=0.25)
    assert aligned
    edges = cv2.Canny(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), 40, 100) > 0
    ink = frames[-1] < 128
    near_edges = cv2.dilate(edges.astype(np.uint8), np.ones((5, 5))).astype(bool)
    assert (ink & near_edges).sum() / ink.sum() > 0.6
    unaligned, _ = corpus_episode(face_strokes(params, 96), 96, steps=3, crop_margin=None)
    assert ((unaligned[-1] < 128) & near_edges).sum() / (unaligned[-1] < 128).sum() < (
        ink & near_edges
    ).sum() / ink.sum()


def test_face_region_from_landmarks() -> None:
    marks = np.array([[36.0, 42.0], [64.0, 42.0], [50.0, 56.0], [39.0, 68.0], [61.0, 68.0]])
    assert face_region(np.array([36.0, 43.0]), marks) == "eyes"
    assert face_region(np.array([36.0, 33.0]), marks) == "eyes"  # a brow
    assert face_region(np.array([50.0, 54.0]), marks) == "nose"
    assert face_region(np.array([50.0, 69.0]), marks) == "mouth"
    assert face_region(np.array([50.0, 5.0]), marks) == "hair"
    assert face_region(np.array([18.0, 62.0]), marks) == "contour"
    assert face_region(np.array([50.0, 98.0]), marks) == "contour"  # neck/shoulders below the chin


def test_line_art_from_a_photo_follows_drawing_order() -> None:
    params = sample_identity(np.random.default_rng(5))
    photo = np.asarray(render_face(params, 112))
    strokes = line_art_strokes(photo)
    assert len(strokes) >= 5
    ranks = [STROKE_GROUPS.index(s.group) for s in strokes]
    assert ranks == sorted(ranks)
    assert {"hair", "eyes", "mouth"} <= {s.group for s in strokes}
    frames = render_episode(strokes, 112, steps=50)
    # The line art covers the photo's main edges: most edge pixels lie near drawn ink.
    edges = cv2.Canny(cv2.GaussianBlur(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), (0, 0), 0.8), 40, 100) > 0
    near_ink = cv2.dilate((frames[-1] < 128).astype(np.uint8), np.ones((5, 5))).astype(bool)
    assert (edges & near_ink).sum() / max(1, edges.sum()) > 0.6


def test_episode_chunks_round_trip(tmp_path: Path) -> None:
    frames = render_episode([Stroke("hair", np.array([[1.0, 1.0], [10.0, 10.0]]), 1.0)], 16, steps=3)
    photos = [
        {
            "photo_id": pid,
            "split": split,
            "image": encode_png(frames[-1]),
            "caption": "a face",
            "captions": ["a face"],
            "source": "generated",
        }
        for pid, split in (("b", "test"), ("a", "train"))
    ]
    sketches = [
        {"photo_id": p["photo_id"], "split": p["split"], "step": t, "image": encode_png(frames[t])}
        for p in photos
        for t in (2, 0, 1)
    ]
    write_episode_chunk(tmp_path, 0, photos, sketches)
    assert complete_chunks(tmp_path) == {0}
    assert read_photos(tmp_path, split="test").column("photo_id").to_pylist() == ["b"]
    (chunk,) = list(iter_sketch_chunks(tmp_path, split="train"))
    assert chunk.column("step").to_pylist() == [0, 1, 2]
    decoded = np.asarray(Image.open(io.BytesIO(chunk.column("image")[2].as_py())))
    np.testing.assert_array_equal(decoded, frames[2])
    with pytest.raises(ValueError, match="disagree on photo ids"):
        write_episode_chunk(tmp_path, 1, photos, sketches[:3])


def test_gallery_photo_choice_accounts_for_every_face() -> None:
    import pandas as pd

    from tasks.episodes import select_gallery_faces

    faces = pd.DataFrame(
        {
            "SAMPLE_ID": [10, 11, 12, 13, 14],
            "identity_id": [7, 7, 7, -1, 8],
            "det_score": [0.95, 0.99, 0.99, 0.99, 0.97],
            "caption": ["a", "b", "c", "d", "e"],
        }
    )
    truth = pd.DataFrame({"SAMPLE_ID": [10, 11, 12, 13], "split": ["test", "test", "test", "train"]})
    chosen, skipped = select_gallery_faces(faces, truth)
    # Best detector score wins; the tie between 11 and 12 goes to the lower SAMPLE_ID.
    assert [(row["SAMPLE_ID"], row["split"]) for row in chosen] == [(11, "test")]
    assert skipped == {"no_identity": 1, "no_split": 1, "other_photo_of_identity": 2}
    assert len(chosen) + sum(skipped.values()) == len(faces)
