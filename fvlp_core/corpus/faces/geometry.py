"""Face geometry: every outline of one identity in face units, and where a face sits in an image.

Face units: x right, y down, origin at the centre of the face oval, half face width about 1.
:func:`face_geometry` builds the outlines part by part (head and body, hair, eyes and brows,
nose, mouth, facial hair, accessories, lines); the renderer fills them and the line drawing
traces them, so both show the same face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import numpy as np

from fvlp_core.corpus.faces.identity import FaceParams

CAP_POINTS = 30  # points on the crown arc of the front hair; the hairline follows them
SIDES = (-1, 1)  # left, right: x = side * offset mirrors a feature
YAW_SHIFT = 0.18  # sideways shift of inner features per unit of yaw (a slight head turn)


def arc(cx, cy, rx, ry, t0, t1, n=24) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def face_outline(params: FaceParams, n: int = 96, grow: float = 0.0) -> np.ndarray:
    """Closed face oval: superellipse forehead, jaw tapering to the chin."""
    t = np.linspace(-math.pi / 2, 3 * math.pi / 2, n, endpoint=False)  # starts at the top
    cos, sin = np.cos(t), np.sin(t)
    exponent = 2.0 / params.squareness
    x = np.sign(cos) * np.abs(cos) ** exponent * (params.face_width + grow)
    y = np.sign(sin) * np.abs(sin) ** exponent * (params.face_height + grow)
    lower = np.clip(sin, 0, 1)
    x = x * (1 - (1 - params.jaw_width) * lower**params.jaw_power)
    return np.stack([x, y], axis=1)


def bezier(p0, p1, p2, n=16) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


def _tousled(params: FaceParams, outline: np.ndarray) -> np.ndarray:
    """A hair silhouette is no perfect ellipse: bumps along it, larger for wavy hair."""
    bumps = np.random.default_rng(params.detail_seed + 1)
    t = np.linspace(0, 1, len(outline))
    amplitude = 0.05 if params.hair_texture == "wavy" else 0.025
    wobble = cast(
        np.ndarray, sum(amplitude / k * np.sin(2 * math.pi * (k * 3 * t + bumps.random())) for k in (1, 2, 3))
    )
    centre = np.array([0.0, outline[:, 1].max()])
    return centre + (outline - centre) * (1 + wobble)[:, None]


@dataclass
class FaceGeometry:
    """Named outlines of one face in face units (closed polygons unless noted)."""

    face: np.ndarray
    ears: list[np.ndarray]
    neck: np.ndarray
    shoulders: np.ndarray
    hair_back: np.ndarray | None
    hair_front: np.ndarray | None
    strands: list[np.ndarray]
    brows: list[np.ndarray]
    eyes: list[np.ndarray]  # closed almond outlines
    upper_lids: list[np.ndarray]
    irises: list[tuple[float, float, float]]  # (x, y, r)
    nose_bridge: list[np.ndarray]
    nostrils: list[tuple[float, float, float, float]]  # (x, y, rx, ry)
    nose_tip: np.ndarray
    upper_lip: np.ndarray
    lower_lip: np.ndarray
    mouth_line: np.ndarray
    mouth_opening: np.ndarray | None
    beard: np.ndarray | None
    moustache: np.ndarray | None
    sideburns: list[np.ndarray]
    glasses: list[np.ndarray]
    glasses_bridge: np.ndarray | None
    hat: np.ndarray | None
    hat_brim: np.ndarray | None
    necktie: np.ndarray | None
    necklace: np.ndarray | None
    earrings: list[tuple[float, float, float]]
    extras: list[np.ndarray] = field(default_factory=list)  # wrinkles, smile lines (open)


class _Mouth(NamedTuple):
    """Where the mouth sits: what the lips, facial hair and smile lines are drawn around."""

    y: float
    half_width: float
    lift: float  # corners raised when smiling
    gap: float  # lips apart when the mouth is open


def _mouth_anchor(params: FaceParams) -> _Mouth:
    return _Mouth(
        y=_nose_tip_y(params) + params.mouth_gap,
        half_width=params.mouth_width * (1.12 if params.smiling else 1.0),
        lift=0.07 if params.smiling else 0.0,
        gap=0.06 if params.mouth_open else 0.0,
    )


def _nose_tip_y(params: FaceParams) -> float:
    return params.eye_y + params.nose_length


def _ear_y(params: FaceParams) -> float:
    return params.eye_y + 0.18


def _neck_half_width(params: FaceParams) -> float:
    return params.face_width * (0.5 if params.male else 0.42)


def _head_and_body(params: FaceParams) -> dict:
    half_width, half_height = params.face_width, params.face_height
    ear_y = _ear_y(params)
    ears = [
        arc(side * half_width * 0.97, ear_y, 0.14 * params.ear_size, 0.27 * params.ear_size, 0, 2 * math.pi, 20)
        for side in SIDES
    ]
    neck_w = _neck_half_width(params)
    neck = np.array(
        [(-neck_w, 0.4), (neck_w, 0.4), (neck_w * 1.05, half_height + 0.9), (-neck_w * 1.05, half_height + 0.9)]
    )
    shoulders = np.concatenate(
        [
            arc(0, half_height + 1.55, 2.9 if params.male else 2.5, 1.05, math.pi, 2 * math.pi, 40),
            [(3.2, 5.0), (-3.2, 5.0)],
        ]
    )
    return {"face": face_outline(params), "ears": ears, "neck": neck, "shoulders": shoulders}


def _hair(params: FaceParams) -> dict:
    """A back mass behind the head and a front cap down to the hairline, with strands on it."""
    half_width, half_height = params.face_width, params.face_height
    hair_back = hair_front = None
    strands: list[np.ndarray] = []
    top = -half_height - params.hair_volume * 0.9
    crown_y, crown_ry = top + (half_height + params.hair_volume), half_height + params.hair_volume
    if params.hair_style != "bald" and (params.hat == "none" or params.hair_style in ("medium", "long")):
        back_w = half_width + 0.12 + params.hair_volume * 0.5
        length = {
            "short": 0.1,
            "bun": 0.2,
            "medium": 0.7 + 0.5 * params.hair_length,
            "long": 1.6 + 1.2 * params.hair_length,
        }.get(params.hair_style, 0.0)
        crown = _tousled(params, arc(0, crown_y, back_w, crown_ry, math.pi, 2 * math.pi, 40))
        bottom = params.eye_y + length
        if params.hair_style in ("medium", "long"):
            side = [
                (back_w + 0.05 * length, bottom),
                (back_w * 0.7, bottom + 0.12),
                (-back_w * 0.7, bottom + 0.12),
                (-back_w - 0.05 * length, bottom),
            ]
            hair_back = np.concatenate([crown, np.array(side)])
        else:
            hair_back = np.concatenate([crown, [(back_w * 0.95, bottom), (-back_w * 0.95, bottom)]])
        if params.hair_style == "bun":
            bun = arc(0, top - 0.15, 0.42, 0.3, math.pi, 2 * math.pi, 16)
            hair_back = np.concatenate([hair_back[:20], bun, hair_back[20:]])

    if params.hair_style != "bald" and params.hat == "none":
        fringe_noise = np.random.default_rng(params.detail_seed)
        line_y = -half_height * (params.hairline + (0.2 if params.receding_hairline else 0.0))
        temple_y = params.eye_y - 0.12
        xs = np.linspace(-half_width - 0.06, half_width + 0.06, 24)
        across = xs / (half_width + 0.06)  # -1 at the left temple .. 1 at the right
        if params.bangs:
            fringe = params.eye_y - params.brow_gap - 0.14  # stops just above the brows
            ys = fringe - 0.1 * across**2 + fringe_noise.normal(0, 0.025, len(xs))
            ys = np.minimum(ys, fringe + 0.05)
        else:
            centre = line_y - 0.05 * np.exp(-((across - params.hair_part) ** 2) / 0.02)  # the parting dips in
            ys = centre + (temple_y - line_y) * np.abs(across) ** 3.2
            if params.receding_hairline:
                ys = ys + 0.14 * np.exp(-((np.abs(across) - 0.55) ** 2) / 0.04)
        edge = np.stack([xs[::-1], ys[::-1]], axis=1)
        cap_w = half_width + 0.1 + params.hair_volume * 0.45
        cap = _tousled(params, arc(0, crown_y, cap_w, crown_ry, math.pi * 1.02, 2 * math.pi * 0.99, CAP_POINTS))
        hair_front = np.concatenate(
            [cap, [(half_width + 0.08, temple_y + 0.1)], edge, [(-half_width - 0.08, temple_y + 0.1)]]
        )
        strands = _strands(params, top, cap_w, temple_y, ys)
    return {"hair_back": hair_back, "hair_front": hair_front, "strands": strands}


def _strands(params: FaceParams, top: float, cap_w: float, temple_y: float, hairline: np.ndarray) -> list[np.ndarray]:
    """Strands flow from the parting to the sides and down the back mass."""
    strands = []
    count = 6 if params.hair_style == "short" else 9
    for k in range(count):
        across = (k + 0.5) / count * 2 - 1
        start = (params.hair_part * 0.6 * params.face_width + across * 0.25, top + 0.1 + 0.05 * abs(across))
        end_x = across * cap_w * 0.95
        end_y = (hairline[int((across + 1) / 2 * (len(hairline) - 1))] - 0.06) if abs(across) < 0.8 else temple_y
        if params.hair_style in ("medium", "long") and abs(across) > 0.6:
            end_x = math.copysign(cap_w + 0.04, across)
            end_y = params.eye_y + 0.3 + (0.6 if params.hair_style == "long" else 0.2)
        mid = ((start[0] + end_x) / 2 + 0.15 * across, (start[1] + end_y) / 2 - 0.05)
        strand = bezier(start, mid, (end_x, end_y), 12)
        if params.hair_texture == "wavy":
            strand[:, 0] += 0.04 * np.sin(np.linspace(0, 3 * math.pi, len(strand)))
        strands.append(strand)
    return strands


def _eyes_and_brows(params: FaceParams, shift: float) -> dict:
    brows, eyes, upper_lids, irises = [], [], [], []
    eye_h = params.eye_height * (0.6 if params.narrow_eyes else 1.0) * (0.85 if params.smiling else 1.0)
    eye_w = params.eye_width
    for side in SIDES:
        cx = side * params.eye_spacing + shift
        cy = params.eye_y
        inner = (cx - side * eye_w, cy + side * 0 + params.eye_tilt * 0.3 * eye_w)
        outer = (cx + side * eye_w, cy - params.eye_tilt * eye_w)
        upper = bezier(inner, (cx - side * 0.1 * eye_w, cy - eye_h * 2.1), outer, 14)
        lower = bezier(outer, (cx + side * 0.05 * eye_w, cy + eye_h * 1.5), inner, 12)
        eyes.append(np.concatenate([upper, lower[1:-1]]))
        upper_lids.append(upper)
        irises.append((cx + shift * 0.3, cy - eye_h * 0.1, min(eye_h * 1.25, eye_w * 0.48)))
        brow_y = cy - params.brow_gap
        brow_in = (cx - side * (params.brow_length * 0.95), brow_y + 0.03)
        brow_out = (cx + side * params.brow_length * 1.05, brow_y + 0.02 + 0.05 * params.brow_arch)
        peak = (cx + side * params.brow_length * 0.35, brow_y - 0.04 - params.brow_arch * 0.55)
        centre_line = bezier(brow_in, peak, brow_out, 14)
        thick = params.brow_thickness * np.linspace(1.2, 0.55, len(centre_line))[:, None]
        up, down = np.array([0, -1]), np.array([0, 1])
        brows.append(np.concatenate([centre_line + up * thick * 0.5, (centre_line + down * thick * 0.5)[::-1]]))
    return {"brows": brows, "eyes": eyes, "upper_lids": upper_lids, "irises": irises}


def _nose(params: FaceParams, shift: float) -> dict:
    tip_y = _nose_tip_y(params)
    nose_w = params.nose_width
    tip_x = shift * 1.6
    bridge = [
        bezier(
            (side * 0.09 + shift * 0.5, params.eye_y - 0.02),
            (side * 0.1 + shift, tip_y - 0.3),
            (side * nose_w * 0.8 + tip_x, tip_y - 0.05),
            10,
        )
        for side in SIDES
    ]
    nostrils = [(tip_x + side * nose_w * 0.42, tip_y + 0.025, nose_w * 0.17, 0.03) for side in SIDES]
    tip = bezier((tip_x - nose_w, tip_y - 0.02), (tip_x, tip_y + 0.14), (tip_x + nose_w, tip_y - 0.02), 14)
    return {"nose_bridge": bridge, "nostrils": nostrils, "nose_tip": tip}


def _mouth(params: FaceParams, shift: float) -> dict:
    """Lips between two corners, corners raised when smiling, apart when the mouth is open."""
    mouth = _mouth_anchor(params)
    y, half_w, gap = mouth.y, mouth.half_width, mouth.gap
    left, right = (-half_w + shift, y - mouth.lift), (half_w + shift, y - mouth.lift)
    mid = (shift, y + (0.05 if params.smiling else 0.0))
    mouth_line = bezier(left, mid, right, 18)
    upper_peak = (shift, y - params.upper_lip + 0.01)
    lip_top = np.concatenate(
        [
            bezier(left, (-half_w * 0.5 + shift, y - params.upper_lip * 1.6), upper_peak, 10),
            bezier(upper_peak, (half_w * 0.5 + shift, y - params.upper_lip * 1.6), right, 10)[1:],
        ]
    )
    upper_lip = np.concatenate([lip_top, (mouth_line - [0, gap * 0.5])[::-1]])
    lip_bottom = bezier(left, (shift, y + params.lower_lip * 2.0 + gap + (0.04 if params.smiling else 0)), right, 18)
    lower_lip = np.concatenate([mouth_line + [0, gap * 0.5], lip_bottom[::-1]])
    opening = None
    if params.mouth_open:
        opening = np.concatenate([mouth_line[2:-2] - [0, gap * 0.5], (mouth_line[2:-2] + [0, gap * 0.9])[::-1]])
    return {"upper_lip": upper_lip, "lower_lip": lower_lip, "mouth_line": mouth_line, "mouth_opening": opening}


def _facial_hair(params: FaceParams, shift: float) -> dict:
    half_width, half_height = params.face_width, params.face_height
    mouth = _mouth_anchor(params)
    y, half_w = mouth.y, mouth.half_width
    beard = moustache = None
    if params.beard in ("full", "stubble"):
        # Outer edge: the jaw from one ear down around the chin to the other (outline runs top, right,
        # bottom, left). Inner edge: up the cheeks and under the lower lip.
        jaw = face_outline(params, 96, grow=0.03)
        top_y = params.eye_y + 0.3
        outer = jaw[jaw[:, 1] > top_y]
        lip_bottom = y + params.lower_lip * 2 + (0.04 if params.smiling else 0.0) + mouth.gap
        left_corner, right_corner = (-half_w - 0.08 + shift, y + 0.02), (half_w + 0.08 + shift, y + 0.02)
        inner = np.concatenate(
            [
                bezier((-half_width * 0.84, top_y + 0.04), (-half_width * 0.66, y - 0.12), left_corner, 8),
                bezier(left_corner, (shift, lip_bottom + 0.22), right_corner, 12)[1:],
                bezier(right_corner, (half_width * 0.66, y - 0.12), (half_width * 0.84, top_y + 0.04), 8)[1:],
            ]
        )
        beard = np.concatenate([outer, inner])
    elif params.beard == "goatee":
        chin_line = (shift, half_height + 0.25)
        beard = np.concatenate(
            [
                bezier((-half_w * 0.75 + shift, y + 0.02), chin_line, (half_w * 0.75 + shift, y + 0.02), 18),
                bezier(
                    (half_w * 0.45 + shift, y + params.lower_lip + 0.06),
                    (shift, y + params.lower_lip * 1.5 + 0.12),
                    (-half_w * 0.45 + shift, y + params.lower_lip + 0.06),
                    10,
                ),
            ]
        )
    if params.mustache:
        top_y = y - params.upper_lip - 0.13
        corner_y = y - mouth.lift
        moustache = np.concatenate(
            [
                bezier(
                    (-half_w - 0.05 + shift, corner_y + 0.05),
                    (shift, top_y - 0.05),
                    (half_w + 0.05 + shift, corner_y + 0.05),
                    18,
                ),
                bezier(
                    (half_w * 0.9 + shift, corner_y - 0.02),
                    (shift, y - params.upper_lip * 0.8),
                    (-half_w * 0.9 + shift, corner_y - 0.02),
                    14,
                ),
            ]
        )
    sideburns = []
    if params.sideburns:
        for side in SIDES:
            x0 = side * (half_width * 0.98)
            sideburns.append(
                np.array(
                    [
                        (x0, params.eye_y - 0.2),
                        (x0 - side * 0.14, params.eye_y - 0.2),
                        (x0 - side * 0.16, params.eye_y + 0.45),
                        (x0 - side * 0.02, params.eye_y + 0.5),
                    ]
                )
            )
    return {"beard": beard, "moustache": moustache, "sideburns": sideburns}


def _glasses(params: FaceParams, shift: float) -> dict:
    lenses: list[np.ndarray] = []
    bridge = None
    if params.glasses != "none":
        lens_w, lens_h = params.eye_width + 0.08, max(params.eye_height * 2.2, 0.18)
        for side in SIDES:
            cx = side * params.eye_spacing + shift
            if params.glasses == "round":
                lenses.append(arc(cx, params.eye_y, lens_w, lens_h, 0, 2 * math.pi, 28))
            else:
                corners = [
                    (-lens_w, -lens_h),
                    (lens_w, -lens_h),
                    (lens_w, lens_h * 0.8),
                    (lens_w * 0.8, lens_h),
                    (-lens_w * 0.8, lens_h),
                    (-lens_w, lens_h * 0.8),
                ]
                lenses.append(np.array(corners) + [cx, params.eye_y])
        bridge = bezier(
            (-params.eye_spacing + lens_w + shift, params.eye_y - 0.03),
            (shift, params.eye_y - 0.09),
            (params.eye_spacing - lens_w + shift, params.eye_y - 0.03),
            8,
        )
    return {"glasses": lenses, "glasses_bridge": bridge}


def _hat(params: FaceParams) -> dict:
    half_width, half_height = params.face_width, params.face_height
    hat = brim = None
    if params.hat == "beanie":
        hat = np.concatenate(
            [
                arc(0, -half_height * 0.55, half_width + 0.14, half_height * 0.75, math.pi, 2 * math.pi, 30),
                [(half_width + 0.16, -half_height * 0.5), (-half_width - 0.16, -half_height * 0.5)],
            ]
        )
        brim = np.array(
            [
                (-half_width - 0.17, -half_height * 0.72),
                (half_width + 0.17, -half_height * 0.72),
                (half_width + 0.17, -half_height * 0.45),
                (-half_width - 0.17, -half_height * 0.45),
            ]
        )
    elif params.hat == "cap":
        hat = np.concatenate(
            [
                arc(0, -half_height * 0.6, half_width + 0.1, half_height * 0.65, math.pi, 2 * math.pi, 30),
                [(half_width + 0.1, -half_height * 0.55), (-half_width - 0.1, -half_height * 0.55)],
            ]
        )
        brim = np.array(
            [
                (-half_width - 0.05, -half_height * 0.62),
                (half_width + 0.05, -half_height * 0.62),
                (half_width * 0.9, -half_height * 0.45),
                (0, -half_height * 0.38),
                (-half_width * 0.9, -half_height * 0.45),
            ]
        )
    return {"hat": hat, "hat_brim": brim}


def _jewellery_and_tie(params: FaceParams) -> dict:
    half_width, half_height = params.face_width, params.face_height
    necktie = None
    if params.necktie:
        necktie = np.array(
            [
                (-0.13, half_height + 0.85),
                (0.13, half_height + 0.85),
                (0.2, half_height + 2.2),
                (0, half_height + 2.45),
                (-0.2, half_height + 2.2),
            ]
        )
    necklace = None
    if params.necklace:
        necklace = arc(0, half_height + 0.35, _neck_half_width(params) * 1.25, 0.75, 0.15 * math.pi, 0.85 * math.pi, 20)
    ear_y = _ear_y(params)
    earrings = (
        [(side * half_width * 0.99, ear_y + 0.3 * params.ear_size, 0.05) for side in SIDES] if params.earrings else []
    )
    return {"necktie": necktie, "necklace": necklace, "earrings": earrings}


def _lines(params: FaceParams, shift: float) -> dict:
    """Smile lines from the nose wings to the mouth corners; forehead wrinkles past 50."""
    extras = []
    if params.smiling:
        mouth = _mouth_anchor(params)
        tip_x, tip_y, nose_w = shift * 1.6, _nose_tip_y(params), params.nose_width
        extras += [
            bezier(
                (side * (nose_w + 0.08) + tip_x, tip_y - 0.06),
                (side * (mouth.half_width + 0.08) + shift, mouth.y - 0.12),
                (side * (mouth.half_width + 0.1) + shift, mouth.y + 0.05),
                8,
            )
            for side in SIDES
        ]
    if params.age > 50:
        brow = -params.face_height
        extras += [
            bezier((-0.35, brow * 0.55 + k * 0.09), (0, brow * 0.58 + k * 0.09), (0.35, brow * 0.55 + k * 0.09), 10)
            for k in range(2)
        ]
    return {"extras": extras}


def face_geometry(params: FaceParams, yaw: float = 0.0) -> FaceGeometry:
    """All outlines of ``params``. ``yaw`` shifts inner features sideways (a slight head turn)."""
    shift = yaw * YAW_SHIFT
    return FaceGeometry(
        **_head_and_body(params),
        **_hair(params),
        **_eyes_and_brows(params, shift),
        **_nose(params, shift),
        **_mouth(params, shift),
        **_facial_hair(params, shift),
        **_glasses(params, shift),
        **_hat(params),
        **_jewellery_and_tie(params),
        **_lines(params, shift),
    )


@dataclass(frozen=True)
class Placement:
    """Where one face goes on a canvas (output pixels): centre, half face width, roll, yaw."""

    cx: float
    cy: float
    unit: float
    roll: float = 0.0
    yaw: float = 0.0

    def to_px(self, pts: np.ndarray, scale: float = 1.0) -> np.ndarray:
        c, s = math.cos(self.roll), math.sin(self.roll)
        x, y = pts[:, 0], pts[:, 1]
        return np.stack([self.cx + self.unit * (c * x - s * y), self.cy + self.unit * (s * x + c * y)], axis=1) * scale

    def to_face(self, px_x: np.ndarray, px_y: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.roll), math.sin(self.roll)
        dx, dy = px_x / scale - self.cx, px_y / scale - self.cy
        return (c * dx + s * dy) / self.unit, (-s * dx + c * dy) / self.unit


def default_placement(size: int) -> Placement:
    """The frame shared by ``render_face(params, size)`` without jitter and ``face_strokes``."""
    return Placement(cx=size * 0.5, cy=size * 0.46, unit=size * 0.2)


def jitter_placement(base: Placement, size: float, rng: np.random.Generator) -> Placement:
    return Placement(
        cx=base.cx + rng.uniform(-0.05, 0.05) * size,
        cy=base.cy + rng.uniform(-0.04, 0.04) * size,
        unit=base.unit * rng.uniform(0.9, 1.1),
        roll=float(rng.uniform(-0.14, 0.14)),
        yaw=float(rng.uniform(-0.35, 0.35)),
    )
