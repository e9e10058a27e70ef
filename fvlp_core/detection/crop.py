"""Square face crops: similarity-aligned on the 5 landmarks when present, else box-centred.

Alignment maps the landmarks onto the ArcFace 112x112 template (the layout insightface's
recognisers were trained on), shrunk by ``margin`` so hair and chin stay in the crop,
which the sketch-matching stage needs.
"""

from __future__ import annotations

import cv2
import numpy as np

# Eyes, nose tip, mouth corners of a frontal face in a 112 x 112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def crop_face(rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None, size: int, margin: float) -> np.ndarray:
    """An ``(size, size, 3)`` crop of the face at ``box`` (x1, y1, x2, y2)."""
    if landmarks is not None and np.all(np.isfinite(landmarks)):
        aligned = _aligned_crop(rgb, landmarks, size, margin)
        if aligned is not None:
            return aligned
    return _box_crop(rgb, box, size, margin)


def _aligned_crop(rgb: np.ndarray, landmarks: np.ndarray, size: int, margin: float) -> np.ndarray | None:
    scale = size / (112.0 * (1.0 + 2.0 * margin))
    target = (ARCFACE_TEMPLATE - 56.0) * scale + size / 2.0
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), target, method=cv2.LMEDS)
    if matrix is None:
        return None  # degenerate landmarks (all on one point): fall back to the box
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _box_crop(rgb: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    scale = size / max(side, 1.0)
    # One affine warp does crop, pad (black outside the image) and resize together.
    matrix = np.array([[scale, 0.0, size / 2.0 - cx * scale], [0.0, scale, size / 2.0 - cy * scale]], dtype=np.float32)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def laplacian_variance(rgb: np.ndarray) -> float:
    """Sharpness: variance of the Laplacian of the grey image (low = blurry)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
