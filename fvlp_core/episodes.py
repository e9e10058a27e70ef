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

import io
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from fvlp_core.corpus.faces import STROKE_GROUPS, Stroke

DEFAULT_STEPS = 50  # T, as evaluated in the paper
INK = 0
PAPER = 255
GROUP_RANK = {group: i for i, group in enumerate(STROKE_GROUPS)}
COARSE_ZOOMS = tuple(np.round(np.arange(0.7, 2.31, 0.1), 2))  # face size in crop / in render, searched


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


def _sub_polyline(points: np.ndarray, cumulative: np.ndarray, start: float, stop: float) -> np.ndarray:
    """The part of a polyline between arc lengths ``start`` and ``stop`` (interpolated ends)."""
    inner = (cumulative > start) & (cumulative < stop)
    ends = [np.interp(start, cumulative, points[:, i]) for i in (0, 1)], [np.interp(stop, cumulative, points[:, i]) for i in (0, 1)]
    return np.vstack([ends[0], points[inner], ends[1]])


def _draw(draw: ImageDraw.ImageDraw, points: np.ndarray, width: float) -> None:
    w = max(1, int(round(width)))
    if len(points) == 1 or np.ptp(points, axis=0).max() < 0.5:
        x, y = points[0]
        r = max(0.5, width / 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=INK)
        return
    draw.line([tuple(p) for p in points], fill=INK, width=w, joint="curve" if w > 2 else None)


def render_episode(strokes: Sequence[Stroke], size: int | tuple[int, int], steps: int = DEFAULT_STEPS) -> np.ndarray:
    """``steps`` cumulative sketches of ``strokes`` (already in drawing order): uint8 (T, H, W).

    Dark ink on white. Step t holds the first (t + 1) / T of the total ink.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    width, height = (size, size) if isinstance(size, int) else size
    canvas = Image.new("L", (width, height), PAPER)
    draw = ImageDraw.Draw(canvas)
    frames = np.empty((steps, height, width), dtype=np.uint8)
    if not strokes:
        frames[:] = PAPER
        return frames

    points = [np.asarray(s.points, dtype=np.float64).reshape(-1, 2) for s in strokes]
    cumulative = [_arc_lengths(p) for p in points]
    # A dot still takes ink, so it appears at its turn rather than all at once.
    lengths = np.array([max(c[-1] if len(c) else 0.0, 1.0) for c in cumulative])
    total = float(lengths.sum())
    stroke, done_in_stroke, position = 0, 0.0, 0.0
    for t in range(steps):
        target = total if t == steps - 1 else total * (t + 1) / steps
        while stroke < len(strokes) and position < target - 1e-9:
            stop = min(lengths[stroke], done_in_stroke + (target - position))
            real = cumulative[stroke][-1] if len(cumulative[stroke]) else 0.0
            if real <= 0.0:
                _draw(draw, points[stroke][:1], strokes[stroke].width)
            else:
                scale = real / lengths[stroke]
                _draw(draw, _sub_polyline(points[stroke], cumulative[stroke], done_in_stroke * scale, stop * scale),
                      strokes[stroke].width)
            position += stop - done_in_stroke
            done_in_stroke = stop
            if done_in_stroke >= lengths[stroke] - 1e-9:
                stroke, done_in_stroke = stroke + 1, 0.0
        frames[t] = np.asarray(canvas)
    return frames


def transform_strokes(strokes: Sequence[Stroke], matrix: np.ndarray) -> list[Stroke]:
    """Apply a 2x3 affine map to every stroke (widths scale with the map's area factor)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return [Stroke(s.group, np.asarray(s.points) @ matrix[:, :2].T + matrix[:, 2], max(1.0, s.width * scale))
            for s in strokes]


def _coarse_warp(template: np.ndarray, moving: np.ndarray) -> tuple[float, np.ndarray]:
    """Best zoom + shift taking ``template`` (photo) coordinates to ``moving`` (render) ones.

    The photo's central part (mostly face, little backdrop) is shrunk by each candidate
    zoom and located in the edge-padded render by normalised cross-correlation.
    """
    side = template.shape[0]
    pad = side // 2
    padded = cv2.copyMakeBorder(moving, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    inner = slice(int(side * 0.2), int(side * 0.8))
    centre_part = template[inner, inner]
    best = (-1.0, np.eye(2, 3, dtype=np.float32))
    for zoom in COARSE_ZOOMS:
        size = max(8, round(centre_part.shape[0] / zoom))
        scores = cv2.matchTemplate(padded, cv2.resize(centre_part, (size, size), interpolation=cv2.INTER_AREA),
                                   cv2.TM_CCOEFF_NORMED)
        _, score, _, (x, y) = cv2.minMaxLoc(scores)
        if score > best[0]:
            # photo point p -> render point (p - inner_start) / zoom + (x, y) - pad
            offset = np.array([x - pad, y - pad], dtype=np.float32) - inner.start / zoom
            best = (float(score), np.hstack([np.eye(2, dtype=np.float32) / zoom, offset[:, None]]).astype(np.float32))
    return best


def align_render_to_photo(render: np.ndarray, photo: np.ndarray, min_correlation: float = 0.6,
                          work_size: int = 96) -> np.ndarray | None:
    """Affine map from a canonical render's pixel frame into ``photo``'s, or None if unsure.

    The cleaned crop is the detector's crop of a jittered photo, framed tighter or looser
    than the canonical render the corpus strokes live in. A coarse zoom/shift search
    (normalised cross-correlation) followed by enhanced-correlation (ECC) affine refinement,
    both on grey images at most ``work_size`` pixels wide, recovers the map. A weak fit
    (correlation below ``min_correlation``, or a scale outside 0.4..2.5) returns None and
    the caller keeps the canonical frame.
    """
    photo_h, photo_w = np.asarray(photo).shape[:2]
    render_h, render_w = np.asarray(render).shape[:2]
    side = min(work_size, max(photo_h, photo_w))
    template = cv2.resize(_grey_float(photo), (side, side), interpolation=cv2.INTER_AREA)
    moving = cv2.resize(_grey_float(render), (side, side), interpolation=cv2.INTER_AREA)
    coarse_score, warp = _coarse_warp(template, moving)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    try:
        correlation, warp = cv2.findTransformECC(template, moving, warp, cv2.MOTION_AFFINE, criteria, None, 5)
    except cv2.error:
        correlation = coarse_score  # refinement did not converge: keep the coarse fit
    # The warp maps photo coordinates to render coordinates (both at working size): invert
    # it for the strokes, then conjugate with the two resizes.
    to_photo_small = np.linalg.inv(np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]]))
    into_small = np.diag([side / render_w, side / render_h, 1.0])
    out_of_small = np.diag([photo_w / side, photo_h / side, 1.0])
    to_photo = (out_of_small @ to_photo_small @ into_small)[:2]
    scale = float(np.sqrt(abs(np.linalg.det(to_photo[:, :2]))) * render_w / photo_w)
    if correlation < min_correlation or not 0.4 <= scale <= 2.5:
        return None
    return to_photo


def corpus_episode(strokes: Sequence[Stroke], canonical: np.ndarray | None, photo: np.ndarray,
                   steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, bool]:
    """Episode of an embedded-corpus photo from its exact strokes (drawn at the photo's size).

    ``canonical`` is the un-jittered render the strokes match; when given, the strokes are
    registered onto ``photo`` (a detector crop). Returns the frames and whether they were
    aligned (False: left in the canonical frame, offset from the crop by the detector's
    crop box).
    """
    height, width = np.asarray(photo).shape[:2]
    matrix = None if canonical is None else align_render_to_photo(canonical, photo)
    placed = order_strokes(strokes) if matrix is None else transform_strokes(order_strokes(strokes), matrix)
    return render_episode(placed, (width, height), steps), matrix is not None


def _grey_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return grey.astype(np.float32) / 255.0


# --------------------------------------------------------------------------- line art from photos

# Facial layout of a landmark-aligned crop (fractions of width/height): eyes, nose tip,
# mouth corners of the ArcFace template with the clean stage's default 25 % margin, which
# is where the crop puts them. Used when no landmarks are given.
DEFAULT_LAYOUT = np.array([[0.395, 0.474], [0.604, 0.473], [0.500, 0.594], [0.414, 0.716], [0.588, 0.715]])


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


def line_art_strokes(image: np.ndarray, landmarks: np.ndarray | None = None, min_length: float | None = None,
                     width: float = 1.0) -> list[Stroke]:
    """Line art of a face photo as strokes in drawing order (hair, contour, mouth, eyes, nose, details).

    Edges are traced into polylines (each edge pixel used once: a 1-pixel edge is traced
    out and back by the contour follower), short fragments dropped, and each polyline
    assigned to a facial region from ``landmarks`` (5 x 2: eyes, nose tip, mouth corners,
    in image pixels; default: a centred frontal layout). Within a region strokes go top to
    bottom, then left to right.
    """
    image = np.asarray(image)
    height, width_px = image.shape[:2]
    marks = DEFAULT_LAYOUT * [width_px, height] if landmarks is None else np.asarray(landmarks, np.float64).reshape(5, 2)
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


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def photo_episode(photo: np.ndarray, steps: int = DEFAULT_STEPS, landmarks: np.ndarray | None = None) -> np.ndarray:
    """Episode of any face photo (no corpus parameters): its edge line art, drawn in order."""
    height, width = np.asarray(photo).shape[:2]
    return render_episode(line_art_strokes(photo, landmarks), (width, height), steps)
