"""Whole images for corpus rows: single portraits, group shots, tiny faces, and scenes with no face."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fvlp_core.corpus.faces import (
    Canvas,
    FaceParams,
    Placement,
    background,
    draw_face,
    jitter_placement,
    photo_outfit,
    random_lighting,
)


def portrait_placement(width: int, height: int, rng: np.random.Generator) -> Placement:
    """Where :func:`portrait` puts the face; it draws these numbers from ``rng`` first."""
    short = min(width, height)
    base = Placement(cx=width * 0.5, cy=height * 0.46, unit=short * rng.uniform(0.19, 0.25))
    return jitter_placement(base, short, rng)


def portrait(params: FaceParams, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """One person filling a LAION-sized photo (head about half the short side)."""
    place = portrait_placement(width, height, rng)
    canvas = Canvas(width, height, background(width, height, rng))
    draw_face(canvas, photo_outfit(params, rng), place, random_lighting(rng))
    return canvas.image(rng, grain=float(rng.uniform(0.5, 3.0)))


def tiny_face_placement(width: int, height: int, rng: np.random.Generator) -> Placement:
    """Where :func:`tiny_face` puts the face (half face width 4-8 px); drawn from ``rng`` first."""
    unit = rng.uniform(4.0, 8.0)
    return Placement(
        cx=rng.uniform(0.2, 0.8) * width,
        cy=rng.uniform(0.25, 0.6) * height,
        unit=unit,
        roll=float(rng.uniform(-0.1, 0.1)),
        yaw=float(rng.uniform(-0.3, 0.3)),
    )


def tiny_face(params: FaceParams, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A person far away: the face is a few pixels wide somewhere in a large scene."""
    place = tiny_face_placement(width, height, rng)
    canvas = Canvas(width, height, background(width, height, rng))
    _scenery(canvas, rng, horizon=place.cy + place.unit * 6)
    draw_face(canvas, photo_outfit(params, rng), place, random_lighting(rng))
    return canvas.image(rng, grain=1.5)


def group(people: list[FaceParams], width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Several people side by side, every face large enough to detect."""
    n = len(people)
    unit = min(width / (n * 2.9), height * 0.17)
    canvas = Canvas(width, height, background(width, height, rng))
    light = random_lighting(rng)
    for k in rng.permutation(n):  # draw order decides who overlaps whom
        cx = width * (k + 0.5) / n + rng.uniform(-0.04, 0.04) * width / n
        place = Placement(
            cx=cx,
            cy=height * rng.uniform(0.36, 0.5),
            unit=unit * rng.uniform(0.9, 1.08),
            roll=float(rng.uniform(-0.12, 0.12)),
            yaw=float(rng.uniform(-0.3, 0.3)),
        )
        draw_face(canvas, photo_outfit(people[k], rng), place, light)
    return canvas.image(rng, grain=1.5)


def no_face(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Images LAION-Face's keyword filter lets through without a face: landscapes, products, banners, backs of heads."""
    kind = int(rng.integers(4))
    canvas = Canvas(width, height, background(width, height, rng))
    if kind == 0:
        _scenery(canvas, rng, horizon=height * rng.uniform(0.4, 0.7))
    elif kind == 1:
        _products(canvas, rng)
    elif kind == 2:
        _back_of_head(canvas, rng)
    image = canvas.image(rng, grain=1.0)
    if kind == 3:
        _banner(image, rng)
    return image


def _scenery(canvas: Canvas, rng: np.random.Generator, horizon: float) -> None:
    s = canvas.scale
    W, H = canvas.width, canvas.height
    sun_x, sun_y, r = rng.uniform(0.1, 0.9) * W, rng.uniform(0.05, 0.3) * H, rng.uniform(0.04, 0.09) * W
    canvas.paint(
        [(np.array([(sun_x - r, sun_y - r), (sun_x + r, sun_y + r)]) * s, "ellipse", 0)],
        (255, 236, 170),
        alpha=0.9,
        blur=2,
    )
    for layer in range(3):
        xs = np.linspace(-2, W + 2, 40)
        phase = rng.uniform(0, 6.28, 3)
        ys = (
            horizon
            + layer * H * 0.08
            + sum(H * 0.05 / (k + 1) * np.sin(xs / W * (k + 1) * 3 + phase[k]) for k in range(3))
        )
        ridge = np.concatenate([np.stack([xs, ys], 1), [(W + 2, H + 2), (-2, H + 2)]])
        green = np.array([60, 110, 50]) * (0.7 + 0.25 * layer) + rng.normal(0, 15, 3)
        canvas.paint([(ridge * s, "poly", 0)], np.clip(green, 0, 255))
    for _ in range(int(rng.integers(0, 5))):
        tx, ty, th = rng.uniform(0, W), horizon + rng.uniform(0, 0.3) * H, rng.uniform(0.08, 0.2) * H
        tree = np.array([(tx, ty - th), (tx + th * 0.3, ty), (tx - th * 0.3, ty)])
        canvas.paint([(tree * s, "poly", 0)], (30 + rng.uniform(0, 30), 70 + rng.uniform(0, 40), 35))


def _products(canvas: Canvas, rng: np.random.Generator) -> None:
    s = canvas.scale
    W, H = canvas.width, canvas.height
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.2, 0.8) * W, rng.uniform(0.3, 0.75) * H
        w, h = rng.uniform(0.08, 0.25) * W, rng.uniform(0.15, 0.4) * H
        colour = rng.uniform(20, 240, 3)
        box = np.array([(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)])
        if rng.random() < 0.5:
            canvas.paint([(box * s, "poly", 0)], colour)
            canvas.paint([(box[[0, 1]] * s, "line", 3 * s)], colour * 1.2, alpha=0.8)
        else:  # a bottle: body and neck
            canvas.paint([(np.array([(cx - w * 0.6, cy - h), (cx + w * 0.6, cy + h)]) * s, "ellipse", 0)], colour)
            neck = np.array(
                [
                    (cx - w * 0.15, cy - h * 1.4),
                    (cx + w * 0.15, cy - h * 1.4),
                    (cx + w * 0.15, cy - h * 0.8),
                    (cx - w * 0.15, cy - h * 0.8),
                ]
            )
            canvas.paint([(neck * s, "poly", 0)], colour * 0.7)
        canvas.paint([(box[[0, 3]] * s + [w * 0.4 * s, 0], "line", w * 0.15 * s)], (255, 255, 255), alpha=0.25, blur=3)


def _back_of_head(canvas: Canvas, rng: np.random.Generator) -> None:
    s = canvas.scale
    W, H = canvas.width, canvas.height
    cx, cy, r = W * rng.uniform(0.4, 0.6), H * rng.uniform(0.35, 0.45), min(W, H) * rng.uniform(0.18, 0.25)
    clothes = rng.uniform(20, 230, 3)
    canvas.paint([(np.array([(cx - r * 2.6, cy + r * 1.3), (cx + r * 2.6, cy + r * 3.4)]) * s, "ellipse", 0)], clothes)
    canvas.paint(
        [(np.array([(cx - r * 0.45, cy), (cx + r * 0.45, cy + r * 1.8)]) * s, "ellipse", 0)],
        rng.uniform(90, 220, 3) * (0.8, 0.65, 0.55),
    )
    hair = np.array((28, 24, 24)) + rng.uniform(0, 160) * np.array((1, 0.75, 0.5))
    canvas.paint([(np.array([(cx - r, cy - r * 1.2), (cx + r, cy + r * 1.1)]) * s, "ellipse", 0)], hair)
    for k in range(14):
        a = math.pi * (0.15 + 0.7 * k / 13)
        stroke = np.array(
            [(cx + r * 0.1 * math.cos(a), cy - r * 0.9), (cx + r * 0.95 * math.cos(a), cy + r * 0.8 * math.sin(a))]
        )
        canvas.paint([(stroke * s, "line", 1.2 * s)], hair * 0.6, alpha=0.6)


_BANNER_WORDS = (
    "SALE",
    "50% OFF",
    "NEW ARRIVALS",
    "Summer Collection",
    "FREE SHIPPING",
    "Best Price",
    "Shop Now",
    "Limited Edition",
    "Hair Salon",
    "Beauty Tips",
    "Top 10",
    "Webinar",
)


def _banner(image: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.uniform(0.08, 0.16) * h)
        font = ImageFont.load_default(size)
        x, y = rng.uniform(0.03, 0.4) * w, rng.uniform(0.05, 0.8) * h
        text = _BANNER_WORDS[int(rng.integers(len(_BANNER_WORDS)))]
        draw.text((x, y), text, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), font=font)
