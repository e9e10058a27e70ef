"""The photo renderer: shaded skin, hair, eyes and clothes painted into a face's outlines.

Rendering draws on a 2x supersampled canvas and averages down, which antialiases every
edge. Shading comes from an ellipsoid normal under a light direction, so skin and hair
have the gradients a face detector expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from fvlp_core.corpus.faces.geometry import (
    SIDES,
    YAW_SHIFT,
    FaceGeometry,
    Placement,
    arc,
    default_placement,
    face_geometry,
    jitter_placement,
)
from fvlp_core.corpus.faces.identity import FaceParams, rgb

SUPERSAMPLE = 2


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
    return Image.fromarray(field, "RGB").resize((w, h), Image.Resampling.NEAREST)


def _crop_mask(found, box) -> Image.Image:
    (cx0, cy0, cx1, cy1), clip_mask = found
    x0, y0, x1, y1 = box
    out = Image.new("L", (x1 - x0, y1 - y0), 0)
    out.paste(clip_mask, (cx0 - x0, cy0 - y0))
    return out


def _shaded(
    rgb,
    place: Placement,
    scale: float,
    light: Lighting,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    texture=None,
    gloss: float = 0.0,
):
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


def _hair_texture(params: FaceParams):
    freq = 34.0 if params.hair_texture == "straight" else 22.0
    phase = (params.detail_seed % 997) / 997 * 6.28

    def texture(u, v):
        if params.hair_texture == "wavy":
            w = np.sin(freq * u + 2.2 * np.sin(7 * v + phase) + phase)
        else:
            w = np.sin(freq * u + 1.5 * np.sin(3 * u + phase) + 0.8 * v)
        return 0.9 + 0.1 * w + 0.05 * np.sin(freq * 2.3 * u + phase)

    return texture


class _Pen:
    """Turns face-unit outlines into :meth:`Canvas.paint` shapes for one placement."""

    def __init__(self, canvas: Canvas, place: Placement):
        self.place = place
        self.scale = canvas.scale
        self.unit_px = place.unit * canvas.scale  # canvas px per face unit

    def poly(self, points):
        return (self.place.to_px(points, self.scale), "poly", 0)

    def line(self, points, width):
        return (self.place.to_px(points, self.scale), "line", width * self.unit_px)

    def ellipse(self, x, y, rx, ry):
        return (self.place.to_px(np.array([(x - rx, y - ry), (x + rx, y + ry)]), self.scale), "ellipse", 0)

    def shaded(self, rgb, light: Lighting, cx, cy, rx, ry, texture=None, gloss: float = 0.0):
        return _shaded(rgb, self.place, self.scale, light, cx, cy, rx, ry, texture, gloss)


def _scaled(rgb, factor: float) -> tuple[float, ...]:
    return tuple(c * factor for c in rgb)


def _paint_body(canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry) -> None:
    """Shoulders, the hair behind the head, neck, necklace, tie and ears."""
    half_width, half_height = params.face_width, params.face_height
    skin = params.skin_rgb
    canvas.paint([pen.poly(geometry.shoulders)], pen.shaded(params.clothes_rgb, light, 0, half_height + 2.3, 3.4, 1.8))
    if geometry.hair_back is not None:
        hair = pen.shaded(
            _scaled(params.hair_rgb, 0.8),
            light,
            0,
            0,
            half_width * 1.6,
            half_height * 1.6,
            _hair_texture(params),
            gloss=0.08,
        )
        canvas.paint([pen.poly(geometry.hair_back)], hair)
    neck = pen.shaded(
        _scaled(skin, 0.78), light, 0, half_height, half_width * 1.2, half_height * 1.3, _jaw_shadow(geometry.face)
    )
    canvas.paint([pen.poly(geometry.neck)], neck)
    if geometry.necklace is not None:
        canvas.paint([pen.line(geometry.necklace, 0.035)], (220, 200, 120))
    if geometry.necktie is not None:
        canvas.paint([pen.poly(geometry.necktie)], tuple(255 - c for c in params.clothes_rgb))
    for ear in geometry.ears:
        canvas.paint([pen.poly(ear)], pen.shaded(_scaled(skin, 0.9), light, 0, 0, half_width * 1.05, half_height))
        canvas.paint(
            [pen.line(ear * [0.985, 1] + [0, 0.02], 0.025)], _scaled(skin, 0.62), alpha=0.5, blur=0.02 * pen.unit_px
        )


def _paint_skin(canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry):
    """The face with eye sockets, cheeks and the nose's light and shade; returns the face mask."""
    half_width, half_height = params.face_width, params.face_height
    skin, dark_skin, unit_px = params.skin_rgb, _scaled(params.skin_rgb, 0.62), pen.unit_px
    gloss = 0.06 + 0.18 * params.skin_tone
    face_mask = canvas.paint(
        [pen.poly(geometry.face)], pen.shaded(skin, light, 0, -0.05, half_width * 1.04, half_height * 1.04, gloss=gloss)
    )
    for side in SIDES:
        eye_x = side * params.eye_spacing + pen.place.yaw * YAW_SHIFT
        socket = pen.ellipse(eye_x, params.eye_y - 0.04, params.eye_width * 1.5, params.eye_height * 2.6)
        canvas.paint([socket], dark_skin, alpha=0.35, blur=0.08 * unit_px, clip=face_mask)
        canvas.paint(
            [pen.ellipse(side * 0.55, params.eye_y + 0.5, 0.25, 0.22)],
            (235, 120, 120) if params.rosy_cheeks else dark_skin,
            alpha=0.45 if params.rosy_cheeks else 0.12,
            blur=0.1 * unit_px,
            clip=face_mask,
        )
    for bridge in geometry.nose_bridge:
        canvas.paint([pen.line(bridge, 0.05)], dark_skin, alpha=0.3, blur=0.05 * unit_px, clip=face_mask)
    tip_x, tip_y = geometry.nose_tip[len(geometry.nose_tip) // 2]
    highlight = tuple(min(255, c * 1.15) for c in skin)
    canvas.paint(
        [pen.ellipse(tip_x, tip_y - 0.08, params.nose_width * 0.7, 0.1)], highlight, alpha=0.4, blur=0.05 * unit_px
    )
    canvas.paint([pen.line(geometry.nose_tip, 0.04)], dark_skin, alpha=0.45, blur=0.02 * unit_px)
    for nostril_x, nostril_y, rx, ry in geometry.nostrils:
        canvas.paint([pen.ellipse(nostril_x, nostril_y, rx, ry)], _scaled(skin, 0.4), alpha=0.7, blur=0.012 * unit_px)
    # The nose shades the upper lip.
    canvas.paint(
        [pen.ellipse(tip_x, tip_y + 0.12, params.nose_width * 0.9, 0.05)], dark_skin, alpha=0.3, blur=0.04 * unit_px
    )
    return face_mask


def _paint_beard(
    canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry, face_mask
) -> None:
    if params.beard == "stubble":
        canvas.paint(
            [pen.poly(geometry.beard)],
            _scaled(params.hair_rgb, 0.5),
            alpha=0.35,
            blur=0.04 * pen.unit_px,
            clip=face_mask,
        )
    elif geometry.beard is not None:
        hair = pen.shaded(
            params.hair_rgb, light, 0, 0, params.face_width * 1.1, params.face_height * 1.1, _hair_texture(params)
        )
        canvas.paint([pen.poly(geometry.beard)], hair, blur=0.02 * pen.unit_px)


def _paint_mouth(canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry) -> None:
    """Opening and teeth, lips, the line between them, the chin's shade and the moustache."""
    half_width, half_height, lip = params.face_width, params.face_height, params.lip_rgb
    if geometry.mouth_opening is not None:
        canvas.paint([pen.poly(geometry.mouth_opening)], (60, 20, 24))
        teeth = geometry.mouth_opening.copy()
        teeth[:, 1] = np.minimum(teeth[:, 1], geometry.mouth_line[len(geometry.mouth_line) // 2, 1] + 0.01)
        canvas.paint([pen.poly(teeth)], (236, 232, 222), alpha=0.9)
    canvas.paint([pen.poly(geometry.upper_lip)], pen.shaded(_scaled(lip, 0.9), light, 0, 0, half_width, half_height))
    canvas.paint([pen.poly(geometry.lower_lip)], pen.shaded(lip, light, 0, 0, half_width, half_height))
    canvas.paint([pen.line(geometry.mouth_line, 0.025)], _scaled(lip, 0.4), alpha=0.9)
    lower_mid = geometry.lower_lip[-len(geometry.lower_lip) // 2]  # the lower lip shades the chin
    chin_shade = pen.ellipse(lower_mid[0], lower_mid[1] + 0.05, params.mouth_width * 0.5, 0.04)
    canvas.paint([chin_shade], _scaled(params.skin_rgb, 0.62), alpha=0.3, blur=0.03 * pen.unit_px)
    if geometry.moustache is not None:
        hair = pen.shaded(params.hair_rgb, light, 0, 0, half_width, half_height, _hair_texture(params))
        canvas.paint([pen.poly(geometry.moustache)], hair, blur=0.01 * pen.unit_px)


def _paint_eyes(canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry) -> None:
    """White, iris, pupil, catch-light, lid shadow, lash line, lower lid and crease; then the brows."""
    skin, unit_px = params.skin_rgb, pen.unit_px
    for eye, lid, (iris_x, iris_y, iris_r) in zip(geometry.eyes, geometry.upper_lids, geometry.irises):
        eye_mask = canvas.paint([pen.poly(eye)], (232, 228, 224))
        iris = pen.shaded(params.iris_rgb, light, iris_x, iris_y - iris_r * 0.5, iris_r * 2, iris_r * 2)
        canvas.paint([pen.ellipse(iris_x, iris_y, iris_r, iris_r)], iris, clip=eye_mask)
        canvas.paint([pen.ellipse(iris_x, iris_y, iris_r * 0.45, iris_r * 0.45)], (12, 10, 10), clip=eye_mask)
        catch_light = pen.ellipse(iris_x - iris_r * 0.3, iris_y - iris_r * 0.35, iris_r * 0.18, iris_r * 0.18)
        canvas.paint([catch_light], (250, 250, 250), alpha=0.9, clip=eye_mask)
        canvas.paint([pen.line(lid, 0.08)], _scaled(skin, 0.3), alpha=0.5, blur=0.02 * unit_px, clip=eye_mask)
        canvas.paint([pen.line(lid, 0.035 if params.male else 0.05)], (30, 22, 20))
        canvas.paint([pen.line(eye[len(lid) - 1 :], 0.015)], _scaled(skin, 0.55), alpha=0.7)
        canvas.paint(
            [pen.line(lid - [0, params.eye_height * 1.1], 0.02)], _scaled(skin, 0.62), alpha=0.5, blur=0.01 * unit_px
        )
    light_hair = params.hair_colour in ("blond", "gray")
    brow_rgb = _scaled(params.hair_rgb, 0.55) if light_hair else params.hair_rgb
    for brow in geometry.brows:
        canvas.paint([pen.poly(brow)], brow_rgb, alpha=0.92, blur=0.006 * unit_px)


def _paint_lines_and_sideburns(canvas: Canvas, pen: _Pen, params: FaceParams, geometry: FaceGeometry) -> None:
    for extra in geometry.extras:
        canvas.paint([pen.line(extra, 0.025)], _scaled(params.skin_rgb, 0.62), alpha=0.35, blur=0.015 * pen.unit_px)
    for sideburn in geometry.sideburns:
        canvas.paint([pen.poly(sideburn)], params.hair_rgb, alpha=0.95)


def _paint_hair_front(canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry) -> None:
    if geometry.hair_front is None:
        return
    hair = pen.shaded(
        params.hair_rgb,
        light,
        0,
        -0.3,
        params.face_width * 1.3,
        params.face_height * 1.3,
        _hair_texture(params),
        gloss=0.12,
    )
    canvas.paint([pen.poly(geometry.hair_front)], hair, blur=0.01 * pen.unit_px)
    for strand in geometry.strands:
        canvas.paint([pen.line(strand, 0.02)], _scaled(params.hair_rgb, 0.6), alpha=0.5)


def _paint_accessories(canvas: Canvas, pen: _Pen, params: FaceParams, light: Lighting, geometry: FaceGeometry) -> None:
    """Hat, earrings and glasses, over everything else."""
    half_width, half_height = params.face_width, params.face_height
    if geometry.hat is not None:
        hat = pen.shaded(params.hat_rgb, light, 0, -half_height * 0.6, half_width * 1.3, half_height)
        canvas.paint([pen.poly(geometry.hat)], hat, blur=0.005 * pen.unit_px)
        brim = pen.shaded(_scaled(params.hat_rgb, 0.8), light, 0, -half_height * 0.6, half_width * 1.3, half_height)
        canvas.paint([pen.poly(geometry.hat_brim)], brim)
    for ring_x, ring_y, ring_r in geometry.earrings:
        ring = arc(ring_x, ring_y + ring_r, ring_r, ring_r * 1.2, 0, 2 * math.pi, 16)
        canvas.paint([(pen.place.to_px(ring, pen.scale), "line", 0.025 * pen.unit_px)], (225, 195, 90))
    if geometry.glasses:
        frame = (20, 20, 24) if params.detail_seed % 3 else (120, 80, 40)
        for lens in geometry.glasses:
            closed = np.concatenate([lens, lens[:1]])
            canvas.paint([pen.poly(lens)], (200, 220, 235), alpha=0.12)
            canvas.paint([pen.line(closed, 0.04)], frame)
        canvas.paint([pen.line(geometry.glasses_bridge, 0.035)], frame)
        for lens, side in zip(geometry.glasses, SIDES):
            outer = lens[np.argmax(lens[:, 0] * side)]
            temple = np.array([outer, (side * half_width * 0.98, params.eye_y + 0.02)])
            canvas.paint([pen.line(temple, 0.035)], frame)


def draw_face(canvas: Canvas, params: FaceParams, place: Placement, light: Lighting = Lighting()) -> None:
    """Paint one shaded face with hair, shoulders and accessories onto ``canvas``, back to front."""
    # Cameras expose for the face: a dark face gets more light, as a metering camera would give it.
    luma = 0.3 * params.skin_rgb[0] + 0.59 * params.skin_rgb[1] + 0.11 * params.skin_rgb[2]
    light = replace(light, gain=light.gain * float(np.clip(135.0 / luma, 1.0, 1.4)))
    geometry = face_geometry(params, place.yaw)
    pen = _Pen(canvas, place)
    _paint_body(canvas, pen, params, light, geometry)
    face_mask = _paint_skin(canvas, pen, params, light, geometry)
    _paint_beard(canvas, pen, params, light, geometry, face_mask)
    _paint_mouth(canvas, pen, params, light, geometry)
    _paint_eyes(canvas, pen, params, light, geometry)
    _paint_lines_and_sideburns(canvas, pen, params, geometry)
    _paint_hair_front(canvas, pen, params, light, geometry)
    _paint_accessories(canvas, pen, params, light, geometry)


def background(width: int, height: int, rng: np.random.Generator | None) -> Image.Image:
    """A photo-like backdrop at canvas resolution: gradient, low-frequency blotches, bokeh.

    Everything in it is blurry, so it is drawn at a quarter of the output size and upsampled.
    """
    size = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    t = np.linspace(0, 1, 8, dtype=np.float32)[:, None, None]
    if rng is None:
        plain_top, plain_bottom = np.array([214, 220, 226], np.float32), np.array([170, 178, 188], np.float32)
        small = np.broadcast_to(plain_top * (1 - t) + plain_bottom * t, (8, 8, 3))
        return Image.fromarray(small.astype(np.uint8), "RGB").resize(size, Image.Resampling.BILINEAR)
    # Muted colours, as in most photos: a random hue pulled toward grey.
    grey = rng.uniform(60, 220)
    top = grey + (rng.uniform(20, 245, 3) - grey) * rng.uniform(0.15, 0.8)
    bottom = np.clip(top * rng.uniform(0.55, 1.1) + rng.normal(0, 20, 3), 0, 255)
    # Blotches vary mostly in brightness, a little in hue, like an out-of-focus room.
    light = rng.normal(0, rng.uniform(4, 22), (8, 8, 1))
    small = top * (1 - t) + bottom * t + light + rng.normal(0, 5, (8, 8, 3))
    quarter = (max(width // 4, 2), max(height // 4, 2))
    backdrop = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB").resize(quarter, Image.Resampling.BICUBIC)
    for _ in range(int(rng.integers(0, 6))):  # bokeh discs
        x, y, r = rng.uniform(0, quarter[0]), rng.uniform(0, quarter[1]), rng.uniform(0.03, 0.15) * quarter[0]
        disc = Image.new("L", quarter, 0)
        ImageDraw.Draw(disc).ellipse((x - r, y - r, x + r, y + r), fill=int(255 * rng.uniform(0.15, 0.45)))
        disc = disc.filter(ImageFilter.GaussianBlur(max(r * 0.3, 0.5)))
        backdrop.paste(tuple(int(c) for c in rng.uniform(40, 255, 3)), (0, 0), disc)
    return backdrop.resize(size, Image.Resampling.BILINEAR)


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
    return replace(params, clothes_rgb=rgb(rng.integers(20, 235, 3)))
