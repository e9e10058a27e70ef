"""Captions in the style of LAION alt-text: loose, partial, sometimes wrong, never a clean list.

Clean captions mention the person and some of their attributes the way stock sites, news
captions and personal photo titles do. The noisy kinds (other languages, spam and
boilerplate, empty) are what real LAION-Face rows carry and what cleaning should catch.
"""

from __future__ import annotations

import numpy as np

from fvlp_core.corpus.faces import FaceParams

FIRST_NAMES_F = (
    "Anna",
    "Maria",
    "Sofia",
    "Emma",
    "Olivia",
    "Chloe",
    "Grace",
    "Mia",
    "Laura",
    "Julia",
    "Nina",
    "Sarah",
    "Hannah",
    "Lucy",
    "Elena",
    "Aisha",
    "Mei",
    "Priya",
    "Zoe",
    "Claire",
    "Ruth",
    "Ines",
)
FIRST_NAMES_M = (
    "John",
    "David",
    "Michael",
    "James",
    "Daniel",
    "Lucas",
    "Omar",
    "Marco",
    "Peter",
    "Thomas",
    "Sam",
    "Alex",
    "Ryan",
    "Kenji",
    "Ravi",
    "Victor",
    "Paul",
    "Felix",
    "Hugo",
    "Ben",
    "Tariq",
    "Leo",
)
LAST_NAMES = (
    "Smith",
    "Garcia",
    "Miller",
    "Brown",
    "Kowalski",
    "Rossi",
    "Nguyen",
    "Okafor",
    "Schmidt",
    "Silva",
    "Tanaka",
    "Dubois",
    "Johnson",
    "Novak",
    "Haddad",
    "Larsen",
    "Patel",
    "Moreau",
    "Kim",
    "Walsh",
)
PLACES = (
    "the beach",
    "the park",
    "home",
    "work",
    "the wedding",
    "the office",
    "the party",
    "the lake",
    "graduation",
    "the studio",
    "the festival",
    "christmas dinner",
    "the conference",
)
EVENTS = ("premiere", "gala", "awards ceremony", "press conference", "charity dinner", "fashion week", "book launch")
CITIES = ("London", "Los Angeles", "Paris", "New York", "Berlin", "Toronto", "Sydney", "Madrid", "Milan")
SITE_SUFFIXES = (
    " - Stock Photo",
    " stock photo",
    " | Shutterstock",
    " Royalty Free Stock Images",
    " - stock image",
    " premium photo",
    " free photo",
    " - Download Free",
    " | iStock",
    " photo",
    "",
)


def identity_name(params: FaceParams, identity_id: int) -> str:
    """A stable fictional name for one identity (news and personal captions reuse it)."""
    firsts = FIRST_NAMES_M if params.male else FIRST_NAMES_F
    return f"{firsts[identity_id % len(firsts)]} {LAST_NAMES[(identity_id * 7 + 3) % len(LAST_NAMES)]}"


def _person_noun(p: FaceParams, rng: np.random.Generator) -> str:
    options: tuple[str, ...]
    if p.male:
        options = (
            ("man", "guy", "businessman", "male", "gentleman") if p.age >= 25 else ("young man", "boy", "teen", "guy")
        )
        if p.age > 60:
            options = ("old man", "senior man", "elderly man", "grandfather")
    else:
        options = (
            ("woman", "girl", "lady", "businesswoman", "female")
            if p.age >= 25
            else ("young woman", "girl", "teen girl")
        )
        if p.age > 60:
            options = ("old woman", "senior woman", "elderly lady", "grandmother")
    return options[int(rng.integers(len(options)))]


def _descriptors(p: FaceParams, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Adjectives before the noun and 'with ...' phrases after it, a random subset of the truth."""
    before, after = [], []
    if p.smiling:
        before.append(str(rng.choice(["smiling", "happy", "cheerful", "laughing"])))
    elif rng.random() < 0.3:
        before.append(str(rng.choice(["serious", "confident", "pensive", "calm"])))
    if p.hair_style != "bald" and p.hat == "none" and p.hair_colour in ("blond", "red") and rng.random() < 0.7:
        before.append({"blond": str(rng.choice(["blonde", "blond"])), "red": "redhead"}[p.hair_colour])
    if p.age < 30 and rng.random() < 0.5:
        before.append("young")
    elif p.age > 55 and rng.random() < 0.4:
        before.append(str(rng.choice(["mature", "senior", "older"])))
    if p.skin_tone > 0.6 and rng.random() < 0.3:
        before.append(str(rng.choice(["african american", "black"])))
    if p.glasses != "none":
        after.append(str(rng.choice(["glasses", "eyeglasses", "spectacles"])))
    if p.beard == "full":
        after.append("a beard")
    elif p.beard == "goatee":
        after.append("goatee")
    elif p.mustache:
        after.append("mustache")
    if p.hair_style in ("long", "medium") and rng.random() < 0.6:
        texture = "wavy " if p.hair_texture == "wavy" and rng.random() < 0.6 else ""
        colour = f"{p.hair_colour} " if p.hair_colour in ("black", "brown", "gray") and rng.random() < 0.5 else ""
        after.append(f"{p.hair_style} {texture}{colour}hair")
    if p.hat != "none":
        after.append("a " + ("beanie" if p.hat == "beanie" else "cap"))
    if p.earrings and rng.random() < 0.4:
        after.append("earrings")
    if p.necktie and rng.random() < 0.5:
        after.append("a tie")
    rng.shuffle(after)
    keep = int(rng.integers(0, len(after) + 1))  # captions mention only part of what is visible
    before, after = before[: int(rng.integers(0, len(before) + 1))], after[:keep]
    if rng.random() < 0.05:  # and now and then something that is not in the picture at all
        if p.glasses == "none":
            after.append("glasses")
        elif not p.smiling:
            before.insert(0, "smiling")
        else:
            before.append("redhead")
    return before, after


def clean_caption(p: FaceParams, identity_id: int, rng: np.random.Generator) -> str:
    """An English, person-related alt-text reflecting ``p`` loosely."""
    noun = _person_noun(p, rng)
    before, after = _descriptors(p, rng)
    with_part = (" with " + " and ".join(after)) if after else ""
    person = " ".join([*before, noun])
    name = identity_name(p, identity_id)
    year = int(rng.integers(2005, 2021))
    kind = int(rng.integers(8))
    if kind == 0:
        text = f"Portrait of {_article(person)} {person}{with_part}{_pick(rng, SITE_SUFFIXES)}"
    elif kind == 1:
        text = f"{name.split()[0]} at {_pick(rng, PLACES)} {year}"
    elif kind == 2:
        text = (
            f"{name} attends the {_pick(rng, EVENTS)} in {_pick(rng, CITIES)} on "
            f"{_pick(rng, ('March', 'May', 'June', 'October'))} {int(rng.integers(1, 29))}, {year}"
        )
    elif kind == 3:
        text = f"close up face of {person}{with_part} isolated on white background"
    elif kind == 4:
        text = f"{person.capitalize()}{with_part} looking at camera{_pick(rng, SITE_SUFFIXES)}"
    elif kind == 5:
        text = (
            f"Headshot of {name}, {_pick(rng, ('actor', 'CEO', 'author', 'designer', 'teacher', 'singer', 'doctor'))}"
        )
    elif kind == 6:
        adjective = _pick(rng, ("Beautiful", "Handsome", "Attractive", "Cute", ""))
        text = f"{adjective} {person}{with_part} - {_pick(rng, ('face', 'portrait', 'headshot', 'selfie'))}".strip()
    else:
        text = (
            f"{name} {_pick(rng, ('profile picture', 'selfie', 'linkedin photo', 'passport photo', 'avatar'))} {year}"
        )
    return _messy(text, rng)


def _messy(text: str, rng: np.random.Generator) -> str:
    """The scraping artefacts of alt-text: case, slugs, stray ids, HTML entities, emoji, cut-offs."""
    text = " ".join(text.split())
    if rng.random() < 0.25:
        text = text.lower()
    if rng.random() < 0.1:
        text = text.replace(" ", "-") + ".jpg"
    if rng.random() < 0.08:
        text += f" {int(rng.integers(1000, 99999))}"
    if rng.random() < 0.05:
        text = text.replace(" and ", " &amp; ").replace("'", "&#39;")
    if rng.random() < 0.03:
        text += " " + _pick(rng, ("😊", "❤️", "✨", "📸"))
    if rng.random() < 0.03 and len(text) > 30:
        text = text[: int(rng.integers(20, len(text)))].rstrip() + "..."
    return text


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


_FOREIGN = {
    "de": (
        "Porträt einer {f} Frau mit Brille",
        "Porträt eines {m} Mannes im Studio",
        "Junge Frau lächelt in die Kamera",
        "Mann mit Bart schaut in die Kamera",
        "Nahaufnahme Gesicht einer Frau vor weißem Hintergrund",
    ),
    "fr": (
        "Portrait d'une femme souriante aux cheveux longs",
        "Portrait d'un homme barbu en costume",
        "Jeune femme souriante regardant la caméra",
        "Visage d'un homme âgé avec des lunettes",
    ),
    "es": (
        "Retrato de mujer joven sonriendo a la cámara",
        "Hombre con barba mirando a la cámara",
        "Retrato de un señor mayor con gafas",
        "Chica rubia sonriente en el parque",
    ),
    "it": (
        "Ritratto di donna sorridente con i capelli ricci",
        "Uomo con la barba che guarda in camera",
        "Primo piano del viso di una ragazza",
    ),
    "pt": (
        "Retrato de mulher sorrindo para a câmera",
        "Homem de óculos olhando para a câmera",
        "Rosto de menina com cabelo castanho",
    ),
    "ru": (
        "Портрет молодой улыбающейся женщины",
        "Мужчина с бородой смотрит в камеру",
        "Лицо пожилого человека в очках",
    ),
    "zh": ("微笑的年轻女子肖像", "戴眼镜的男人看着镜头", "金发女孩的特写照片"),
    "ja": ("笑顔の女性のポートレート", "眼鏡をかけた男性の顔写真", "若い女性のクローズアップ"),
    "pl": ("Portret uśmiechniętej kobiety w okularach", "Mężczyzna z brodą patrzy w obiektyw"),
    "nl": ("Portret van een lachende vrouw met lang haar", "Man met baard kijkt in de camera"),
    "tr": ("Gözlüklü genç kadın portresi", "Sakallı adam kameraya bakıyor"),
}


def non_english_caption(p: FaceParams, rng: np.random.Generator) -> str:
    lang = _pick(rng, tuple(_FOREIGN))
    text = _pick(rng, _FOREIGN[lang])
    text = text.format(f="lächelnden" if p.smiling else "jungen", m="älteren" if p.age > 50 else "jungen")
    if rng.random() < 0.3:
        text += f" {int(rng.integers(2005, 2021))}"
    return text


_SPAM = (
    "Click here to buy now!!! 50% OFF free shipping www.best-deals-{n}.biz",
    "https://t.co/{s}",
    "http://www.{s}.com/images/{n}.jpg",
    "IMG_{n}.JPG",
    "DSC{n}",
    "Untitled-{k}",
    "image",
    "photo",
    "{{{{product_title}}}}",
    "This image may be subject to copyright.",
    "Cheap viagra online pharmacy no prescription {s}",
    "Free shipping on orders over $50 | Shop now at {s}.shop",
    "Loading...",
    "404 Not Found",
    "thumbnail {n}",
    "Sponsored: win an iPhone now {s}",
    "lorem ipsum dolor sit amet",
    "placeholder.png",
)


def spam_caption(rng: np.random.Generator) -> str:
    """Boilerplate, URLs, file names and advertising: no description of the image."""
    template = _pick(rng, _SPAM)
    slug = "".join(_pick(rng, "abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(int(rng.integers(6, 11))))
    return template.format(n=int(rng.integers(1000, 99999999)), s=slug, k=int(rng.integers(1, 20)))


def empty_caption(rng: np.random.Generator) -> str | None:
    """LAION stores missing alt-text as null, empty or whitespace."""
    return (None, "", " ", "\n")[int(rng.integers(4))]


_GROUP = (
    "Group of friends smiling{s}",
    "family portrait at {p} {y}",
    "Team photo of our office staff",
    "{n} people at the {e} in {c}",
    "Wedding guests {y}",
    "business team meeting{s}",
    "friends taking a selfie",
)
_GROUP_FOREIGN = (
    "Gruppe von Freunden lachen zusammen",
    "Photo de famille à la plage",
    "Amigos sonriendo juntos en la fiesta",
)
_NO_FACE = (
    "Beautiful mountain landscape at sunset{s}",
    "Red summer dress for women - free shipping",
    "Hair styling tips for long hair",
    "Men's leather wallet brown",
    "Women's face cream 50ml",
    "View of the lake from the hotel {y}",
    "Skin care routine products{s}",
    "Makeup brush set 12 pieces",
    "Beard oil for men natural",
    "Back view of a girl with long hair",
    "eyeglasses frame black unisex",
    "Sale banner template vector{s}",
)
_NO_FACE_FOREIGN = (
    "Wunderschöne Berglandschaft bei Sonnenuntergang",
    "Crème visage hydratante pour femme",
    "Cartel de rebajas de verano",
)


def group_caption(rng: np.random.Generator, non_english: bool = False) -> str:
    if non_english:
        return _pick(rng, _GROUP_FOREIGN)
    return _pick(rng, _GROUP).format(
        s=_pick(rng, SITE_SUFFIXES),
        p=_pick(rng, PLACES),
        y=int(rng.integers(2005, 2021)),
        n=int(rng.integers(2, 5)),
        e=_pick(rng, EVENTS),
        c=_pick(rng, CITIES),
    )


def no_face_caption(rng: np.random.Generator, non_english: bool = False) -> str:
    """Captions of face-keyword images without a face (products, scenery, hair from behind)."""
    if non_english:
        return _pick(rng, _NO_FACE_FOREIGN)
    return _pick(rng, _NO_FACE).format(s=_pick(rng, SITE_SUFFIXES), y=int(rng.integers(2005, 2021)))
