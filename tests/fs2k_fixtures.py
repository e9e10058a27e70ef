"""FS2K-SDE roots in each layout the dataset is found in, built from real photos that ship in
installed packages: insightface's portrait and the faces of its group photo ``t1.jpg``
(found by the bundled detector), and scikit-image's astronaut.

Sketch episodes are each photo's own line art drawn stroke by stroke
(:func:`fvlp_core.episodes.photo_episode`), saved one cumulative image per step as FS2K-SDE
does. Train photos record ``TRAIN_STEPS`` steps, test photos ``TEST_STEPS``; the reference
layout's test rows carry exactly the steps the evaluation uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data

from fvlp_core.episodes import photo_episode
from tests.clean_fixtures import GROUP_PHOTO, INSIGHTFACE_IMAGES

SIZE = 64
TRAIN_STEPS = 12  # past 9, so step files 10.png, 11.png test the natural order
TEST_STEPS = 5
CAPTIONS = (
    "a man with short hair and a slight smile",
    "a smiling woman with short curly hair",
    "a smiling man with dark curly hair",
    "a laughing young man with dark hair",
    "a woman with long blond hair",
    "a woman with dark hair tied back",
    "a young man with short dark hair",
)


def real_photos() -> list[np.ndarray]:
    """Seven real face photos as SIZE x SIZE RGB arrays (five train, two test)."""
    from fvlp_core.detection.backends import DetectorSpec, detector_for

    portrait = Image.open(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png").convert("RGB")
    astronaut = Image.fromarray(skimage_data.astronaut()).crop((120, 0, 320, 200))
    group = np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))
    faces = detector_for(DetectorSpec("retinaface")).detect(group)
    crops = []
    for x1, y1, x2, y2 in faces.boxes[:5]:
        half = 0.8 * max(x2 - x1, y2 - y1)  # the face with some hair and neck around it
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        crops.append(Image.fromarray(group).crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))))
    photos = [portrait, astronaut, *crops]
    return [np.asarray(photo.resize((SIZE, SIZE), Image.Resampling.BICUBIC)) for photo in photos]


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _episodes(train: int = 5) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(split, photo, cumulative sketches) per real photo."""
    out = []
    for index, photo in enumerate(real_photos()):
        split = "train" if index < train else "test"
        out.append((split, photo, photo_episode(photo, TRAIN_STEPS if split == "train" else TEST_STEPS)))
    return out


def build_reference(root: Path, variant: int = 0) -> Path:
    """The FVLP/FLIP reference layout: ``annotation/<train>.json``, ``annotation/<test>.json``, paths
    relative to ``images/``. Train rows repeat a photo once per caption; test rows have no photo_id."""
    from fvlp_core.fs2k import REFERENCE_ANNOTATIONS

    train_name, test_name = REFERENCE_ANNOTATIONS[variant]
    train_rows, test_rows = [], []
    for number, (split, photo, frames) in enumerate(_episodes(), start=1):
        photo_rel = f"photo1/image{number:04d}.jpg"
        _save(photo, root / "images" / photo_rel)
        sketch_rel = [f"sketch_sde/{split}/image{number:04d}/{step + 1}.png" for step in range(len(frames))]
        for rel, frame in zip(sketch_rel, frames):
            _save(frame, root / "images" / rel)
        caption = CAPTIONS[number - 1]
        if split == "train":
            for text in (caption, caption.replace("a ", "one ", 1)):  # one row per caption
                train_rows.append({"photo": photo_rel, "photo_id": number, "caption": text, "sketch_sde": sketch_rel})
        else:
            test_rows.append({"photo": photo_rel, "caption": [caption], "sketch_sde": sketch_rel})
    (root / "annotation").mkdir(parents=True, exist_ok=True)
    (root / "annotation" / train_name).write_text(json.dumps(train_rows))
    (root / "annotation" / test_name).write_text(json.dumps(test_rows))
    return root


def build_slfir(root: Path) -> Path:
    """The SLFIR layout: ``comp/<split>/photo/*`` and ``sketch-seq/<split>/<photo>/<step>.png`` (no captions)."""
    for number, (split, photo, frames) in enumerate(_episodes(), start=1):
        _save(photo, root / "comp" / split / "photo" / f"image{number:04d}.jpg")
        for step, frame in enumerate(frames):
            _save(frame, root / "sketch-seq" / split / f"image{number:04d}" / f"{step + 1}.png")
    return root


def build_fvlp(root: Path) -> Path:
    """fvlp's own layout: ``train.json`` in the root, ``annotations/test.json``, paths relative to the root."""
    rows: dict[str, list] = {"train": [], "test": []}
    for number, (split, photo, frames) in enumerate(_episodes(), start=1):
        photo_id = f"{number:04d}"
        _save(photo, root / "photos" / f"{photo_id}.png")
        sketches = []
        for step, frame in enumerate(frames):
            rel = f"sketches/{photo_id}/{step}.png"
            _save(frame, root / rel)
            sketches.append(rel)
        caption = CAPTIONS[number - 1]
        rows[split].append(
            {
                "photo": f"photos/{photo_id}.png",
                "photo_id": photo_id,
                "caption": caption if split == "train" else [caption],
                "sketch_sde": sketches,
            }
        )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(rows["train"]))
    (root / "annotations" / "test.json").write_text(json.dumps(rows["test"]))
    return root


BUILDERS = {"fvlp-reference": build_reference, "slfir": build_slfir, "fvlp": build_fvlp}
