"""A parametric face model, a photo-like renderer and the matching line drawing.

One :class:`FaceParams` is one identity. Its geometry is a set of polylines in
*face units* (x right, y down, origin at the centre of the face oval, half face
width about 1). The renderer fills those outlines with shaded skin, hair, eyes
and clothes; :func:`face_strokes` draws the same outlines as pen strokes, so a
sketch and the un-jittered photo of one identity line up pixel for pixel.

Rendering draws on a 2x supersampled float canvas and averages down, which
antialiases every edge. Shading comes from an ellipsoid normal under a light
direction, so skin and hair have the gradients a face detector expects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from fvlp_core.attributes import ATTRIBUTES

SUPERSAMPLE = 2
STROKE_GROUPS: tuple[str, ...] = ("hair", "contour", "mouth", "eyes", "nose", "details")

HAIR_STYLES = ("bald", "short", "medium", "long", "bun")
HAIR_TEXTURES = ("straight", "wavy")
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 24, 24),
    "brown": (92, 60, 38),
    "blond": (214, 178, 112),
    "gray": (168, 166, 164),
    "red": (150, 66, 34),
}
BROW_STYLES = ("straight", "arched", "bushy", "thin")
BEARD_STYLES = ("none", "stubble", "goatee", "full")
GLASSES_STYLES = ("none", "round", "square")
HAT_STYLES = ("none", "beanie", "cap")
# Skin anchors from pale to deep; a tone in [0, 1] interpolates between them.
_SKIN_ANCHORS = np.array(
    [(246, 222, 206), (234, 196, 168), (214, 168, 132), (178, 124, 88), (128, 84, 58), (86, 56, 40)],
    dtype=np.float32,
)
_IRIS_COLOURS = np.array([(70, 44, 28), (104, 72, 40), (72, 104, 130), (86, 110, 70), (40, 30, 26)], np.float32)


@dataclass(frozen=True)
class FaceParams:
    """Everything needed to draw one identity (face units: half face width ~ 1)."""

    # Identity attributes.
    male: bool
    age: float
    skin_tone: float  # 0 pale .. 1 deep
    hair_style: str
    hair_texture: str
    hair_colour: str
    bangs: bool
    receding_hairline: bool
    brow_style: str
    narrow_eyes: bool
    glasses: str
    beard: str
    mustache: bool
    sideburns: bool
    smiling: bool
    mouth_open: bool
    earrings: bool
    hat: str
    lipstick: bool
    rosy_cheeks: bool
    necklace: bool
    necktie: bool
    # Geometry (face units).
    face_width: float
    face_height: float
    jaw_width: float
    jaw_power: float
    squareness: float
    eye_y: float
    eye_spacing: float
    eye_width: float
    eye_height: float
    eye_tilt: float
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_length: float
    nose_length: float
    nose_width: float
    mouth_gap: float
    mouth_width: float
    upper_lip: float
    lower_lip: float
    ear_size: float
    hair_volume: float
    hair_length: float
    hairline: float
    hair_part: float
    detail_seed: int  # fringe irregularity, hair texture phase, glasses frame colour
    # Colours (RGB 0-255).
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    clothes_rgb: tuple[float, float, float]
    hat_rgb: tuple[float, float, float]

    @property
    def big_nose(self) -> bool:
        return self.nose_width > 0.29 and self.nose_length > 0.5

    @property
    def big_lips(self) -> bool:
        return self.upper_lip + self.lower_lip > 0.19

    @property
    def chubby(self) -> bool:
        return self.face_width > 1.08 and self.jaw_width > 0.8


def _pick(rng: np.random.Generator, options, probs) -> str:
    return options[int(rng.choice(len(options), p=probs))]


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return tuple(float(x) for x in (np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t))


def sample_identity(rng: np.random.Generator) -> FaceParams:
    """Draw one identity: discrete attributes plus many continuous shape and colour parameters."""
    male = bool(rng.random() < 0.5)
    age = float(np.clip(rng.gamma(4.0, 6.0) + 16, 16, 82))
    tone = float(rng.beta(1.6, 1.9))
    anchor = tone * (len(_SKIN_ANCHORS) - 1)
    lo = int(min(math.floor(anchor), len(_SKIN_ANCHORS) - 2))
    skin = _SKIN_ANCHORS[lo] * (1 - (anchor - lo)) + _SKIN_ANCHORS[lo + 1] * (anchor - lo)
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255)

    if age > 55 and rng.random() < 0.6:
        colour = "gray"
    elif tone > 0.55:
        colour = _pick(rng, ("black", "brown"), (0.8, 0.2))
    else:
        colour = _pick(rng, ("black", "brown", "blond", "red"), (0.3, 0.38, 0.26, 0.06))
    hair_rgb = np.clip(np.array(HAIR_COLOURS[colour], np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 8, 3), 0, 255)

    if male:
        bald = 0.12 if age > 40 else 0.04
        style = _pick(rng, HAIR_STYLES, (bald, 0.6, 0.3 - bald, 0.07, 0.03))
    else:
        style = _pick(rng, HAIR_STYLES, (0.01, 0.1, 0.32, 0.45, 0.12))
    beard = _pick(rng, BEARD_STYLES, (0.55, 0.15, 0.12, 0.18)) if male else "none"
    mustache = bool(male and (beard == "full" or (beard in ("goatee", "none") and rng.random() < 0.25)))
    brow = _pick(rng, BROW_STYLES, (0.4, 0.12, 0.38, 0.1) if male else (0.3, 0.4, 0.1, 0.2))
    smiling = bool(rng.random() < 0.5)
    lipstick = bool(not male and rng.random() < 0.45)
    lip_base = _mix(skin * np.array([0.85, 0.62, 0.62]), (170, 70, 80), 0.35)
    lip_rgb = _mix((176, 30, 52), (140, 28, 60), rng.random()) if lipstick else lip_base
    clothes = tuple(float(c) for c in rng.integers(20, 235, 3))
    hat = _pick(rng, HAT_STYLES, (0.9, 0.05, 0.05))

    return FaceParams(
        male=male,
        age=age,
        skin_tone=tone,
        hair_style=style,
        hair_texture=_pick(rng, HAIR_TEXTURES, (0.6, 0.4)),
        hair_colour=colour,
        bangs=bool(style in ("short", "medium", "long") and rng.random() < (0.15 if male else 0.35)),
        receding_hairline=bool(male and age > 35 and style != "bald" and rng.random() < 0.3),
        brow_style=brow,
        narrow_eyes=bool(rng.random() < 0.15),
        glasses=_pick(rng, GLASSES_STYLES, (0.78, 0.11, 0.11)),
        beard=beard,
        mustache=mustache,
        sideburns=bool(male and style != "bald" and rng.random() < 0.25),
        smiling=smiling,
        mouth_open=bool(rng.random() < (0.45 if smiling else 0.15)),
        earrings=bool(rng.random() < (0.05 if male else 0.4)),
        hat=hat,
        lipstick=lipstick,
        rosy_cheeks=bool(tone < 0.5 and rng.random() < 0.2),
        necklace=bool(not male and rng.random() < 0.25),
        necktie=bool(male and rng.random() < 0.15),
        face_width=float(rng.uniform(0.88, 1.14)),
        face_height=float(rng.uniform(1.22, 1.5) + (0.05 if male else 0.0)),
        jaw_width=float(rng.uniform(0.55, 0.88) + (0.05 if male else -0.03)),
        jaw_power=float(rng.uniform(1.2, 2.6)),
        squareness=float(rng.uniform(2.0, 2.8)),
        eye_y=float(rng.uniform(-0.2, -0.02)),
        eye_spacing=float(rng.uniform(0.36, 0.46)),
        eye_width=float(rng.uniform(0.17, 0.23)),
        eye_height=float(rng.uniform(0.065, 0.1)),
        eye_tilt=float(rng.uniform(-0.08, 0.12)),
        brow_gap=float(rng.uniform(0.2, 0.3)),
        brow_thickness=float(rng.uniform(0.035, 0.06) * (1.4 if brow == "bushy" else 0.7 if brow == "thin" else 1.0)),
        brow_arch=float(rng.uniform(0.1, 0.2) if brow == "arched" else rng.uniform(0.0, 0.07)),
        brow_length=float(rng.uniform(0.2, 0.28)),
        nose_length=float(rng.uniform(0.4, 0.6)),
        nose_width=float(rng.uniform(0.18, 0.32)),
        mouth_gap=float(rng.uniform(0.26, 0.36)),
        mouth_width=float(rng.uniform(0.26, 0.4)),
        upper_lip=float(rng.uniform(0.045, 0.09) + (0.0 if male else 0.01)),
        lower_lip=float(rng.uniform(0.06, 0.11) + (0.0 if male else 0.01)),
        ear_size=float(rng.uniform(0.85, 1.15)),
        hair_volume=float(rng.uniform(0.1, 0.35)),
        hair_length=float(rng.uniform(0.0, 1.0)),
        hairline=float(rng.uniform(0.5, 0.66)),
        hair_part=float(rng.uniform(-0.5, 0.5)),
        detail_seed=int(rng.integers(0, 2**31 - 1)),
        skin_rgb=tuple(float(c) for c in skin),
        hair_rgb=tuple(float(c) for c in hair_rgb),
        iris_rgb=tuple(float(c) for c in _IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))] + rng.normal(0, 8, 3)),
        lip_rgb=lip_rgb,
        clothes_rgb=clothes,
        hat_rgb=tuple(float(c) for c in rng.integers(20, 235, 3)),
    )


# --------------------------------------------------------------------------- geometry

_CAP_POINTS = 30  # points on the crown arc of the front hair; the hairline follows them


def _arc(cx, cy, rx, ry, t0, t1, n=24) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _face_outline(p: FaceParams, n: int = 96, grow: float = 0.0) -> np.ndarray:
    """Closed face oval: superellipse forehead, jaw tapering to the chin."""
    t = np.linspace(-math.pi / 2, 3 * math.pi / 2, n, endpoint=False)  # starts at the top
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / p.squareness
    x = np.sign(c) * np.abs(c) ** e * (p.face_width + grow)
    y = np.sign(s) * np.abs(s) ** e * (p.face_height + grow)
    lower = np.clip(s, 0, 1)
    x = x * (1 - (1 - p.jaw_width) * lower**p.jaw_power)
    return np.stack([x, y], axis=1)


def _bezier(p0, p1, p2, n=16) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


def _tousled(p: FaceParams, arc: np.ndarray) -> np.ndarray:
    """A hair silhouette is no perfect ellipse: bumps along it, larger for wavy hair."""
    bumps = np.random.default_rng(p.detail_seed + 1)
    t = np.linspace(0, 1, len(arc))
    amplitude = 0.05 if p.hair_texture == "wavy" else 0.025
    wobble = sum(amplitude / k * np.sin(2 * math.pi * (k * 3 * t + bumps.random())) for k in (1, 2, 3))
    centre = np.array([0.0, arc[:, 1].max()])
    return centre + (arc - centre) * (1 + wobble)[:, None]


@dataclass
class _Geometry:
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


def _geometry(p: FaceParams, yaw: float = 0.0) -> _Geometry:
    """All outlines of ``p``. ``yaw`` shifts inner features sideways (a slight head turn)."""
    W, H = p.face_width, p.face_height
    shift = yaw * 0.18
    face = _face_outline(p)

    ear_y = p.eye_y + 0.18
    ears = [_arc(sx * W * 0.97, ear_y, 0.14 * p.ear_size, 0.27 * p.ear_size, 0, 2 * math.pi, 20) for sx in (-1, 1)]
    neck_w = W * (0.5 if p.male else 0.42)
    neck = np.array([(-neck_w, 0.4), (neck_w, 0.4), (neck_w * 1.05, H + 0.9), (-neck_w * 1.05, H + 0.9)])
    shoulders = np.concatenate(
        [_arc(0, H + 1.55, 2.9 if p.male else 2.5, 1.05, math.pi, 2 * math.pi, 40), [(3.2, 5.0), (-3.2, 5.0)]]
    )

    # Hair: a back mass behind the head and a front cap down to the hairline.
    hair_back = hair_front = None
    strands: list[np.ndarray] = []
    top = -H - p.hair_volume * 0.9
    if p.hair_style != "bald" and (p.hat == "none" or p.hair_style in ("medium", "long")):
        hw = W + 0.12 + p.hair_volume * 0.5
        length = {"short": 0.1, "bun": 0.2, "medium": 0.7 + 0.5 * p.hair_length, "long": 1.6 + 1.2 * p.hair_length}.get(
            p.hair_style, 0.0
        )
        crown = _tousled(p, _arc(0, top + (H + p.hair_volume), hw, H + p.hair_volume, math.pi, 2 * math.pi, 40))
        if p.hair_style in ("medium", "long"):
            bottom = p.eye_y + length
            side = [(hw + 0.05 * length, bottom), (hw * 0.7, bottom + 0.12), (-hw * 0.7, bottom + 0.12), (-hw - 0.05 * length, bottom)]
            hair_back = np.concatenate([crown, np.array(side)])
        else:
            hair_back = np.concatenate([crown, [(hw * 0.95, p.eye_y + length), (-hw * 0.95, p.eye_y + length)]])
        if p.hair_style == "bun":
            hair_back = np.concatenate([hair_back[:20], _arc(0, top - 0.15, 0.42, 0.3, math.pi, 2 * math.pi, 16), hair_back[20:]])

    if p.hair_style != "bald" and p.hat == "none":
        fr = np.random.default_rng(p.detail_seed)
        line_y = -H * (p.hairline + (0.2 if p.receding_hairline else 0.0))
        temple_y = p.eye_y - 0.12
        xs = np.linspace(-W - 0.06, W + 0.06, 24)
        u = xs / (W + 0.06)
        if p.bangs:
            fringe = p.eye_y - p.brow_gap - 0.14  # stops just above the brows
            ys = fringe - 0.1 * u**2 + fr.normal(0, 0.025, len(xs))
            ys = np.minimum(ys, fringe + 0.05)
        else:
            centre = line_y - 0.05 * np.exp(-((u - p.hair_part) ** 2) / 0.02)  # the parting dips in
            ys = centre + (temple_y - line_y) * np.abs(u) ** 3.2
            if p.receding_hairline:
                ys = ys + 0.14 * np.exp(-((np.abs(u) - 0.55) ** 2) / 0.04)
        edge = np.stack([xs[::-1], ys[::-1]], axis=1)
        cap_w = W + 0.1 + p.hair_volume * 0.45
        cap = _tousled(p, _arc(0, top + (H + p.hair_volume), cap_w, H + p.hair_volume, math.pi * 1.02, 2 * math.pi * 0.99,
                               _CAP_POINTS))
        hair_front = np.concatenate([cap, [(W + 0.08, temple_y + 0.1)], edge, [(-W - 0.08, temple_y + 0.1)]])
        # Strands flow from the parting to the sides and down the back mass.
        n_strands = 6 if p.hair_style == "short" else 9
        for k in range(n_strands):
            f = (k + 0.5) / n_strands * 2 - 1
            start = (p.hair_part * 0.6 * W + f * 0.25, top + 0.1 + 0.05 * abs(f))
            end_x = f * cap_w * 0.95
            end_y = (ys[int((f + 1) / 2 * (len(xs) - 1))] - 0.06) if abs(f) < 0.8 else temple_y
            if p.hair_style in ("medium", "long") and abs(f) > 0.6:
                end_x, end_y = math.copysign(cap_w + 0.04, f), p.eye_y + 0.3 + (0.6 if p.hair_style == "long" else 0.2)
            mid = ((start[0] + end_x) / 2 + 0.15 * f, (start[1] + end_y) / 2 - 0.05)
            strand = _bezier(start, mid, (end_x, end_y), 12)
            if p.hair_texture == "wavy":
                strand[:, 0] += 0.04 * np.sin(np.linspace(0, 3 * math.pi, len(strand)))
            strands.append(strand)

    # Eyebrows, eyes, irises.
    brows, eyes, upper_lids, irises = [], [], [], []
    eh = p.eye_height * (0.6 if p.narrow_eyes else 1.0) * (0.85 if p.smiling else 1.0)
    for sx in (-1, 1):
        cx = sx * p.eye_spacing + shift
        cy = p.eye_y
        inner = (cx - sx * p.eye_width, cy + sx * 0 + p.eye_tilt * 0.3 * p.eye_width)
        outer = (cx + sx * p.eye_width, cy - p.eye_tilt * p.eye_width)
        upper = _bezier(inner, (cx - sx * 0.1 * p.eye_width, cy - eh * 2.1), outer, 14)
        lower = _bezier(outer, (cx + sx * 0.05 * p.eye_width, cy + eh * 1.5), inner, 12)
        eyes.append(np.concatenate([upper, lower[1:-1]]))
        upper_lids.append(upper)
        irises.append((cx + shift * 0.3, cy - eh * 0.1, min(eh * 1.25, p.eye_width * 0.48)))
        by = cy - p.brow_gap
        b_in = (cx - sx * (p.brow_length * 0.95), by + 0.03)
        b_out = (cx + sx * p.brow_length * 1.05, by + 0.02 + 0.05 * p.brow_arch)
        peak = (cx + sx * p.brow_length * 0.35, by - 0.04 - p.brow_arch * 0.55)
        centre_line = _bezier(b_in, peak, b_out, 14)
        thick = p.brow_thickness * np.linspace(1.2, 0.55, len(centre_line))[:, None]
        brows.append(np.concatenate([centre_line + [0, -1] * thick * 0.5, (centre_line + [0, 1] * thick * 0.5)[::-1]]))

    # Nose.
    tip_y = p.eye_y + p.nose_length
    nw = p.nose_width
    tip_x = shift * 1.6
    nose_bridge = [
        _bezier((sx * 0.09 + shift * 0.5, p.eye_y - 0.02), (sx * 0.1 + shift, tip_y - 0.3), (sx * nw * 0.8 + tip_x, tip_y - 0.05), 10)
        for sx in (-1, 1)
    ]
    nostrils = [(tip_x + sx * nw * 0.42, tip_y + 0.025, nw * 0.17, 0.03) for sx in (-1, 1)]
    nose_tip = _bezier((tip_x - nw, tip_y - 0.02), (tip_x, tip_y + 0.14), (tip_x + nw, tip_y - 0.02), 14)

    # Mouth: lips between two corners, corners raised when smiling.
    my = tip_y + p.mouth_gap
    mw = p.mouth_width * (1.12 if p.smiling else 1.0)
    lift = 0.07 if p.smiling else 0.0
    gap = 0.06 if p.mouth_open else 0.0
    left, right = (-mw + shift, my - lift), (mw + shift, my - lift)
    mid = (shift, my + (0.05 if p.smiling else 0.0))
    mouth_line = _bezier(left, mid, right, 18)
    lip_top = np.concatenate([
        _bezier(left, (-mw * 0.5 + shift, my - p.upper_lip * 1.6), (shift, my - p.upper_lip + 0.01), 10),
        _bezier((shift, my - p.upper_lip + 0.01), (mw * 0.5 + shift, my - p.upper_lip * 1.6), right, 10)[1:],
    ])
    upper_lip = np.concatenate([lip_top, (mouth_line - [0, gap * 0.5])[::-1]])
    lip_bottom = _bezier(left, (shift, my + p.lower_lip * 2.0 + gap + (0.04 if p.smiling else 0)), right, 18)
    lower_lip = np.concatenate([mouth_line + [0, gap * 0.5], lip_bottom[::-1]])
    mouth_opening = None
    if p.mouth_open:
        mouth_opening = np.concatenate([mouth_line[2:-2] - [0, gap * 0.5], (mouth_line[2:-2] + [0, gap * 0.9])[::-1]])

    # Facial hair.
    beard = moustache = None
    if p.beard == "full" or p.beard == "stubble":
        # Outer edge: the jaw from one ear down around the chin to the other (outline runs top, right,
        # bottom, left). Inner edge: up the cheeks and under the lower lip.
        jaw = _face_outline(p, 96, grow=0.03)
        y_top = p.eye_y + 0.3
        outer = jaw[jaw[:, 1] > y_top]
        lip_bottom = my + p.lower_lip * 2 + (0.04 if p.smiling else 0.0) + gap
        inner = np.concatenate([
            _bezier((-W * 0.84, y_top + 0.04), (-W * 0.66, my - 0.12), (-mw - 0.08 + shift, my + 0.02), 8),
            _bezier((-mw - 0.08 + shift, my + 0.02), (shift, lip_bottom + 0.22), (mw + 0.08 + shift, my + 0.02), 12)[1:],
            _bezier((mw + 0.08 + shift, my + 0.02), (W * 0.66, my - 0.12), (W * 0.84, y_top + 0.04), 8)[1:],
        ])
        beard = np.concatenate([outer, inner])
    elif p.beard == "goatee":
        beard = np.concatenate([
            _bezier((-mw * 0.75 + shift, my + 0.02), (shift, H + 0.25), (mw * 0.75 + shift, my + 0.02), 18),
            _bezier((mw * 0.45 + shift, my + p.lower_lip + 0.06), (shift, my + p.lower_lip * 1.5 + 0.12), (-mw * 0.45 + shift, my + p.lower_lip + 0.06), 10),
        ])
    if p.mustache:
        top_y = my - p.upper_lip - 0.13
        moustache = np.concatenate([
            _bezier((-mw - 0.05 + shift, my - lift + 0.05), (shift, top_y - 0.05), (mw + 0.05 + shift, my - lift + 0.05), 18),
            _bezier((mw * 0.9 + shift, my - lift - 0.02), (shift, my - p.upper_lip * 0.8), (-mw * 0.9 + shift, my - lift - 0.02), 14),
        ])
    sideburns = []
    if p.sideburns:
        for sx in (-1, 1):
            x0 = sx * (W * 0.98)
            sideburns.append(np.array([(x0, p.eye_y - 0.2), (x0 - sx * 0.14, p.eye_y - 0.2), (x0 - sx * 0.16, p.eye_y + 0.45), (x0 - sx * 0.02, p.eye_y + 0.5)]))

    # Accessories.
    glasses, bridge = [], None
    if p.glasses != "none":
        gw, gh = p.eye_width + 0.08, max(p.eye_height * 2.2, 0.18)
        for sx in (-1, 1):
            cx = sx * p.eye_spacing + shift
            if p.glasses == "round":
                glasses.append(_arc(cx, p.eye_y, gw, gh, 0, 2 * math.pi, 28))
            else:
                r = np.array([(-gw, -gh), (gw, -gh), (gw, gh * 0.8), (gw * 0.8, gh), (-gw * 0.8, gh), (-gw, gh * 0.8)])
                glasses.append(r + [cx, p.eye_y])
        bridge = _bezier((-p.eye_spacing + gw + shift, p.eye_y - 0.03), (shift, p.eye_y - 0.09), (p.eye_spacing - gw + shift, p.eye_y - 0.03), 8)
    hat = brim = None
    if p.hat == "beanie":
        hat = np.concatenate([_arc(0, -H * 0.55, W + 0.14, H * 0.75, math.pi, 2 * math.pi, 30), [(W + 0.16, -H * 0.5), (-W - 0.16, -H * 0.5)]])
        brim = np.array([(-W - 0.17, -H * 0.72), (W + 0.17, -H * 0.72), (W + 0.17, -H * 0.45), (-W - 0.17, -H * 0.45)])
    elif p.hat == "cap":
        hat = np.concatenate([_arc(0, -H * 0.6, W + 0.1, H * 0.65, math.pi, 2 * math.pi, 30), [(W + 0.1, -H * 0.55), (-W - 0.1, -H * 0.55)]])
        brim = np.array([(-W - 0.05, -H * 0.62), (W + 0.05, -H * 0.62), (W * 0.9, -H * 0.45), (0, -H * 0.38), (-W * 0.9, -H * 0.45)])
    necktie = None
    if p.necktie:
        necktie = np.array([(-0.13, H + 0.85), (0.13, H + 0.85), (0.2, H + 2.2), (0, H + 2.45), (-0.2, H + 2.2)])
    necklace = _arc(0, H + 0.35, neck_w * 1.25, 0.75, 0.15 * math.pi, 0.85 * math.pi, 20) if p.necklace else None
    earrings = [(sx * W * 0.99, ear_y + 0.3 * p.ear_size, 0.05) for sx in (-1, 1)] if p.earrings else []

    extras = []
    if p.smiling:
        extras += [_bezier((sx * (nw + 0.08) + tip_x, tip_y - 0.06), (sx * (mw + 0.08) + shift, my - 0.12), (sx * (mw + 0.1) + shift, my + 0.05), 8) for sx in (-1, 1)]
    if p.age > 50:
        extras += [_bezier((-0.35, -H * 0.55 + k * 0.09), (0, -H * 0.58 + k * 0.09), (0.35, -H * 0.55 + k * 0.09), 10) for k in range(2)]

    return _Geometry(
        face=face, ears=ears, neck=neck, shoulders=shoulders, hair_back=hair_back, hair_front=hair_front,
        strands=strands, brows=brows, eyes=eyes, upper_lids=upper_lids, irises=irises, nose_bridge=nose_bridge,
        nostrils=nostrils, nose_tip=nose_tip, upper_lip=upper_lip, lower_lip=lower_lip, mouth_line=mouth_line,
        mouth_opening=mouth_opening, beard=beard, moustache=moustache, sideburns=sideburns, glasses=glasses,
        glasses_bridge=bridge, hat=hat, hat_brim=brim, necktie=necktie, necklace=necklace, earrings=earrings,
        extras=extras,
    )


# --------------------------------------------------------------------------- placement


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


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Lighting:
    direction: tuple[float, float, float] = (-0.35, -0.45, 0.82)
    ambient: float = 0.52
    gain: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


def random_lighting(rng: np.random.Generator) -> Lighting:
    lx, ly = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.1)
    lz = math.sqrt(max(0.2, 1 - lx * lx - ly * ly))
    norm = math.sqrt(lx * lx + ly * ly + lz * lz)
    warm = rng.uniform(-0.06, 0.06)
    return Lighting(
        direction=(lx / norm, ly / norm, lz / norm),
        ambient=float(rng.uniform(0.42, 0.6)),
        gain=float(rng.uniform(0.85, 1.12)),
        tint=(1 + warm, 1.0, 1 - warm),
    )


class Canvas:
    """A supersampled RGB canvas painted through soft polygon/line masks (PIL does the blending)."""

    def __init__(self, width: int, height: int, backdrop: Image.Image | None = None):
        self.width, self.height = width, height
        self.scale = SUPERSAMPLE
        size = (width * SUPERSAMPLE, height * SUPERSAMPLE)
        self.pixels = backdrop.copy() if backdrop is not None else Image.new("RGB", size, (200, 200, 200))

    def paint(self, shapes, colour, alpha: float = 1.0, blur: float = 0.0, clip=None):
        """Blend ``colour`` (RGB, or fn(ys, xs) -> HxWx3 array in canvas px) inside ``shapes``.

        ``shapes`` is a list of (points_px, kind, width) with kind poly/line/ellipse. ``clip`` is
        what an earlier ``paint`` returned: the new paint stays inside it (the iris inside the eye).
        Returns (box, mask) for later clipping (use masks painted at full ``alpha``), or None
        when nothing lands on the canvas.
        """
        shapes = [s for s in shapes if s[0] is not None and len(s[0])]
        if not shapes:
            return None
        pad = max(s[2] for s in shapes) + 3 * blur + 2
        pts = np.concatenate([s[0] for s in shapes])
        W, H = self.pixels.size
        x0 = max(int(math.floor(pts[:, 0].min() - pad)), 0)
        y0 = max(int(math.floor(pts[:, 1].min() - pad)), 0)
        x1 = min(int(math.ceil(pts[:, 0].max() + pad)) + 1, W)
        y1 = min(int(math.ceil(pts[:, 1].max() + pad)) + 1, H)
        if x1 <= x0 or y1 <= y0:
            return None
        box = (x0, y0, x1, y1)
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(mask)
        ink = int(round(255 * alpha))  # blur and clip commute with this scaling
        for points, kind, width in shapes:
            local = np.asarray(points, np.float64) - (x0, y0)
            if kind == "poly":
                draw.polygon([tuple(p) for p in local.tolist()], fill=ink)
            elif kind == "ellipse":
                (ax, ay), (bx, by) = local.tolist()
                draw.ellipse((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)), fill=ink)
            else:
                draw.line([tuple(p) for p in local.tolist()], fill=ink, width=max(1, int(round(width))), joint="curve")
        if blur >= 0.75:  # smaller radii change nothing visible after the 2x reduction
            mask = mask.filter(ImageFilter.GaussianBlur(blur))
        if clip is not None:
            mask = ImageChops.multiply(mask, _crop_mask(clip, box))
        if callable(colour):
            self.pixels.paste(_colour_field(colour, box), box, mask)
        else:
            self.pixels.paste(tuple(int(min(max(c, 0), 255)) for c in colour), box, mask)
        return box, mask

    def image(self, rng: np.random.Generator | None = None, grain: float = 0.0) -> Image.Image:
        small = self.pixels.reduce(self.scale)
        if rng is None or grain <= 0:
            return small
        noise = rng.standard_normal((self.height, self.width, 1), dtype=np.float32)  # luminance grain
        noisy = np.asarray(small, np.float32) + grain * noise
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _colour_field(colour, box) -> Image.Image:
    """Evaluate a smooth colour function on a half-resolution grid and upsample it to ``box``."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ys = y0 + 2 * np.arange((h + 1) // 2, dtype=np.float32)[:, None] + 1.0
    xs = x0 + 2 * np.arange((w + 1) // 2, dtype=np.float32)[None, :] + 1.0
    ys, xs = np.broadcast_arrays(ys, xs)
    field = np.clip(colour(ys, xs), 0, 255).astype(np.uint8)
    # Nearest is exact here: each value covers one 2x2 block, which the final reduce averages.
    return Image.fromarray(field, "RGB").resize((w, h), Image.NEAREST)


def _crop_mask(found, box) -> Image.Image:
    (cx0, cy0, cx1, cy1), clip_mask = found
    x0, y0, x1, y1 = box
    out = Image.new("L", (x1 - x0, y1 - y0), 0)
    out.paste(clip_mask, (cx0 - x0, cy0 - y0))
    return out


def _shaded(rgb, place: Placement, scale: float, light: Lighting, cx: float, cy: float, rx: float, ry: float,
            texture=None, gloss: float = 0.0):
    """Colour function: ``rgb`` lit as an ellipsoid centred (cx, cy) with radii (rx, ry) in face units.

    ``gloss`` adds a specular sheen (skin shine on forehead, nose and cheeks), which keeps the
    form of dark faces readable.
    """
    base = np.asarray(rgb, np.float32) * np.asarray(light.tint, np.float32)
    lx, ly, lz = light.direction
    hx, hy, hz = lx, ly, lz + 1.0  # half-vector between light and a viewer on the z axis
    h_norm = math.sqrt(hx * hx + hy * hy + hz * hz)
    hx, hy, hz = hx / h_norm, hy / h_norm, hz / h_norm

    def colour(ys, xs):
        u, v = place.to_face(xs, ys, scale)
        nx, ny = (u - cx) / rx, (v - cy) / ry
        nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0.02, 1))
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        diffuse = np.clip((nx * lx + ny * ly + nz * lz) / norm, 0, 1)
        shade = light.ambient + (1 - light.ambient) * diffuse
        if texture is not None:
            shade = shade * texture(u, v)
        lit = base * (shade * light.gain)[..., None]
        if gloss > 0:
            spec = np.clip((nx * hx + ny * hy + nz * hz) / norm, 0, 1) ** 12
            lit = lit + (gloss * 255 * light.gain) * spec[..., None]
        return lit

    return colour


def _jaw_shadow(face: np.ndarray):
    """Shade multiplier for the neck: dark just under the jaw line, fading over 0.3 face units."""
    lower = face[face[:, 1] > 0]
    lower = lower[np.argsort(lower[:, 0])]

    def texture(u, v):
        below = v - np.interp(u, lower[:, 0], lower[:, 1])
        return 0.6 + 0.4 * np.clip(below / 0.3, 0, 1)

    return texture


def _hair_texture(p: FaceParams):
    freq = 34.0 if p.hair_texture == "straight" else 22.0
    phase = (p.detail_seed % 997) / 997 * 6.28

    def texture(u, v):
        if p.hair_texture == "wavy":
            w = np.sin(freq * u + 2.2 * np.sin(7 * v + phase) + phase)
        else:
            w = np.sin(freq * u + 1.5 * np.sin(3 * u + phase) + 0.8 * v)
        return 0.9 + 0.1 * w + 0.05 * np.sin(freq * 2.3 * u + phase)

    return texture


def draw_face(canvas: Canvas, p: FaceParams, place: Placement, light: Lighting = Lighting()) -> None:
    """Paint one shaded face with hair, shoulders and accessories onto ``canvas``."""
    # Cameras expose for the face: a dark face gets more light, as a metering camera would give it.
    luma = 0.3 * p.skin_rgb[0] + 0.59 * p.skin_rgb[1] + 0.11 * p.skin_rgb[2]
    light = replace(light, gain=light.gain * float(np.clip(135.0 / luma, 1.0, 1.4)))
    g = _geometry(p, place.yaw)
    s = canvas.scale
    u = place.unit * s  # canvas px per face unit

    def poly(pts):
        return (place.to_px(pts, s), "poly", 0)

    def line(pts, width):
        return (place.to_px(pts, s), "line", width * u)

    def ellipse(x, y, rx, ry):
        return (place.to_px(np.array([(x - rx, y - ry), (x + rx, y + ry)]), s), "ellipse", 0)

    W, H = p.face_width, p.face_height
    skin = p.skin_rgb
    dark_skin = tuple(c * 0.62 for c in skin)
    hair_tex = _hair_texture(p)

    canvas.paint([poly(g.shoulders)], _shaded(p.clothes_rgb, place, s, light, 0, H + 2.3, 3.4, 1.8))
    if g.hair_back is not None:
        canvas.paint([poly(g.hair_back)], _shaded(tuple(c * 0.8 for c in p.hair_rgb), place, s, light, 0, 0, W * 1.6, H * 1.6,
                                                  hair_tex, gloss=0.08))
    canvas.paint([poly(g.neck)], _shaded(tuple(c * 0.78 for c in skin), place, s, light, 0, H, W * 1.2, H * 1.3,
                                         _jaw_shadow(g.face)))
    if g.necklace is not None:
        canvas.paint([line(g.necklace, 0.035)], (220, 200, 120))
    if g.necktie is not None:
        canvas.paint([poly(g.necktie)], tuple(255 - c for c in p.clothes_rgb))
    for ear in g.ears:
        canvas.paint([poly(ear)], _shaded(tuple(c * 0.9 for c in skin), place, s, light, 0, 0, W * 1.05, H))
        canvas.paint([line(ear * [0.985, 1] + [0, 0.02], 0.025)], dark_skin, alpha=0.5, blur=0.02 * u)
    gloss = 0.06 + 0.18 * p.skin_tone
    face_mask = canvas.paint([poly(g.face)], _shaded(skin, place, s, light, 0, -0.05, W * 1.04, H * 1.04, gloss=gloss))
    # Eye sockets, cheek and nose-side shading.
    for sx in (-1, 1):
        ex = sx * p.eye_spacing + place.yaw * 0.18
        canvas.paint([ellipse(ex, p.eye_y - 0.04, p.eye_width * 1.5, p.eye_height * 2.6)], dark_skin, alpha=0.35, blur=0.08 * u, clip=face_mask)
        canvas.paint([ellipse(sx * 0.55, p.eye_y + 0.5, 0.25, 0.22)], (235, 120, 120) if p.rosy_cheeks else dark_skin,
                     alpha=0.45 if p.rosy_cheeks else 0.12, blur=0.1 * u, clip=face_mask)
    for bridge in g.nose_bridge:
        canvas.paint([line(bridge, 0.05)], dark_skin, alpha=0.3, blur=0.05 * u, clip=face_mask)
    tip_x, tip_y = g.nose_tip[len(g.nose_tip) // 2]
    canvas.paint([ellipse(tip_x, tip_y - 0.08, p.nose_width * 0.7, 0.1)], tuple(min(255, c * 1.15) for c in skin), alpha=0.4, blur=0.05 * u)
    canvas.paint([line(g.nose_tip, 0.04)], dark_skin, alpha=0.45, blur=0.02 * u)
    for nx, ny, rx, ry in g.nostrils:
        canvas.paint([ellipse(nx, ny, rx, ry)], tuple(c * 0.4 for c in skin), alpha=0.7, blur=0.012 * u)
    # The nose shades the upper lip.
    canvas.paint([ellipse(tip_x, tip_y + 0.12, p.nose_width * 0.9, 0.05)], dark_skin, alpha=0.3, blur=0.04 * u)

    if p.beard == "stubble":
        canvas.paint([poly(g.beard)], tuple(c * 0.5 for c in p.hair_rgb), alpha=0.35, blur=0.04 * u, clip=face_mask)
    elif g.beard is not None:
        canvas.paint([poly(g.beard)], _shaded(p.hair_rgb, place, s, light, 0, 0, W * 1.1, H * 1.1, hair_tex), blur=0.02 * u)

    # Mouth.
    lip = p.lip_rgb
    if g.mouth_opening is not None:
        canvas.paint([poly(g.mouth_opening)], (60, 20, 24))
        teeth = g.mouth_opening.copy()
        teeth[:, 1] = np.minimum(teeth[:, 1], g.mouth_line[len(g.mouth_line) // 2, 1] + 0.01)
        canvas.paint([poly(teeth)], (236, 232, 222), alpha=0.9)
    canvas.paint([poly(g.upper_lip)], _shaded(tuple(c * 0.9 for c in lip), place, s, light, 0, 0, W, H))
    canvas.paint([poly(g.lower_lip)], _shaded(lip, place, s, light, 0, 0, W, H))
    canvas.paint([line(g.mouth_line, 0.025)], tuple(c * 0.4 for c in lip), alpha=0.9)
    lower_mid = g.lower_lip[-len(g.lower_lip) // 2]  # the lower lip shades the chin
    canvas.paint([ellipse(lower_mid[0], lower_mid[1] + 0.05, p.mouth_width * 0.5, 0.04)], dark_skin, alpha=0.3, blur=0.03 * u)
    if g.moustache is not None:
        canvas.paint([poly(g.moustache)], _shaded(p.hair_rgb, place, s, light, 0, 0, W, H, hair_tex), blur=0.01 * u)

    # Eyes: white, iris, pupil, catch-light, lid shadow, lash line, lower lid, crease.
    brow_rgb = tuple(c * 0.55 for c in p.hair_rgb) if p.hair_colour in ("blond", "gray") else p.hair_rgb
    for eye, lid, (ix, iy, ir) in zip(g.eyes, g.upper_lids, g.irises):
        eye_mask = canvas.paint([poly(eye)], (232, 228, 224))
        canvas.paint([ellipse(ix, iy, ir, ir)], _shaded(p.iris_rgb, place, s, light, ix, iy - ir * 0.5, ir * 2, ir * 2), clip=eye_mask)
        canvas.paint([ellipse(ix, iy, ir * 0.45, ir * 0.45)], (12, 10, 10), clip=eye_mask)
        canvas.paint([ellipse(ix - ir * 0.3, iy - ir * 0.35, ir * 0.18, ir * 0.18)], (250, 250, 250), alpha=0.9, clip=eye_mask)
        canvas.paint([line(lid, 0.08)], tuple(c * 0.3 for c in skin), alpha=0.5, blur=0.02 * u, clip=eye_mask)
        canvas.paint([line(lid, 0.035 if p.male else 0.05)], (30, 22, 20))
        canvas.paint([line(eye[len(lid) - 1 :], 0.015)], tuple(c * 0.55 for c in skin), alpha=0.7)
        canvas.paint([line(lid - [0, p.eye_height * 1.1], 0.02)], dark_skin, alpha=0.5, blur=0.01 * u)
    for brow in g.brows:
        canvas.paint([poly(brow)], brow_rgb, alpha=0.92, blur=0.006 * u)

    for extra in g.extras:
        canvas.paint([line(extra, 0.025)], dark_skin, alpha=0.35, blur=0.015 * u)
    for sb in g.sideburns:
        canvas.paint([poly(sb)], p.hair_rgb, alpha=0.95)

    if g.hair_front is not None:
        canvas.paint([poly(g.hair_front)], _shaded(p.hair_rgb, place, s, light, 0, -0.3, W * 1.3, H * 1.3, hair_tex, gloss=0.12),
                     blur=0.01 * u)
        for strand in g.strands:
            canvas.paint([line(strand, 0.02)], tuple(c * 0.6 for c in p.hair_rgb), alpha=0.5)
    if g.hat is not None:
        canvas.paint([poly(g.hat)], _shaded(p.hat_rgb, place, s, light, 0, -H * 0.6, W * 1.3, H), blur=0.005 * u)
        canvas.paint([poly(g.hat_brim)], _shaded(tuple(c * 0.8 for c in p.hat_rgb), place, s, light, 0, -H * 0.6, W * 1.3, H))
    for ex, ey, er in g.earrings:
        canvas.paint([(place.to_px(_arc(ex, ey + er, er, er * 1.2, 0, 2 * math.pi, 16), s), "line", 0.025 * u)], (225, 195, 90))
    if g.glasses:
        frame = (20, 20, 24) if p.detail_seed % 3 else (120, 80, 40)
        for lens in g.glasses:
            closed = np.concatenate([lens, lens[:1]])
            canvas.paint([poly(lens)], (200, 220, 235), alpha=0.12)
            canvas.paint([line(closed, 0.04)], frame)
        canvas.paint([line(g.glasses_bridge, 0.035)], frame)
        for lens, sx in zip(g.glasses, (-1, 1)):
            outer = lens[np.argmax(lens[:, 0] * sx)]
            canvas.paint([line(np.array([outer, (sx * W * 0.98, p.eye_y + 0.02)]), 0.035)], frame)


# --------------------------------------------------------------------------- backgrounds


def background(width: int, height: int, rng: np.random.Generator | None) -> Image.Image:
    """A photo-like backdrop at canvas resolution: gradient, low-frequency blotches, bokeh.

    Everything in it is blurry, so it is drawn at a quarter of the output size and upsampled.
    """
    size = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    t = np.linspace(0, 1, 8, dtype=np.float32)[:, None, None]
    if rng is None:
        top, bottom = np.array([214, 220, 226], np.float32), np.array([170, 178, 188], np.float32)
        small = np.broadcast_to(top * (1 - t) + bottom * t, (8, 8, 3))
        return Image.fromarray(small.astype(np.uint8), "RGB").resize(size, Image.BILINEAR)
    # Muted colours, as in most photos: a random hue pulled toward grey.
    grey = rng.uniform(60, 220)
    top = grey + (rng.uniform(20, 245, 3) - grey) * rng.uniform(0.15, 0.8)
    bottom = np.clip(top * rng.uniform(0.55, 1.1) + rng.normal(0, 20, 3), 0, 255)
    # Blotches vary mostly in brightness, a little in hue, like an out-of-focus room.
    light = rng.normal(0, rng.uniform(4, 22), (8, 8, 1))
    small = top * (1 - t) + bottom * t + light + rng.normal(0, 5, (8, 8, 3))
    quarter = (max(width // 4, 2), max(height // 4, 2))
    backdrop = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB").resize(quarter, Image.BICUBIC)
    for _ in range(int(rng.integers(0, 6))):  # bokeh discs
        x, y, r = rng.uniform(0, quarter[0]), rng.uniform(0, quarter[1]), rng.uniform(0.03, 0.15) * quarter[0]
        disc = Image.new("L", quarter, 0)
        ImageDraw.Draw(disc).ellipse((x - r, y - r, x + r, y + r), fill=int(255 * rng.uniform(0.15, 0.45)))
        disc = disc.filter(ImageFilter.GaussianBlur(max(r * 0.3, 0.5)))
        backdrop.paste(tuple(int(c) for c in rng.uniform(40, 255, 3)), (0, 0), disc)
    return backdrop.resize(size, Image.BILINEAR)


def render_face(params: FaceParams, size: int = 128, rng: np.random.Generator | None = None) -> Image.Image:
    """A square photo-like portrait of ``params``.

    Without ``rng`` the face sits exactly in :func:`default_placement` under default light on a
    plain backdrop (the frame of :func:`face_strokes`). With ``rng`` each call is another photo
    of the same person: small shifts, scale, roll, yaw, lighting, backdrop and clothes change.
    """
    base = default_placement(size)
    if rng is None:
        canvas = Canvas(size, size, background(size, size, None))
        draw_face(canvas, params, base)
        return canvas.image()
    place = jitter_placement(base, size, rng)
    canvas = Canvas(size, size, background(size, size, rng))
    draw_face(canvas, photo_outfit(params, rng), place, random_lighting(rng))
    return canvas.image(rng, grain=float(rng.uniform(0.5, 3.0)))


def photo_outfit(params: FaceParams, rng: np.random.Generator) -> FaceParams:
    """The same person in other clothes: photos of one identity must not share a shirt colour."""
    return replace(params, clothes_rgb=tuple(float(c) for c in rng.integers(20, 235, 3)))


def jitter_placement(base: Placement, size: float, rng: np.random.Generator) -> Placement:
    return Placement(
        cx=base.cx + rng.uniform(-0.05, 0.05) * size,
        cy=base.cy + rng.uniform(-0.04, 0.04) * size,
        unit=base.unit * rng.uniform(0.9, 1.1),
        roll=float(rng.uniform(-0.14, 0.14)),
        yaw=float(rng.uniform(-0.35, 0.35)),
    )


# --------------------------------------------------------------------------- line drawing


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
    runs, current = [], []
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
        out += [Stroke(stroke.group, run, max(1.0, stroke.width * float(scale.mean())))
                for run in _visible_runs(points, outside)]
    return out


def face_strokes(params: FaceParams, size: int | tuple[int, int], placement: Placement | None = None) -> list[Stroke]:
    """The face as line art in the frame of ``render_face(params, size)`` (no jitter).

    ``size`` is the square side, or (width, height) of the image when ``placement`` puts the
    face somewhere else (a corpus photo: :meth:`EmbeddedCorpus.photo_strokes`). Strokes come
    in drawing order: hair, contour, mouth, eyes, nose, details. Parts of an outline hidden in
    the photo (the forehead under the hair, the hair behind the face, the shoulders behind the
    neck) or outside the image are left out, as a person would.
    """
    p = params
    width, height = (size, size) if isinstance(size, int) else size
    place = placement or default_placement(width)
    g = _geometry(p, place.yaw)
    unit = place.unit
    frame_max = np.array([width - 1, height - 1])
    strokes: list[Stroke] = []
    head_cover = [poly for poly in (g.hair_front, g.hat, g.hat_brim) if poly is not None]

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

    W, H = p.face_width, p.face_height
    covered_face = (g.face, *head_cover)
    if g.hat is not None:
        add("hair", g.hat[:-2], 0.03, (g.hat_brim,))
        add("hair", _closed(g.hat_brim), 0.03)
    if g.hair_back is not None:
        for piece in _split(_closed(g.hair_back), 4):
            add("hair", piece, 0.03, (g.face, g.neck, *head_cover))
    if g.hair_front is not None:
        for piece in _split(g.hair_front[:_CAP_POINTS], 2):  # the crown
            add("hair", piece, 0.03, (g.hair_back,) if g.hair_back is not None else ())
        for piece in _split(g.hair_front[_CAP_POINTS:], 2):  # the hairline or fringe
            add("hair", piece, 0.025)
        for strand in g.strands:
            add("hair", strand, 0.015, (g.face,), over=g.hair_front)

    for piece in _split(_closed(g.face), 4):
        add("contour", piece, 0.03, tuple(head_cover))
    for ear in g.ears:
        add("contour", _closed(ear), 0.025, covered_face)
    for sx in (-1, 1):
        add("contour", np.array([(sx * g.neck[1, 0], y) for y in np.linspace(0.4, H + 0.9, 12)]), 0.025, (g.face,))
    add("contour", g.shoulders[:40], 0.025, (g.neck, g.hair_back) if g.hair_back is not None else (g.neck,))

    add("mouth", g.upper_lip[: len(g.upper_lip) // 2 + 1], 0.02)
    add("mouth", g.mouth_line, 0.025)
    add("mouth", g.lower_lip[len(g.mouth_line) :], 0.02)
    if g.mouth_opening is not None:
        add("mouth", _closed(g.mouth_opening), 0.015)

    for brow in g.brows:
        half = len(brow) // 2
        add("eyes", brow[:half], 0.02, tuple(head_cover))
        add("eyes", brow[half:], 0.02, tuple(head_cover))
    for eye, lid, (ix, iy, ir) in zip(g.eyes, g.upper_lids, g.irises):
        add("eyes", lid, 0.03)
        add("eyes", np.concatenate([eye[len(lid) - 1 :], lid[:1]]), 0.015)
        iris = _arc(ix, iy, ir, ir, 0, 2 * math.pi, 20)
        add("eyes", iris, 0.015, (np.concatenate([lid, lid[::-1] - [0, 1]]),))  # the upper lid hides the top
        add("eyes", _arc(ix, iy, ir * 0.45, ir * 0.45, 0, 2 * math.pi, 12), 0.02)

    for bridge in g.nose_bridge:
        add("nose", bridge[3:], 0.02)
    add("nose", g.nose_tip, 0.02)
    for nx, ny, rx, ry in g.nostrils:
        add("nose", _arc(nx, ny, rx, ry, math.pi, 2 * math.pi, 10), 0.02)

    if g.beard is not None and p.beard != "stubble":
        for piece in _split(_closed(g.beard), 3):
            add("details", piece, 0.02)
    if g.moustache is not None:
        add("details", _closed(g.moustache), 0.02)
    for sb in g.sideburns:
        add("details", sb, 0.02)
    for lens in g.glasses:
        add("details", _closed(lens), 0.025)
    if g.glasses_bridge is not None:
        add("details", g.glasses_bridge, 0.025)
        for lens, sx in zip(g.glasses, (-1, 1)):
            outer = lens[np.argmax(lens[:, 0] * sx)]
            add("details", np.array([outer, (sx * W * 0.98, p.eye_y + 0.02)]), 0.025)
    for ex, ey, er in g.earrings:
        add("details", _arc(ex, ey + er, er, er * 1.2, 0, 2 * math.pi, 12), 0.015)
    if g.necklace is not None:
        add("details", g.necklace, 0.02)
    if g.necktie is not None:
        add("details", _closed(g.necktie), 0.02)
    for extra in g.extras:
        add("details", extra, 0.015)
    return strokes


# --------------------------------------------------------------------------- attributes


def attributes_of(params: FaceParams) -> list[str]:
    """The CelebA attribute names true of ``params`` (the renderable subset), in vocabulary order."""
    p = params
    hair_visible = p.hair_style != "bald" and (p.hat == "none" or p.hair_style in ("medium", "long"))
    true = {
        "Male": p.male,
        "Young": p.age < 40,
        "Pale_Skin": p.skin_tone < 0.18,
        "Bald": p.hair_style == "bald" and p.hat == "none",
        "Black_Hair": hair_visible and p.hair_colour == "black",
        "Brown_Hair": hair_visible and p.hair_colour == "brown",
        "Blond_Hair": hair_visible and p.hair_colour == "blond",
        "Gray_Hair": hair_visible and p.hair_colour == "gray",
        "Bangs": p.bangs and p.hat == "none",
        "Straight_Hair": hair_visible and p.hair_texture == "straight",
        "Wavy_Hair": hair_visible and p.hair_texture == "wavy",
        "Receding_Hairline": p.receding_hairline and p.hat == "none",
        "Arched_Eyebrows": p.brow_style == "arched",
        "Bushy_Eyebrows": p.brow_style == "bushy",
        "Narrow_Eyes": p.narrow_eyes,
        "Eyeglasses": p.glasses != "none",
        "Goatee": p.beard == "goatee",
        "Mustache": p.mustache,
        "No_Beard": p.beard in ("none", "stubble"),
        "5_o_Clock_Shadow": p.beard == "stubble",
        "Sideburns": p.sideburns,
        "Smiling": p.smiling,
        "Mouth_Slightly_Open": p.mouth_open,
        "Wearing_Earrings": p.earrings,
        "Wearing_Hat": p.hat != "none",
        "Wearing_Lipstick": p.lipstick,
        "Wearing_Necklace": p.necklace,
        "Wearing_Necktie": p.necktie,
        "Big_Nose": p.big_nose,
        "Big_Lips": p.big_lips,
        "Chubby": p.chubby,
        "Rosy_Cheeks": p.rosy_cheeks,
    }
    return [name for name in ATTRIBUTES if true.get(name, False)]
