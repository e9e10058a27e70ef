"""Everything the image rules need, measured once per image.

The measurements (not the accept/reject decisions) are what gets stored, so a
threshold change re-decides from them without running the detector again; only a
new detector or new crop settings invalidate them (see ``ImageParams.version``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from fvlp_core.codec import CROP_ENCODING, encode_crop
from fvlp_core.detection.backends import FaceDetector
from fvlp_core.detection.crop import crop_face, laplacian_variance
from fvlp_core.detection.images import ImageRejected, decode_rgb


@dataclass(frozen=True)
class ImageParams:
    """Settings that change image measurements (thresholds are not among them)."""

    detector_identity: str
    max_image_pixels: int
    crop_size: int
    crop_margin: float
    crop_encoding: str = CROP_ENCODING

    @property
    def version(self) -> str:
        return hashlib.sha1(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]


def empty_measurement() -> dict:
    return {
        "image_error_rule": None,
        "image_error": None,
        "image_width": None,
        "image_height": None,
        "face_scores": [],
        "face_areas": [],
        "face_score": None,
        "face_fraction": None,
        "sharpness": None,
        "box": None,
        "landmarks": None,
        "crop": None,
        "image_phash": None,
    }


def measure_image(data: bytes | None, detector: FaceDetector, params: ImageParams) -> dict:
    """Decode, detect, crop the main face; never raises for a bad image (the error is recorded)."""
    row = empty_measurement()
    try:
        rgb = decode_rgb(data, params.max_image_pixels)
    except ImageRejected as rejected:
        row["image_error_rule"], row["image_error"] = rejected.rule, rejected.message
        return row
    height, width = rgb.shape[:2]
    row["image_width"], row["image_height"] = width, height
    row["image_phash"] = perceptual_hash(rgb)
    if min(height, width) < 8:
        return row  # nothing a detector can look at; image_too_small will reject it
    found = detector.detect(rgb)
    if len(found) == 0:
        return row
    areas = (found.boxes[:, 2] - found.boxes[:, 0]).clip(0) * (found.boxes[:, 3] - found.boxes[:, 1]).clip(0)
    main = int(np.argmax(areas))  # the subject is the largest face, not the most confident one
    landmarks = None if found.landmarks is None else found.landmarks[main]
    crop = crop_face(rgb, found.boxes[main], landmarks, params.crop_size, params.crop_margin)
    row.update(
        face_scores=found.scores.tolist(),
        face_areas=areas.tolist(),
        face_score=float(found.scores[main]),
        face_fraction=float(np.sqrt(areas[main] / (width * height))),
        sharpness=laplacian_variance(crop),
        box=found.boxes[main].tolist(),
        landmarks=None if landmarks is None else landmarks.reshape(-1).tolist(),
        crop=encode_crop(crop),
    )
    return row


def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit DCT hash of the whole image: re-posts (re-encoded, slightly cropped/resized/recoloured) stay close."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    low = cv2.dct(cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA))[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int(np.packbits(bits).view(">i8")[0])
