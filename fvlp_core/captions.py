"""Grammar-template captions from facial attributes (the FaceCaption-15M approach).

A small probabilistic grammar, S -> NP VP, where NP is a pronoun or a determiner
phrase ("This young woman") and VP clauses say what the person *has*, *is wearing*
and *looks*: "She has arched eyebrows, a slight smile and no beard." Choices are
drawn from an RNG seeded per sample, so the same sample always gets the same caption.
"""

from __future__ import annotations

import random

HAS_PHRASES: dict[str, str] = {
    "Arched_Eyebrows": "arched eyebrows",
    "Bushy_Eyebrows": "bushy eyebrows",
    "Bangs": "bangs",
    "Big_Lips": "big lips",
    "Big_Nose": "a big nose",
    "Pointy_Nose": "a pointy nose",
    "High_Cheekbones": "high cheekbones",
    "Narrow_Eyes": "narrow eyes",
    "Oval_Face": "an oval face",
    "Pale_Skin": "pale skin",
    "Rosy_Cheeks": "rosy cheeks",
    "Double_Chin": "a double chin",
    "Bags_Under_Eyes": "bags under the eyes",
    "Receding_Hairline": "a receding hairline",
    "5_o_Clock_Shadow": "a five o'clock shadow",
    "Goatee": "a goatee",
    "Mustache": "a mustache",
    "Sideburns": "sideburns",
    "Smiling": "a slight smile",
    "Mouth_Slightly_Open": "a slightly open mouth",
    "No_Beard": "no beard",
}
HAIR_COLOURS: dict[str, str] = {
    "Black_Hair": "black",
    "Blond_Hair": "blond",
    "Brown_Hair": "brown",
    "Gray_Hair": "gray",
}
HAIR_STYLES: dict[str, str] = {"Straight_Hair": "straight", "Wavy_Hair": "wavy"}
WEAR_PHRASES: dict[str, str] = {
    "Eyeglasses": "eyeglasses",
    "Wearing_Hat": "a hat",
    "Wearing_Earrings": "earrings",
    "Wearing_Lipstick": "lipstick",
    "Wearing_Necklace": "a necklace",
    "Wearing_Necktie": "a necktie",
    "Heavy_Makeup": "heavy makeup",
}
LOOK_PHRASES: dict[str, str] = {"Attractive": "attractive", "Chubby": "chubby", "Bald": "bald"}


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _hair(attributes: set[str]) -> str | None:
    colour = next((c for a, c in HAIR_COLOURS.items() if a in attributes), None)
    style = next((s for a, s in HAIR_STYLES.items() if a in attributes), None)
    words = [w for w in (style, colour) if w]
    return " ".join(words + ["hair"]) if words else None


def template_caption(attributes: list[str], male: bool | None, rng: random.Random) -> str:
    """One caption; ``male`` None means the gender is unknown (a neutral noun phrase)."""
    present = set(attributes)
    noun = {True: "man", False: "woman", None: "person"}[male]
    pronoun = {True: "He", False: "She", None: "They"}[male]
    adjective = "young " if "Young" in present else ""
    subject = rng.choice([f"This {adjective}{noun}", f"The {adjective}{noun}", f"A {adjective}{noun}"])
    if male is not None and not adjective and rng.random() < 0.5:
        subject = pronoun

    has = [p for a, p in HAS_PHRASES.items() if a in present]
    hair = _hair(present)
    if hair:
        has.insert(0, hair)
    rng.shuffle(has)
    wears = [p for a, p in WEAR_PHRASES.items() if a in present]
    looks = [p for a, p in LOOK_PHRASES.items() if a in present]

    plural = subject == "They"
    sentences = []
    if has:
        sentences.append(f"{subject} {'have' if plural else 'has'} {join_phrases(has)}.")
        subject = pronoun
        plural = pronoun == "They"
    if wears:
        sentences.append(f"{subject} {'are' if plural else 'is'} wearing {join_phrases(wears)}.")
        subject = pronoun
        plural = pronoun == "They"
    if looks:
        sentences.append(f"{subject} {'look' if plural else 'looks'} {join_phrases(looks)}.")
    if not sentences:
        return f"A close-up portrait of a {adjective}{noun}."
    return " ".join(sentences)


def caption_for_sample(sample_id: int, attributes: list[str], male: bool | None, seed: int = 0) -> str:
    """The caption of one sample: deterministic in (seed, sample_id)."""
    return template_caption(attributes, male, random.Random(seed * 1_000_003 + int(sample_id)))
