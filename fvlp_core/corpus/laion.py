"""An embedded, seeded LAION-Face-shaped corpus: metadata, image bytes and ground truth.

Every row is planned up front from the seed (cheap: no pixels), and its image is rendered
on demand from a per-row seed, so ``image_bytes`` is deterministic and independent of the
order rows are asked for. Noise is labelled in the ground truth with the stable names in
:data:`NOISE_LABELS`; a row is expected to survive cleaning only when it carries none.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from PIL import Image

from fvlp_core.corpus import laion_captions, scenes
from fvlp_core.corpus.faces import FaceParams, Stroke, attributes_of, crop_strokes, face_strokes, sample_identity

IMAGE_NOISE: dict[str, float] = {
    "no_face": 0.06,
    "multi_face": 0.05,
    "tiny_face": 0.04,
    "low_resolution": 0.03,
    "corrupt_image": 0.02,
    "truncated_image": 0.02,
}
CAPTION_NOISE: dict[str, float] = {"non_english": 0.06, "spam_caption": 0.04, "empty_caption": 0.03}
DUPLICATE_NOISE: dict[str, float] = {"duplicate": 0.03, "near_duplicate": 0.03}
NOISE_LABELS: tuple[str, ...] = (*IMAGE_NOISE, *CAPTION_NOISE, *DUPLICATE_NOISE)
# Rows whose image shows exactly one identifiable person.
_SINGLE_FACE = (None, "tiny_face", "low_resolution", "corrupt_image", "truncated_image")
_TRAIN_SHARE = 0.7
_SIZES = (
    (256, 256),
    (320, 320),
    (224, 224),
    (320, 240),
    (240, 320),
    (288, 216),
    (216, 288),
    (200, 200),
    (256, 192),
    (192, 256),
    (300, 300),
    (160, 160),
    (320, 213),
    (213, 320),
    (180, 240),
)
_DOMAINS = (
    "img.stockportraits.example",
    "cdn.newsphotos.example",
    "media.peoplemag.example",
    "i.pinboard.example",
    "static.blogcdn.example",
    "photos.socialnet.example",
    "images.shopfront.example",
)
_LICENSES = (
    "?",
    "?",
    "?",
    "?",
    "?",
    "creativecommons.org/licenses/by/2.0/",
    "creativecommons.org/licenses/by-nc-sa/2.0/",
)


@dataclass
class _Row:
    index: int
    sample_id: int
    image_noise: str | None
    caption_noise: str | None
    identity_id: int  # -1 when the image has no single person
    people: list[int] = field(default_factory=list)  # every identity drawn (group photos)
    width: int = 256
    height: int = 256
    photo_seed: int = 0
    copy_of: int | None = None  # row index of the original (duplicates)
    copy_kind: str | None = None
    text: str | None = None
    url: str = ""
    similarity: float = 0.3
    split: str = "train"

    @property
    def noise(self) -> list[str]:
        return [n for n in (self.image_noise, self.caption_noise, self.copy_kind) if n]


class EmbeddedCorpus:
    """A deterministic LAION-Face stand-in: ``rows`` samples of ``identities`` people, fixed by ``seed``."""

    def __init__(self, rows: int = 3000, identities: int = 1200, seed: int = 0):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if identities < 1:
            raise ValueError(f"identities must be >= 1, got {identities}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.rows, self.identities, self.seed = rows, identities, seed
        self._plan = self._make_plan()
        self._by_sample_id = {row.sample_id: row for row in self._plan}

    # ------------------------------------------------------------------ planning

    @cached_property
    def _identity_params(self) -> list[FaceParams]:
        rng = np.random.default_rng([self.seed, 1])
        return [sample_identity(rng) for _ in range(self.identities)]

    def identity_params(self, identity_id: int) -> FaceParams:
        if not 0 <= identity_id < self.identities:
            raise KeyError(f"identity_id {identity_id} not in corpus (0..{self.identities - 1})")
        return self._identity_params[identity_id]

    def _make_plan(self) -> list[_Row]:
        rng = np.random.default_rng([self.seed, 0])
        n = self.rows
        image_kinds = [None, *IMAGE_NOISE]
        image_p = [1 - sum(IMAGE_NOISE.values()), *IMAGE_NOISE.values()]
        image_noise = [image_kinds[k] for k in rng.choice(len(image_kinds), n, p=image_p)]
        caption_kinds = [None, *CAPTION_NOISE]
        caption_p = [1 - sum(CAPTION_NOISE.values()), *CAPTION_NOISE.values()]
        caption_noise = [caption_kinds[k] for k in rng.choice(len(caption_kinds), n, p=caption_p)]
        copy_kinds = [None, *DUPLICATE_NOISE]
        copy_p = [1 - sum(DUPLICATE_NOISE.values()), *DUPLICATE_NOISE.values()]
        copy_kind = [copy_kinds[k] for k in rng.choice(len(copy_kinds), n, p=copy_p)]
        copy_kind[0] = None  # a copy needs an earlier original

        single = [i for i in range(n) if image_noise[i] in _SINGLE_FACE and copy_kind[i] is None]
        if len(single) < self.identities:
            raise ValueError(
                f"EmbeddedCorpus(rows={n}, identities={self.identities}, seed={self.seed}): only {len(single)} rows "
                f"show a single person, fewer than the identities; use more rows or fewer identities"
            )
        identity = np.full(n, -1, np.int64)
        # Every identity appears at least once; the remaining rows revisit people at random.
        order = rng.permutation(len(single))
        identity[[single[k] for k in order[: self.identities]]] = rng.permutation(self.identities)
        rest = [single[k] for k in order[self.identities :]]
        identity[rest] = rng.integers(0, self.identities, len(rest))
        train_ids = set(rng.permutation(self.identities)[: int(round(self.identities * _TRAIN_SHARE))].tolist())

        sample_ids = 1_000_000 * (self.seed % 1000 + 1) + np.cumsum(rng.integers(1, 500, n))
        plan: list[_Row] = []
        for i in range(n):
            row = _Row(
                index=i,
                sample_id=int(sample_ids[i]),
                image_noise=image_noise[i],
                caption_noise=caption_noise[i],
                identity_id=int(identity[i]),
                photo_seed=int(rng.integers(0, 2**62)),
            )
            row.width, row.height = _SIZES[int(rng.integers(len(_SIZES)))]
            if copy_kind[i] is not None:
                original = plan[int(rng.integers(0, i))]
                while original.copy_of is not None:
                    original = plan[original.copy_of]
                row.copy_of, row.copy_kind = original.index, copy_kind[i]
                row.image_noise, row.identity_id, row.people = (
                    original.image_noise,
                    original.identity_id,
                    original.people,
                )
                row.photo_seed = original.photo_seed
                row.width, row.height = original.width, original.height
                if copy_kind[i] == "near_duplicate":
                    scale = rng.uniform(0.75, 0.95)
                    row.width, row.height = int(original.width * scale), int(original.height * scale)
            elif row.image_noise == "multi_face":
                row.people = rng.integers(0, self.identities, int(rng.integers(2, 5))).tolist()
                row.width, row.height = ((320, 240), (320, 213), (320, 180), (300, 200))[int(rng.integers(4))]
            elif row.image_noise == "tiny_face":
                row.width, row.height = ((320, 320), (320, 240), (300, 300))[int(rng.integers(3))]
            elif row.image_noise == "low_resolution":
                side = int(rng.integers(36, 72))
                row.width, row.height = side, int(side * rng.uniform(0.8, 1.25))
            if row.identity_id >= 0 and not row.people:
                row.people = [row.identity_id]
            row.text = self._caption(row, rng, plan)
            row.url = self._url(row, rng)
            clean_text = row.caption_noise is None and row.image_noise not in ("no_face",)
            row.similarity = float(max(0.3, rng.normal(0.335, 0.025) if clean_text else rng.normal(0.312, 0.01)))
            row.split = (
                ("train" if row.identity_id in train_ids else "test")
                if row.identity_id >= 0
                else ("train" if rng.random() < _TRAIN_SHARE else "test")
            )
            plan.append(row)
        return plan

    def _caption(self, row: _Row, rng: np.random.Generator, plan: list[_Row]) -> str | None:
        if row.caption_noise == "spam_caption":
            return laion_captions.spam_caption(rng)
        if row.caption_noise == "empty_caption":
            return laion_captions.empty_caption(rng)
        if row.copy_kind == "duplicate" and plan[_original_index(row)].text and rng.random() < 0.6:
            return plan[_original_index(row)].text  # the same image re-posted with the same alt-text
        if row.image_noise == "no_face":
            return laion_captions.no_face_caption(rng, non_english=row.caption_noise == "non_english")
        if row.image_noise == "multi_face":
            return laion_captions.group_caption(rng, non_english=row.caption_noise == "non_english")
        params = self.identity_params(row.identity_id)
        if row.caption_noise == "non_english":
            return laion_captions.non_english_caption(params, rng)
        return laion_captions.clean_caption(params, row.identity_id, rng)

    @staticmethod
    def _url(row: _Row, rng: np.random.Generator) -> str:
        domain = _DOMAINS[int(rng.integers(len(_DOMAINS)))]
        slug = f"{rng.integers(0, 16**12):012x}"
        ext = "png" if _is_png(row) else "jpg"
        return f"https://{domain}/{int(rng.integers(2008, 2021))}/{int(rng.integers(1, 13)):02d}/{slug}.{ext}"

    # ------------------------------------------------------------------ tables

    def metadata(self) -> pd.DataFrame:
        """LAION-400M-style metadata, one row per sample (``TEXT`` may be null)."""
        plan = self._plan
        rng = np.random.default_rng([self.seed, 2])
        return pd.DataFrame(
            {
                "SAMPLE_ID": pd.array([r.sample_id for r in plan], dtype="int64"),
                "URL": pd.array([r.url for r in plan], dtype="string"),
                "TEXT": pd.array([r.text for r in plan], dtype="string"),
                "WIDTH": pd.array([r.width for r in plan], dtype="int64"),
                "HEIGHT": pd.array([r.height for r in plan], dtype="int64"),
                "similarity": np.array([r.similarity for r in plan], dtype=np.float64),
                "LICENSE": pd.array([_LICENSES[k] for k in rng.integers(0, len(_LICENSES), len(plan))], dtype="string"),
                "NSFW": pd.array(np.where(rng.random(len(plan)) < 0.03, "UNSURE", "UNLIKELY"), dtype="string"),
            }
        )

    def ground_truth(self) -> pd.DataFrame:
        """What cleaning should find: noise labels, who is in the picture, their attributes, the split."""
        rows = []
        for r in self._plan:
            single = r.identity_id >= 0
            rows.append(
                {
                    "SAMPLE_ID": r.sample_id,
                    "identity_id": r.identity_id,
                    "noise": r.noise,
                    "expected_keep": not r.noise,
                    "n_faces": len(r.people),
                    "attributes": attributes_of(self.identity_params(r.identity_id)) if single else [],
                    "split": r.split,
                }
            )
        frame = pd.DataFrame(rows)
        frame["SAMPLE_ID"] = frame["SAMPLE_ID"].astype("int64")
        frame["identity_id"] = frame["identity_id"].astype("int64")
        frame["n_faces"] = frame["n_faces"].astype("int32")
        return frame

    def sample_ids(self) -> list[int]:
        return [r.sample_id for r in self._plan]

    # ------------------------------------------------------------------ images

    def image_bytes(self, sample_id: int) -> bytes:
        """The encoded image of ``sample_id`` (JPEG or PNG; deliberately broken for corrupt/truncated rows)."""
        row = self._row(sample_id)
        if row.copy_kind == "duplicate":
            return self.image_bytes(self._plan[_original_index(row)].sample_id)
        rng = np.random.default_rng(row.photo_seed)
        image = self._render(row, rng)
        if row.copy_kind == "near_duplicate":
            image = _near_copy(image, row.width, row.height, self._near_copy_rng(row))
        data = _encode(image, png=_is_png(row), quality=int(rng.integers(72, 96)))
        if row.image_noise == "corrupt_image":
            return _corrupt(data, rng)
        if row.image_noise == "truncated_image":
            return data[: int(len(data) * rng.uniform(0.3, 0.8))]
        return data

    def image(self, sample_id: int) -> Image.Image:
        """Decoded image of a sample (raises on corrupt/truncated rows, as a reader would)."""
        image = Image.open(io.BytesIO(self.image_bytes(sample_id)))
        image.load()
        return image.convert("RGB")

    def photo_strokes(self, sample_id: int) -> list[Stroke]:
        """The line drawing of the person in ``sample_id``'s image, in that image's pixel frame.

        Exact for every single-person row (pose, scale, roll and yaw of that photo; a
        near-duplicate's crop and resize included), so a sketch lines up with the photo. Rows
        without one person (``no_face``, ``multi_face``) raise ValueError.
        """
        row = self._row(sample_id)
        if row.identity_id < 0:
            raise ValueError(f"SAMPLE_ID {sample_id} has no single person ({', '.join(row.noise)})")
        width, height = self._render_size(row)
        rng = np.random.default_rng(row.photo_seed)
        if row.image_noise == "tiny_face":
            place = scenes.tiny_face_placement(width, height, rng)
        else:
            place = scenes.portrait_placement(width, height, rng)
        strokes = face_strokes(self.identity_params(row.identity_id), (width, height), place)
        if row.copy_kind != "near_duplicate":
            return strokes
        box = _near_copy_box(width, height, self._near_copy_rng(row))
        return crop_strokes(strokes, box, (row.width, row.height))

    def _row(self, sample_id: int) -> _Row:
        row = self._by_sample_id.get(int(sample_id))
        if row is None:
            raise KeyError(f"SAMPLE_ID {sample_id} is not in this corpus (seed={self.seed}, rows={self.rows})")
        return row

    def _render_size(self, row: _Row) -> tuple[int, int]:
        """A near-duplicate is rendered at its original's size, then cropped and shrunk."""
        source = self._plan[_original_index(row)] if row.copy_kind == "near_duplicate" else row
        return source.width, source.height

    @staticmethod
    def _near_copy_rng(row: _Row) -> np.random.Generator:
        return np.random.default_rng([row.photo_seed, row.index])

    def _render(self, row: _Row, rng: np.random.Generator) -> Image.Image:
        kind = row.image_noise
        width, height = self._render_size(row)
        if kind == "no_face":
            return scenes.no_face(width, height, rng)
        if kind == "multi_face":
            return scenes.group([self.identity_params(i) for i in row.people], width, height, rng)
        params = self.identity_params(row.identity_id)
        if kind == "tiny_face":
            return scenes.tiny_face(params, width, height, rng)
        return scenes.portrait(params, width, height, rng)


def _is_png(row: _Row) -> bool:
    return row.photo_seed % 10 == 0  # about one image in ten is a PNG, as on the web


def _encode(image: Image.Image, png: bool, quality: int) -> bytes:
    buffer = io.BytesIO()
    if png:
        image.save(buffer, format="PNG", optimize=False, compress_level=3)
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _near_copy_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The crop a re-post keeps of the original (up to 4 % off each side); drawn from ``rng`` first."""
    left, top = int(width * rng.uniform(0, 0.04)), int(height * rng.uniform(0, 0.04))
    return left, top, width - int(width * rng.uniform(0, 0.04)), height - int(height * rng.uniform(0, 0.04))


def _near_copy(image: Image.Image, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """The same photo re-posted: slightly cropped, resized, colour-shifted."""
    cropped = image.crop(_near_copy_box(*image.size, rng))
    resized = cropped.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, np.float32) * rng.uniform(0.92, 1.08) + rng.uniform(-8, 8)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes that claim to be an image but cannot be decoded."""
    kind = int(rng.integers(3))
    if kind == 0:  # header kept, everything after it overwritten with noise
        return data[:2] + rng.integers(0, 256, len(data) - 2, dtype=np.uint8).tobytes()
    if kind == 1:  # an HTML error page served with an image URL
        return b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>"
    # The magic number zeroed: no decoder recognises the format.
    return bytes(16) + data[16:]


def _original_index(row: _Row) -> int:
    """The plan index of the row a duplicate or near-duplicate copies."""
    if row.copy_of is None:
        raise ValueError(f"SAMPLE_ID {row.sample_id} is no copy")
    return row.copy_of
