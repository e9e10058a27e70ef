"""The line drawing of a face: the outlines of its geometry as pen strokes, in drawing groups."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fvlp_core.corpus.faces.geometry import CAP_POINTS, SIDES, Placement, arc, default_placement, face_geometry
from fvlp_core.corpus.faces.identity import FaceParams

STROKE_GROUPS: tuple[str, ...] = ("hair", "contour", "mouth", "eyes", "nose", "details")


@dataclass(frozen=True)
class Stroke:
    """One pen stroke: a polyline in image pixels, drawn as part of ``group``."""

    group: str
    points: np.ndarray  # (N, 2) float, x then y
    width: float


def _split(points: np.ndarray, pieces: int) -> list[np.ndarray]:
    """Cut a long outline into ``pieces`` overlapping polylines (people draw in segments)."""
    bounds = np.linspace(0, len(points) - 1, pieces + 1).round().astype(int)
    return [points[a : b + 1] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _closed(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, points[:1]])


def _inside(points: np.ndarray, polygon: np.ndarray | None) -> np.ndarray:
    """Even-odd point-in-polygon test for many points at once."""
    if polygon is None:
        return np.zeros(len(points), bool)
    x, y = points[:, :1], points[:, 1:]
    ax, ay = polygon[:, 0], polygon[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    crosses = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = ax + (y - ay) * (bx - ax) / (by - ay)
    return ((crosses & (x < x_at)).sum(axis=1) % 2).astype(bool)


def _densify(points: np.ndarray, step: float = 0.04) -> np.ndarray:
    """Insert points so no segment is longer than ``step`` (visibility is tested per point)."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(math.ceil(np.hypot(*(b - a)) / step)))
        out.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(out)


def _visible_runs(points: np.ndarray, hidden: np.ndarray) -> list[np.ndarray]:
    """The pieces of a polyline whose points are not ``hidden``."""
    runs: list[np.ndarray] = []
    current: list[np.ndarray] = []
    for point, off in zip(points, hidden):
        if off:
            if len(current) >= 2:
                runs.append(np.array(current))
            current = []
        else:
            current.append(point)
    if len(current) >= 2:
        runs.append(np.array(current))
    return runs


def crop_strokes(strokes: list[Stroke], box: tuple[float, float, float, float], size: tuple[int, int]) -> list[Stroke]:
    """Strokes as seen in the crop ``box`` (left, top, right, bottom) resized to ``size``.

    Parts falling outside the crop are dropped (a stroke may split in two), e.g. to follow
    a photo into a detector's face crop.
    """
    left, top, right, bottom = box
    scale = np.array([size[0] / (right - left), size[1] / (bottom - top)])
    limit = np.array([size[0] - 1, size[1] - 1])
    out = []
    for stroke in strokes:
        points = (_densify(stroke.points, step=2.0) - [left, top]) * scale
        outside = (points < 0).any(axis=1) | (points > limit).any(axis=1)
        out += [
            Stroke(stroke.group, run, max(1.0, stroke.width * float(scale.mean())))
            for run in _visible_runs(points, outside)
        ]
    return out


def face_strokes(params: FaceParams, size: int | tuple[int, int], placement: Placement | None = None) -> list[Stroke]:
    """The face as line art in the frame of ``render_face(params, size)`` (no jitter).

    ``size`` is the square side, or (width, height) of the image when ``placement`` puts the
    face somewhere else (a corpus photo: :meth:`EmbeddedCorpus.photo_strokes`). Strokes come
    in drawing order: hair, contour, mouth, eyes, nose, details. Parts of an outline hidden in
    the photo (the forehead under the hair, the hair behind the face, the shoulders behind the
    neck) or outside the image are left out, as a person would.
    """
    width, height = (size, size) if isinstance(size, int) else size
    place = placement or default_placement(width)
    geometry = face_geometry(params, place.yaw)
    unit = place.unit
    frame_max = np.array([width - 1, height - 1])
    strokes: list[Stroke] = []
    head_cover = [poly for poly in (geometry.hair_front, geometry.hat, geometry.hat_brim) if poly is not None]

    def add(group: str, pts, width: float = 0.025, behind: tuple = (), over=None) -> None:
        """``behind``: shapes covering the stroke; ``over``: a shape it lies on, never covered."""
        pts = _densify(np.asarray(pts, np.float64))
        px = place.to_px(pts)
        covered = np.zeros(len(pts), bool)
        for cover in behind:
            covered |= _inside(pts, cover)
        if over is not None:
            covered &= ~_inside(pts, over)
        hidden = covered | (px < 0).any(axis=1) | (px > frame_max).any(axis=1)
        for run in _visible_runs(px, hidden):
            strokes.append(Stroke(group, run, max(1.0, width * unit)))

    covered_face = (geometry.face, *head_cover)
    if geometry.hat is not None and geometry.hat_brim is not None:
        add("hair", geometry.hat[:-2], 0.03, (geometry.hat_brim,))
        add("hair", _closed(geometry.hat_brim), 0.03)
    if geometry.hair_back is not None:
        for piece in _split(_closed(geometry.hair_back), 4):
            add("hair", piece, 0.03, (geometry.face, geometry.neck, *head_cover))
    if geometry.hair_front is not None:
        for piece in _split(geometry.hair_front[:CAP_POINTS], 2):  # the crown
            add("hair", piece, 0.03, (geometry.hair_back,) if geometry.hair_back is not None else ())
        for piece in _split(geometry.hair_front[CAP_POINTS:], 2):  # the hairline or fringe
            add("hair", piece, 0.025)
        for strand in geometry.strands:
            add("hair", strand, 0.015, (geometry.face,), over=geometry.hair_front)

    for piece in _split(_closed(geometry.face), 4):
        add("contour", piece, 0.03, tuple(head_cover))
    for ear in geometry.ears:
        add("contour", _closed(ear), 0.025, covered_face)
    for side in SIDES:
        add(
            "contour",
            np.array([(side * geometry.neck[1, 0], y) for y in np.linspace(0.4, params.face_height + 0.9, 12)]),
            0.025,
            (geometry.face,),
        )
    add(
        "contour",
        geometry.shoulders[:40],
        0.025,
        (geometry.neck, geometry.hair_back) if geometry.hair_back is not None else (geometry.neck,),
    )

    add("mouth", geometry.upper_lip[: len(geometry.upper_lip) // 2 + 1], 0.02)
    add("mouth", geometry.mouth_line, 0.025)
    add("mouth", geometry.lower_lip[len(geometry.mouth_line) :], 0.02)
    if geometry.mouth_opening is not None:
        add("mouth", _closed(geometry.mouth_opening), 0.015)

    for brow in geometry.brows:
        half = len(brow) // 2
        add("eyes", brow[:half], 0.02, tuple(head_cover))
        add("eyes", brow[half:], 0.02, tuple(head_cover))
    for eye, lid, (iris_x, iris_y, iris_r) in zip(geometry.eyes, geometry.upper_lids, geometry.irises):
        add("eyes", lid, 0.03)
        add("eyes", np.concatenate([eye[len(lid) - 1 :], lid[:1]]), 0.015)
        iris = arc(iris_x, iris_y, iris_r, iris_r, 0, 2 * math.pi, 20)
        add("eyes", iris, 0.015, (np.concatenate([lid, lid[::-1] - [0, 1]]),))  # the upper lid hides the top
        add("eyes", arc(iris_x, iris_y, iris_r * 0.45, iris_r * 0.45, 0, 2 * math.pi, 12), 0.02)

    for bridge in geometry.nose_bridge:
        add("nose", bridge[3:], 0.02)
    add("nose", geometry.nose_tip, 0.02)
    for nostril_x, nostril_y, rx, ry in geometry.nostrils:
        add("nose", arc(nostril_x, nostril_y, rx, ry, math.pi, 2 * math.pi, 10), 0.02)

    if geometry.beard is not None and params.beard != "stubble":
        for piece in _split(_closed(geometry.beard), 3):
            add("details", piece, 0.02)
    if geometry.moustache is not None:
        add("details", _closed(geometry.moustache), 0.02)
    for sideburn in geometry.sideburns:
        add("details", sideburn, 0.02)
    for lens in geometry.glasses:
        add("details", _closed(lens), 0.025)
    if geometry.glasses_bridge is not None:
        add("details", geometry.glasses_bridge, 0.025)
        for lens, side in zip(geometry.glasses, SIDES):
            outer = lens[np.argmax(lens[:, 0] * side)]
            add("details", np.array([outer, (side * params.face_width * 0.98, params.eye_y + 0.02)]), 0.025)
    for ring_x, ring_y, ring_r in geometry.earrings:
        add("details", arc(ring_x, ring_y + ring_r, ring_r, ring_r * 1.2, 0, 2 * math.pi, 12), 0.015)
    if geometry.necklace is not None:
        add("details", geometry.necklace, 0.02)
    if geometry.necktie is not None:
        add("details", _closed(geometry.necktie), 0.02)
    for extra in geometry.extras:
        add("details", extra, 0.015)
    return strokes
