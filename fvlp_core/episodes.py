"""Drawing episodes: stroke line art rendered as T cumulative sketches, as people draw.

Strokes come either exactly from the embedded corpus (``face_strokes``) or, for real
photos, from edge extraction (:func:`line_art_strokes`: Canny edges traced into polylines
and ordered by facial region). Either way they are drawn in the order of FS2K-SDE's
annotators: hair, face contour, mouth, eyes, nose, details.

Step pacing: the whole drawing's ink (polyline arc length) is spread evenly over T steps,
so step t shows the first (t + 1) / T of the ink, in stroke order; a step boundary may
fall inside a stroke, as it does when someone is interrupted mid-line. Every episode
therefore has exactly T distinct-by-construction frames ending on the finished sketch.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from fvlp_core.corpus.faces import STROKE_GROUPS, Stroke
from fvlp_core.detection.crop import ARCFACE_TEMPLATE

DEFAULT_STEPS = 50  # T, as evaluated in the paper
INK = 0
PAPER = 255
GROUP_RANK = {group: i for i, group in enumerate(STROKE_GROUPS)}


def order_strokes(strokes: Sequence[Stroke]) -> list[Stroke]:
    """Group order (hair first, details last), keeping the given order within a group."""
    unknown = sorted({s.group for s in strokes} - set(GROUP_RANK))
    if unknown:
        raise ValueError(f"unknown stroke group(s) {unknown}; expected {STROKE_GROUPS}")
    return sorted(strokes, key=lambda s: GROUP_RANK[s.group])


def _arc_lengths(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length at each vertex (starts at 0)."""
    if len(points) < 2:
        return np.zeros(len(points))
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _draw(draw: ImageDraw.ImageDraw, points: np.ndarray, width: float) -> None:
    w = max(1, int(round(width)))
    if len(points) == 1 or np.ptp(points, axis=0).max() < 0.5:
        x, y = points[0]
        r = max(0.5, width / 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=INK)
        return
    draw.line([tuple(p) for p in points], fill=INK, width=w, joint="curve" if w > 2 else None)


def _reveal_positions(points: np.ndarray, cumulative: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Arc length along the polyline of the point nearest to each ink pixel (x, y)."""
    if cumulative[-1] <= 0.0:
        return np.zeros(len(ys))
    samples = np.arange(0.0, cumulative[-1] + 0.5, 0.5)
    path = np.stack([np.interp(samples, cumulative, points[:, i]) for i in (0, 1)], axis=1)
    pixels = np.stack([xs, ys], axis=1).astype(np.float64)
    nearest = np.empty(len(pixels), dtype=np.int64)
    for chunk in range(0, len(pixels), 4096):  # bounded memory on long strokes
        d = ((pixels[chunk : chunk + 4096, None, :] - path[None, :, :]) ** 2).sum(axis=2)
        nearest[chunk : chunk + 4096] = d.argmin(axis=1)
    return samples[nearest]


def render_episode(strokes: Sequence[Stroke], size: int | tuple[int, int], steps: int = DEFAULT_STEPS) -> np.ndarray:
    """``steps`` cumulative sketches of ``strokes`` (already in drawing order): uint8 (T, H, W).

    Dark ink on white. Step t holds the first (t + 1) / T of the total ink. Each stroke is
    rasterised whole and its pixels are revealed in the order the pen passes them, so the
    frames are exactly cumulative and the last one is the finished drawing for every T
    (drawing the pieces of a split stroke separately would add or lose pixels at the splits).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    width, height = (size, size) if isinstance(size, int) else size
    frames = np.full((steps, height, width), PAPER, dtype=np.uint8)
    if not strokes:
        return frames

    # reveal[y, x]: ink position (arc length over the whole drawing) at which the pixel appears
    reveal = np.full((height, width), np.inf)
    position = 0.0
    for stroke in strokes:
        points = np.asarray(stroke.points, dtype=np.float64).reshape(-1, 2)
        cumulative = _arc_lengths(points)
        real = cumulative[-1] if len(cumulative) else 0.0
        length = max(real, 1.0)  # a dot still takes ink, so it appears at its turn
        canvas = Image.new("L", (width, height), PAPER)
        _draw(ImageDraw.Draw(canvas), points, stroke.width)
        ys, xs = np.nonzero(np.asarray(canvas) == INK)
        along = _reveal_positions(points, cumulative, ys, xs) * (length / real if real > 0.0 else 0.0)
        reveal[ys, xs] = np.minimum(reveal[ys, xs], position + along)
        position += length

    for t in range(steps - 1):
        frames[t][reveal <= position * (t + 1) / steps] = INK
    frames[-1][np.isfinite(reveal)] = INK
    return frames


def transform_strokes(strokes: Sequence[Stroke], matrix: np.ndarray) -> list[Stroke]:
    """Apply a 2x3 affine map to every stroke (widths scale with the map's area factor)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return [
        Stroke(s.group, np.asarray(s.points) @ matrix[:, :2].T + matrix[:, 2], max(1.0, s.width * scale))
        for s in strokes
    ]


def crop_layout(margin: float) -> np.ndarray:
    """Where a landmark-aligned crop puts eyes, nose tip and mouth corners (fractions of its side).

    The clean stage maps the detector's 5 landmarks onto the ArcFace 112 px template shrunk
    by ``margin`` per side (``fvlp_core.detection.crop``), so these positions are fixed.
    """
    return (ARCFACE_TEMPLATE.astype(np.float64) - 56.0) / (112.0 * (1.0 + 2.0 * margin)) + 0.5


def stroke_landmarks(strokes: Sequence[Stroke]) -> np.ndarray | None:
    """The 5 detector-style landmarks of a corpus line drawing, or None if it lacks the parts.

    Eyes: centres of the two smallest closed loops of the ``eyes`` group (the pupils); nose
    tip: the ``nose`` strokes' median x at their lower part; mouth corners: the leftmost and
    rightmost ``mouth`` points.
    """
    loops = [
        np.asarray(s.points)
        for s in strokes
        if s.group == "eyes" and len(s.points) >= 8 and np.linalg.norm(s.points[0] - s.points[-1]) < 1e-6
    ]
    nose = [np.asarray(s.points) for s in strokes if s.group == "nose"]
    mouth = [np.asarray(s.points) for s in strokes if s.group == "mouth"]
    if len(loops) < 2 or not nose or not mouth:
        return None
    pupils = sorted(loops, key=lambda p: float(np.ptp(p, axis=0).max()))[:2]
    left_eye, right_eye = sorted((p.mean(axis=0) for p in pupils), key=lambda c: c[0])
    nose_points, mouth_points = np.vstack(nose), np.vstack(mouth)
    nose_tip = np.array([np.median(nose_points[:, 0]), np.quantile(nose_points[:, 1], 0.7)])
    return np.array(
        [
            left_eye,
            right_eye,
            nose_tip,
            mouth_points[np.argmin(mouth_points[:, 0])],
            mouth_points[np.argmax(mouth_points[:, 0])],
        ]
    )


def align_to_crop(strokes: Sequence[Stroke], size: int, margin: float) -> np.ndarray | None:
    """2x3 similarity taking corpus strokes into a ``size`` px landmark-aligned crop, as the crop was made.

    The cleaned crop is the detector's landmark-aligned crop of a jittered photo while the
    strokes live in the canonical render frame; mapping the drawing's own landmarks onto
    the crop layout puts the sketch where the face is. None when the drawing lacks them.
    """
    marks = stroke_landmarks(strokes)
    if marks is None:
        return None
    matrix, _ = cv2.estimateAffinePartial2D(marks.astype(np.float32), (crop_layout(margin) * size).astype(np.float32))
    return matrix


def corpus_episode(
    strokes: Sequence[Stroke], size: int, steps: int = DEFAULT_STEPS, crop_margin: float | None = 0.25
) -> tuple[np.ndarray, bool]:
    """Episode of an embedded-corpus face from its exact strokes (drawn at ``size``, the crop's side).

    With ``crop_margin`` the strokes are moved into the landmark-aligned crop's frame
    (:func:`align_to_crop`); None, or a drawing without landmarks, leaves them in the
    canonical render frame. Returns the frames and whether they were aligned.
    """
    matrix = None if crop_margin is None else align_to_crop(strokes, size, crop_margin)
    placed = order_strokes(strokes) if matrix is None else transform_strokes(order_strokes(strokes), matrix)
    return render_episode(placed, size, steps), matrix is not None


# --------------------------------------------------------------------------- line art from photos

# Where faces sit in the clean stage's crops (default 25 % margin); line art uses it as the
# landmark layout when none is given.
DEFAULT_LAYOUT = crop_layout(0.25)


def face_region(point: np.ndarray, landmarks: np.ndarray) -> str:
    """Which stroke group a point belongs to, from the 5 landmarks (eyes, nose, mouth corners)."""
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
    eyes = (left_eye + right_eye) / 2
    mouth = (mouth_left + mouth_right) / 2
    iod = max(float(np.linalg.norm(right_eye - left_eye)), 1.0)
    drop = max(float(mouth[1] - eyes[1]), 1.0)  # eye-to-mouth height
    x, y = point

    # Face oval from above the brows to below the chin.
    centre = np.array([eyes[0], eyes[1] + 0.35 * drop])
    radius = np.hypot((x - centre[0]) / (1.05 * iod), (y - centre[1]) / (1.6 * drop))
    near_eye = min(np.linalg.norm(point - left_eye), np.linalg.norm(point - right_eye)) < 0.5 * iod
    if near_eye and eyes[1] - 0.6 * drop < y < eyes[1] + 0.3 * drop:
        return "eyes"  # eyes and brows
    if abs(x - nose[0]) < 0.35 * iod and eyes[1] + 0.2 * drop < y < nose[1] + 0.25 * drop:
        return "nose"
    if ((x - mouth[0]) / (0.75 * iod)) ** 2 + ((y - mouth[1]) / (0.45 * drop)) ** 2 < 1:
        return "mouth"
    if radius > 1.15 or (radius > 0.8 and y < eyes[1] - 0.5 * drop):
        return "contour" if y > mouth[1] + 0.6 * drop else "hair"  # below the chin: neck/shoulders
    if radius > 0.8:
        return "contour"
    return "details"


def edge_map(image: np.ndarray) -> np.ndarray:
    """Canny edges of a photo, thresholds from Otsu on the lightly blurred grey image."""
    image = np.asarray(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image.astype(np.uint8)
    sigma = max(0.8, min(grey.shape) / 160)
    blurred = cv2.GaussianBlur(grey, (0, 0), sigma)
    high, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = max(float(high), 20.0)
    return cv2.Canny(blurred, 0.4 * high, high)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive True values."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def line_art_strokes(
    image: np.ndarray, landmarks: np.ndarray | None = None, min_length: float | None = None, width: float = 1.0
) -> list[Stroke]:
    """Line art of a face photo as strokes in drawing order (hair, contour, mouth, eyes, nose, details).

    Edges are traced into polylines (each edge pixel used once: a 1-pixel edge is traced
    out and back by the contour follower), short fragments dropped, and each polyline
    assigned to a facial region from ``landmarks`` (5 x 2: eyes, nose tip, mouth corners,
    in image pixels; default: a centred frontal layout). Within a region strokes go top to
    bottom, then left to right.
    """
    image = np.asarray(image)
    height, width_px = image.shape[:2]
    marks = (
        DEFAULT_LAYOUT * [width_px, height] if landmarks is None else np.asarray(landmarks, np.float64).reshape(5, 2)
    )
    min_length = max(4.0, 0.04 * min(height, width_px)) if min_length is None else min_length

    edges = edge_map(image)
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    visited = np.zeros(edges.shape, dtype=bool)
    pieces: list[np.ndarray] = []
    for contour in contours:
        pts = contour[:, 0, :]
        flat = pts[:, 1] * width_px + pts[:, 0]
        first = np.zeros(len(pts), dtype=bool)
        first[np.unique(flat, return_index=True)[1]] = True
        fresh = first & ~visited[pts[:, 1], pts[:, 0]]
        visited[pts[:, 1], pts[:, 0]] = True
        for start, stop in _runs(fresh):
            run = pts[start:stop].astype(np.float64)
            if _arc_lengths(run)[-1] >= min_length:
                pieces.append(cv2.approxPolyDP(run.astype(np.float32), 0.7, False)[:, 0, :].astype(np.float64))

    eye_y = float(marks[:2, 1].mean())
    drop = max(float(marks[3:, 1].mean()) - eye_y, 1.0)

    def key(piece: np.ndarray) -> tuple[int, float, float]:
        centre = piece.mean(axis=0)
        top, bottom = float(piece[:, 1].min()), float(piece[:, 1].max())
        # A long line starting above the brows is a lock of hair, wherever its middle falls.
        reaches_up = top < eye_y - 0.8 * drop and bottom - top > drop
        group = "hair" if reaches_up else face_region(centre, marks)
        return GROUP_RANK[group], top, float(centre[0])

    return [Stroke(STROKE_GROUPS[key(p)[0]], p, width) for p in sorted(pieces, key=key)]


def photo_episode(photo: np.ndarray, steps: int = DEFAULT_STEPS, landmarks: np.ndarray | None = None) -> np.ndarray:
    """Episode of any face photo (no corpus parameters): its edge line art, drawn in order."""
    height, width = np.asarray(photo).shape[:2]
    return render_episode(line_art_strokes(photo, landmarks), (width, height), steps)
