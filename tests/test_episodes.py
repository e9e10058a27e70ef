"""Drawing-episode generation: pacing, drawing order, alignment, edge line art, shard round trip."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fvlp_core.codec import encode_png
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
from storage.episodes import complete_chunks, iter_sketch_chunks, read_photos, write_episode_chunk
from storage.shards import DatasetError
from tasks.episodes import DRAWING_NICENESS, built_chunks


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


def _sketch_rows(photo_ids: list[str], split: str, steps: int) -> list[dict]:
    return [
        {"photo_id": p, "split": split, "step": t, "image": f"{p}/{t}".encode()}
        for p in photo_ids
        for t in range(steps)
    ]


def test_sketch_steps_decode_only_the_photos_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from storage.episodes import SketchSteps, sketches_dir
    from storage.shards import shard_path

    ids = ["p1", "p2", "p3"]
    photos = [
        {"photo_id": p, "split": "train", "image": b"x", "caption": "c", "captions": ["c"], "source": "generated"}
        for p in ids
    ]
    write_episode_chunk(tmp_path, 0, photos, _sketch_rows(ids, "train", 4))
    assert pq.ParquetFile(shard_path(sketches_dir(tmp_path), 0)).num_row_groups == 3  # one per photo

    read_groups: list[list[int]] = []
    original = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_groups",
        lambda self, groups, **kw: read_groups.append(groups) or original(self, groups, **kw),
    )
    steps = SketchSteps(tmp_path, "train")
    assert steps.read({"p2": 3}) == {"p2": b"p2/3"}
    assert read_groups == [[1]]  # p2's row group only
    # Whole episodes (validation, the app's replay) read their photos' row groups only, too.
    assert sorted(steps.sketches_of(["p3", "p1"])) == [
        (p, t, f"{p}/{t}".encode()) for p in ("p1", "p3") for t in range(4)
    ]
    assert read_groups[1:] == [[0, 2]]
    with pytest.raises(DatasetError, match="no train sketch for photo_id p9 step 0"):
        steps.read({"p9": 0})
    assert SketchSteps(tmp_path, "test").row_groups == {}


def test_sketch_steps_read_a_build_written_before_one_row_group_per_photo(tmp_path: Path) -> None:
    import pyarrow as pa

    from storage.episodes import SKETCH_SCHEMA, SketchSteps, sketches_dir
    from storage.shards import shard_path, write_shard

    rows = _sketch_rows(["a", "b"], "test", 3) + _sketch_rows(["c"], "train", 3)
    write_shard(pa.Table.from_pylist(rows, schema=SKETCH_SCHEMA), shard_path(sketches_dir(tmp_path), 0))
    steps = SketchSteps(tmp_path, "test")
    assert set(steps.row_groups) == {"a", "b"}
    assert steps.read({"a": 0, "b": 2}) == {"a": b"a/0", "b": b"b/2"}
    assert sorted(steps.sketches_of(["b"])) == [("b", t, f"b/{t}".encode()) for t in range(3)]


def test_face_crops_asked_in_shard_order_read_each_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    import storage.clean as clean_storage
    from storage.shards import shard_path, write_shard

    shards = [
        write_shard(pa.table({"SAMPLE_ID": ids, "crop": [str(i).encode() for i in ids]}), shard_path(tmp_path, n))
        for n, ids in enumerate(([5, 1, 9], [2, 7]))
    ]
    monkeypatch.setattr(clean_storage, "face_shards", lambda clean_dir: shards)
    reads: list[Path] = []
    read_shard = clean_storage.read_shard
    monkeypatch.setattr(
        clean_storage, "read_shard", lambda path, columns=None: reads.append(path) or read_shard(path, columns)
    )
    crops = clean_storage.FaceCrops(tmp_path)
    reads.clear()  # the SAMPLE_ID index is built once; count the crop reads
    ordered = sorted([9, 7, 1, 2, 5], key=crops.shard_of.__getitem__)
    found = {}
    for start in range(0, 5, 2):  # chunks of two, as the episodes build asks
        found.update(crops.read(ordered[start : start + 2]))
    assert found == {i: str(i).encode() for i in (1, 2, 5, 7, 9)}
    assert reads == shards
    with pytest.raises(KeyError, match="no crop for SAMPLE_ID 4"):
        crops.read([4])


def test_drawing_processes_yield_the_cpu_to_training_beside_them():
    # os.nice(0) reads the niceness of the process it runs in
    jobs = iter([(index, os.nice, (0,)) for index in range(3)])
    drawn = list(built_chunks(jobs, workers=2))
    assert [index for index, _ in drawn] == [0, 1, 2]
    assert {niceness for _, niceness in drawn} == {min(19, os.nice(0) + DRAWING_NICENESS)}
