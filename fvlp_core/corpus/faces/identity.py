"""Face identities: the parameters of one person, sampled from a seed, and their attribute labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fvlp_core.attributes import ATTRIBUTES

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


def rgb(values) -> tuple[float, float, float]:
    """Three colour channels as floats."""
    red, green, blue = (float(v) for v in values)
    return red, green, blue


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return rgb(np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t)


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
    hair_rgb = np.clip(
        np.array(HAIR_COLOURS[colour], np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 8, 3), 0, 255
    )

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
    clothes = rgb(rng.integers(20, 235, 3))
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
        skin_rgb=rgb(skin),
        hair_rgb=rgb(hair_rgb),
        iris_rgb=rgb(_IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))] + rng.normal(0, 8, 3)),
        lip_rgb=lip_rgb,
        clothes_rgb=clothes,
        hat_rgb=rgb(rng.integers(20, 235, 3)),
    )


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
