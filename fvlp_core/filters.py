"""Cleaning rules: named, versioned, each deciding from stored measurements.

Two phases keep re-cleaning cheap. *Measuring* (decode, detect, crop, language id,
MinHash) is expensive and depends only on the detector and measurement settings.
*Deciding* compares measurements with thresholds; it is vectorised and re-run
whenever a threshold changes. Each rule's version hashes its name, its thresholds
and the version of the measurements it reads, so a stored decision is known to be
current or stale per rule.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from fvlp_core.config import CleanConfig

CAPTION_MEASURER_VERSION = "captions-v2"
LANGID_MAX_CHARS = 1000  # language id of a 100 kB caption reads its start only


@dataclass(frozen=True)
class Rule:
    name: str
    group: str  # "image" or "caption": which measurements it reads
    thresholds: tuple[str, ...]  # CleanConfig fields
    description: str


RULES: tuple[Rule, ...] = (
    Rule("undecodable_image", "image", (), "missing, empty, corrupt or truncated image bytes"),
    Rule(
        "image_too_large",
        "image",
        ("max_image_pixels",),
        "header declares too many pixels (decompression bomb), or ingest refused the file as too large",
    ),
    Rule("image_too_small", "image", ("min_image_side",), "shorter side below min_image_side"),
    Rule("extreme_aspect_ratio", "image", ("max_aspect_ratio",), "longer/shorter side above max_aspect_ratio"),
    Rule("no_face", "image", ("detector_min_score",), "no face detected"),
    Rule("multiple_faces", "image", ("prominent_face_ratio", "min_face_score"), "more than one prominent face"),
    Rule("face_too_small", "image", ("min_face_fraction",), "main face small relative to the image"),
    Rule("low_detection_score", "image", ("min_face_score",), "main face's detector score below min_face_score"),
    Rule("too_blurry", "image", ("min_sharpness",), "variance of Laplacian of the face crop below min_sharpness"),
    Rule("duplicate_image", "image", ("max_duplicate_distance",), "same or nearly the same image as an earlier row"),
    Rule("caption_empty", "caption", (), "no caption text"),
    Rule("caption_not_utf8", "caption", (), "caption bytes were not valid UTF-8"),
    Rule("caption_too_short", "caption", ("min_caption_words",), "fewer than min_caption_words words"),
    Rule("caption_too_long", "caption", ("max_caption_chars",), "more than max_caption_chars characters"),
    Rule("not_english", "caption", ("min_english_ratio",), "English is not (nearly) the most likely language"),
    Rule("caption_spam", "caption", (), "URL, HTML, boilerplate or spam text"),
    Rule("no_person_content", "caption", (), "caption mentions no person"),
    Rule("duplicate_caption", "caption", ("near_duplicate_jaccard",), "same or nearly the same as an earlier caption"),
    Rule(
        "image_text_agreement",
        "agreement",
        ("min_agreement", "agreement_checkpoint"),
        "image-caption similarity below min_agreement (only with a trained checkpoint)",
    ),
)
RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)


def rule_versions(config: CleanConfig, measurement_versions: dict[str, str]) -> dict[str, str]:
    """rule -> short hash of (name, thresholds, version of the measurements it reads)."""
    versions = {}
    for rule in RULES:
        settings = {name: str(getattr(config, name)) for name in rule.thresholds}
        payload = json.dumps([rule.name, settings, measurement_versions[rule.group]], sort_keys=True)
        versions[rule.name] = hashlib.sha1(payload.encode()).hexdigest()[:12]
    return versions


def combined_version(versions: dict[str, str]) -> str:
    return hashlib.sha1(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- caption measurements

_URL = re.compile(r"https?://|www\.|\b[\w-]+\.(?:com|net|org|io|co|ru|de|uk)\b", re.I)
_HTML = re.compile(r"</?[a-z][a-z0-9]*[^<>]*>|&(?:[a-z]{2,8}|#\d{2,5});", re.I)
# Boilerplate that replaces a description. Site suffixes ("- Stock Photo", "| iStock") are
# common on good LAION captions and deliberately absent.
_BOILERPLATE = re.compile(
    r"\b(?:click here|buy now|shop now|free shipping|add to cart|subscribe now|lorem ipsum|"
    r"image not (?:found|available)|no image available|404 not found|loading\.\.\.|sponsored|viagra|"
    r"may be subject to copyright|all rights reserved|product_title|\d+% off|best price|win an?\b)"
    r"|\b(?:img|dsc|dcim)[_-]?\d{3,}\b|\{\{.*\}\}",
    re.I,
)
_HASHTAGS = re.compile(r"#\w+")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_FILE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp"})


def content_words(text: str) -> list[str]:
    """Words with letters, not counting numbers and file extensions ('IMG_0042.jpg' has one)."""
    return [w for w in _WORD.findall(text) if not w.isdigit() and w.lower() not in _FILE_EXTENSIONS]


PERSON_WORDS = frozenset(
    """man men woman women girl girls boy boys lady ladies gentleman guy guys person people persons
    face faces portrait portraits selfie headshot child children kid kids baby toddler teen teenager
    he she his her him hers himself herself mr mrs ms miss sir madam actor actress singer model models
    rapper dancer musician artist athlete player star celebrity president minister prince princess king queen
    bride groom husband wife mother father mom dad son daughter brother sister grandmother grandfather
    family couple friend friends businessman businesswoman student teacher doctor nurse soldier chef
    smile smiles smiling laughing beard bearded moustache mustache hair hairstyle blonde brunette redhead
    eyes lips makeup glasses wearing posing poses posed male female teen senior elderly ceo author designer
    profile avatar linkedin passport attends group team staff guests crowd audience colleagues""".split()
)
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ -][A-Z][a-z']+)+\b")  # "Tom Hanks", "Emma Stone"
# Alt-text that opens with a first name: "Thomas at the office 2017", "maria-with-her-dog.jpg".
_NAMED_SUBJECT = re.compile(r"^\s*[A-Za-z][a-z]+[\s_-]+(?:at|attends|attending|visits|with|and)[\s_-]", re.I)


def caption_text(value: Any) -> tuple[str, bool]:
    """The caption as text and whether it was valid UTF-8 (bytes are decoded leniently)."""
    if value is None:
        return "", True
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8"), True
        except UnicodeDecodeError:
            return bytes(value).decode("utf-8", errors="replace"), False
    text = str(value)
    # Mojibake that already went through a lenient decoder upstream.
    return text, "\ufffd" not in text


def spam_category(text: str) -> str | None:
    if _URL.search(text):
        return "url"
    if _HTML.search(text):
        return "html"
    if _BOILERPLATE.search(text):
        return "boilerplate"
    if len(_HASHTAGS.findall(text)) >= 3:
        return "hashtags"
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) >= 4 and max(Counter(words).values()) >= max(4, len(words) // 2):
        return "repetition"
    return None


def person_cues(text: str) -> int:
    words = {w.lower() for w in _WORD.findall(text)}
    return len(words & PERSON_WORDS) + len(_NAME.findall(text)) + bool(_NAMED_SUBJECT.match(text))


def normalise_caption(text: str) -> str:
    """Case, accents, punctuation and spacing folded: the key for exact duplicates."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(_WORD.findall(folded))


@lru_cache(maxsize=1)
def _language_detector():
    from lingua import Language, LanguageDetectorBuilder

    # The languages that dominate LAION captions; fewer candidates make short captions less ambiguous.
    languages = [
        Language.ENGLISH,
        Language.GERMAN,
        Language.FRENCH,
        Language.SPANISH,
        Language.ITALIAN,
        Language.PORTUGUESE,
        Language.DUTCH,
        Language.RUSSIAN,
        Language.POLISH,
        Language.TURKISH,
        Language.CHINESE,
        Language.JAPANESE,
        Language.KOREAN,
        Language.ARABIC,
        Language.INDONESIAN,
        Language.VIETNAMESE,
        Language.SWEDISH,
        Language.CZECH,
        Language.UKRAINIAN,
        Language.PERSIAN,
        Language.HINDI,
        Language.THAI,
        Language.ROMANIAN,
        Language.HUNGARIAN,
        Language.GREEK,
    ]
    return LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().build(), Language.ENGLISH


def english_ratios(texts: list[str]) -> np.ndarray:
    """English confidence divided by the top language's (1.0: English is the best guess)."""
    detector, english = _language_detector()
    ratios = np.full(len(texts), np.nan)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    if not todo:
        return ratios
    results = detector.compute_language_confidence_values_in_parallel([texts[i][:LANGID_MAX_CHARS] for i in todo])
    for i, values in zip(todo, results):
        top = values[0].value if values else 0.0
        english_value = next((v.value for v in values if v.language == english), 0.0)
        ratios[i] = english_value / top if top > 0 else 0.0
    return ratios


# MinHash over word 3-shingles: 64 multiply-shift hashes, banded 16 x 4 for candidate pairs.
MINHASH_PERMUTATIONS = 64
MINHASH_BANDS = 16
_RNG = np.random.default_rng(20240611)
_HASH_A = _RNG.integers(1, 2**32, MINHASH_PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
_HASH_B = _RNG.integers(0, 2**32, MINHASH_PERMUTATIONS, dtype=np.uint64)
_MASK32 = np.uint64(0xFFFFFFFF)
BAND_KEY = np.dtype([("high", "<u8"), ("low", "<u8")])  # one band: 4 x 32-bit MinHash values


def minhash(normalised: str) -> list[int]:
    words = normalised.split()
    if not words:
        return []
    shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
    values = np.fromiter((zlib.crc32(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
    hashed = (values[:, None] * _HASH_A[None, :] + _HASH_B[None, :]) & _MASK32
    return hashed.min(axis=0).astype(np.uint32).tolist()


def measure_captions(values: list[Any]) -> dict[str, list]:
    """Caption measurements for a batch of raw TEXT values (column-wise)."""
    pairs = [caption_text(v) for v in values]
    texts = [text for text, _ in pairs]
    valid = [ok for _, ok in pairs]
    ratios = english_ratios(texts)
    normalised = [normalise_caption(t[: LANGID_MAX_CHARS * 20]) for t in texts]
    return {
        "caption_chars": [len(t.strip()) for t in texts],
        "caption_words": [len(content_words(t[: LANGID_MAX_CHARS * 20])) for t in texts],
        "caption_utf8": list(valid),
        "english_ratio": [None if np.isnan(r) else float(r) for r in ratios],
        "spam": [spam_category(t[: LANGID_MAX_CHARS * 20]) for t in texts],
        "person_cues": [person_cues(t[: LANGID_MAX_CHARS * 20]) for t in texts],
        "caption_minhash": [minhash(n) for n in normalised],
    }


def near_duplicates(signatures: list[list[int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row (in corpus order), the earliest row it nearly duplicates and their estimated Jaccard.

    Rows sharing a MinHash band are candidates; each is compared with the earliest row of
    that band bucket, which for clusters of copies is the original. Rows with no caption
    get index -1 and similarity 0.
    """
    n = len(signatures)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n, dtype=np.float64)
    if isinstance(signatures, np.ndarray):  # (n, 64), every row captioned: no per-row Python objects
        rows = np.arange(n)
        matrix = np.ascontiguousarray(signatures, dtype=np.uint32)
    else:
        rows = np.flatnonzero([len(s) == MINHASH_PERMUTATIONS for s in signatures])
        matrix = np.array([signatures[i] for i in rows], dtype=np.uint32).reshape(len(rows), MINHASH_PERMUTATIONS)
    if len(rows) < 2:
        return duplicate_of, similarity
    width = MINHASH_PERMUTATIONS // MINHASH_BANDS
    for band in range(MINHASH_BANDS):
        # A band's 4 x 32 bits as one sortable 128-bit key; unique's first occurrence is the
        # earliest row of each bucket (a Python-level groupby here was 63% of the decide step).
        keys = np.ascontiguousarray(matrix[:, band * width : (band + 1) * width]).view(BAND_KEY).ravel()
        _, first_of_key, key_of_row = np.unique(keys, return_index=True, return_inverse=True)
        first = first_of_key[key_of_row.ravel()]
        later = first != np.arange(len(rows))
        if not later.any():
            continue
        estimate = (matrix[later] == matrix[first[later]]).mean(axis=1)
        targets = rows[later]
        better = estimate > similarity[targets]
        similarity[targets[better]] = estimate[better]
        duplicate_of[targets[better]] = rows[first[later]][better]
    return duplicate_of, similarity


# Multi-index hashing: the 64 hash bits as 4 chunks of 16. Two hashes within distance d
# differ in at most d // 4 bits of at least one chunk (pigeonhole), so looking each chunk up
# in the buckets of every value within d // 4 flipped bits finds every pair within d.
HASH_CHUNKS = 4
CHUNK_BITS = 16
MAX_INDEXED_DISTANCE = 11  # d // 4 <= 2: at most 137 bucket probes per chunk
_CHUNK_VALUES = 1 << CHUNK_BITS


@lru_cache(maxsize=3)
def _flip_masks(flips: int) -> np.ndarray:
    """Every chunk value with at most ``flips`` bits set (XOR with it = a probe)."""
    return np.array([m for m in range(_CHUNK_VALUES) if m.bit_count() <= flips], dtype=np.int64)


def image_duplicates(hashes: list[int | None], max_distance: int, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the earliest earlier row with the nearest perceptual hash within
    ``max_distance`` bits, and their Hamming distance.

    Rows without a hash, the first row, and rows with no earlier hash that close get index -1
    and distance 64. Candidates come from multi-index hashing, ``block`` rows at a time, so
    time grows with the rows times their bucket neighbours (about n / 65,536 per probe) and
    memory with the block, not with all pairs.
    """
    if not -1 <= max_distance <= MAX_INDEXED_DISTANCE:
        raise ValueError(f"max_distance must lie in -1..{MAX_INDEXED_DISTANCE}, got {max_distance}")
    n = len(hashes)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, 64, dtype=np.int64)
    rows = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(rows) < 2 or max_distance < 0:
        return duplicate_of, distance
    values = np.array([hashes[i] for i in rows], dtype=np.int64).view(np.uint64)
    masks = _flip_masks(max_distance // HASH_CHUNKS)
    chunks = [
        ((values >> np.uint64(CHUNK_BITS * c)) & np.uint64(_CHUNK_VALUES - 1)).astype(np.int64)
        for c in range(HASH_CHUNKS)
    ]
    buckets = []  # per chunk: rows sorted by chunk value, and where each value's run starts
    for key in chunks:
        order = np.argsort(key, kind="stable")
        counts = np.bincount(key, minlength=_CHUNK_VALUES)
        buckets.append((order, np.cumsum(counts) - counts, counts))

    for start in range(1, len(rows), block):
        queries = np.arange(start, min(start + block, len(rows)))
        found_query, found_row, found_distance = [], [], []
        for key, (order, first, counts) in zip(chunks, buckets):
            probes = (key[queries][:, None] ^ masks[None, :]).ravel()
            sizes = counts[probes]
            query = np.repeat(np.repeat(queries, len(masks)), sizes)
            within_bucket = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            row = order[np.repeat(first[probes], sizes) + within_bucket]
            earlier = row < query
            query, row = query[earlier], row[earlier]
            bits = np.bitwise_count(values[query] ^ values[row]).astype(np.int64)
            close = bits <= max_distance
            found_query.append(query[close])
            found_row.append(row[close])
            found_distance.append(bits[close])
        query, row, bits = (np.concatenate(parts) for parts in (found_query, found_row, found_distance))
        if not len(query):
            continue
        # Nearest first, then earliest: the first pair of each query after this sort is its answer.
        pick = np.lexsort((row, bits, query))
        query, row, bits = query[pick], row[pick], bits[pick]
        head = np.r_[True, query[1:] != query[:-1]]
        duplicate_of[rows[query[head]]] = rows[row[head]]
        distance[rows[query[head]]] = bits[head]
    return duplicate_of, distance


# ---------------------------------------------------------------- decisions


def _largest_other_share(scores: list, areas: list, min_score: float) -> float:
    """Area of the second-largest confident face over the largest face's (0 if only one)."""
    confident = sorted((a for s, a in zip(scores, areas) if s >= min_score), reverse=True)
    if len(confident) < 2 or confident[0] <= 0:
        return 0.0
    return float(confident[1] / confident[0])


def evaluate_rules(m: pd.DataFrame, config: CleanConfig, agreement_applied: bool) -> dict[str, tuple[np.ndarray, list]]:
    """rule -> (failed mask, measured value per row) over a measurements frame.

    Rules downstream of a failure that makes them meaningless (no face -> no blur
    value) are not failed; only the root cause is reported.
    """
    n = len(m)
    err = m["image_error_rule"].fillna("")
    decoded = m["image_width"].notna().to_numpy()
    width = m["image_width"].fillna(0).to_numpy(dtype=float)
    height = m["image_height"].fillna(0).to_numpy(dtype=float)
    short, long_ = np.minimum(width, height), np.maximum(width, height)
    has_face = m["face_score"].notna().to_numpy()
    face_score = m["face_score"].fillna(0).to_numpy(dtype=float)
    fraction = m["face_fraction"].fillna(0).to_numpy(dtype=float)
    sharpness = m["sharpness"].fillna(0).to_numpy(dtype=float)
    other_share = (
        np.array([_largest_other_share(s, a, config.min_face_score) for s, a in zip(m["face_scores"], m["face_areas"])])
        if n
        else np.zeros(0)
    )
    aspect = np.divide(long_, short, out=np.zeros(n), where=short > 0)
    size_ok = decoded & (short >= config.min_image_side)

    chars = m["caption_chars"].to_numpy(dtype=float)
    words = m["caption_words"].to_numpy(dtype=float)
    text = chars > 0
    english = m["english_ratio"].astype(float).fillna(0).to_numpy()
    agreement = m["agreement"].astype(float).to_numpy() if "agreement" in m else np.full(n, np.nan)
    similarity = m["duplicate_similarity"].to_numpy(dtype=float)
    image_distance = m["duplicate_distance"].to_numpy(dtype=float)

    def values(array) -> list:
        return [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in np.asarray(array).tolist()]

    def rounded(array) -> list:
        return values(np.round(np.asarray(array, dtype=float), 4))

    table: dict[str, tuple[np.ndarray, list]] = {
        "undecodable_image": (
            (err == "undecodable_image").to_numpy(),
            values(m["image_error"].where(err == "undecodable_image")),
        ),
        "image_too_large": (
            (err == "image_too_large").to_numpy(),
            values(m["image_error"].where(err == "image_too_large")),
        ),
        "image_too_small": (decoded & (short < config.min_image_side), values(np.where(decoded, short, np.nan))),
        "extreme_aspect_ratio": (
            decoded & (aspect > config.max_aspect_ratio),
            rounded(np.where(decoded, aspect, np.nan)),
        ),
        "no_face": (
            size_ok & ~has_face,
            values(np.where(decoded, m["face_scores"].map(len).to_numpy(dtype=float), np.nan)),
        ),
        "multiple_faces": (
            has_face & (other_share >= config.prominent_face_ratio),
            rounded(np.where(has_face, other_share, np.nan)),
        ),
        "face_too_small": (
            has_face & (fraction < config.min_face_fraction),
            rounded(np.where(has_face, fraction, np.nan)),
        ),
        "low_detection_score": (
            has_face & (face_score < config.min_face_score),
            rounded(np.where(has_face, face_score, np.nan)),
        ),
        "too_blurry": (has_face & (sharpness < config.min_sharpness), rounded(np.where(has_face, sharpness, np.nan))),
        "caption_empty": (~text, values(chars)),
        "caption_not_utf8": (~m["caption_utf8"].to_numpy(dtype=bool), values(~m["caption_utf8"].to_numpy(dtype=bool))),
        "caption_too_short": (text & (words < config.min_caption_words), values(words)),
        "caption_too_long": (chars > config.max_caption_chars, values(chars)),
        "not_english": (text & (english < config.min_english_ratio), rounded(np.where(text, english, np.nan))),
        "caption_spam": (m["spam"].notna().to_numpy(), values(m["spam"])),
        "no_person_content": (text & (m["person_cues"].to_numpy() == 0), values(m["person_cues"])),
        "duplicate_caption": (text & (similarity >= config.near_duplicate_jaccard), rounded(similarity)),
        "duplicate_image": (
            image_distance <= config.max_duplicate_distance,
            values(np.where(image_distance < 64, image_distance, np.nan)),
        ),
        "image_text_agreement": (
            (agreement < config.min_agreement) & ~np.isnan(agreement) if agreement_applied else np.zeros(n, dtype=bool),
            rounded(agreement),
        ),
    }
    return table


def decide(m: pd.DataFrame, config: CleanConfig, agreement_applied: bool) -> pd.DataFrame:
    """Per row: ``kept``, ``reasons`` (failed rule names, in RULES order), ``measurements`` JSON."""
    table = evaluate_rules(m, config, agreement_applied)
    failed = np.stack([table[name][0] for name in RULE_NAMES], axis=1) if len(m) else np.zeros((0, len(RULES)), bool)
    reasons = [[RULE_NAMES[j] for j in np.flatnonzero(row)] for row in failed]
    measured = [
        json.dumps({name: table[name][1][i] for name in RULE_NAMES}, default=_json_default) for i in range(len(m))
    ]
    return pd.DataFrame({"kept": ~failed.any(axis=1), "reasons": reasons, "measurements": measured}, index=m.index)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- scoring against ground truth

# Ground-truth noise label (fvlp_core.corpus.laion.NOISE_LABELS) -> the rule meant to catch it,
# and other rules whose rejection of such a row is also right (a spam caption "photo" is
# too short; a face too tiny to detect is "no face"; a copy's caption may be copied too).
NOISE_RULES: dict[str, tuple[str, frozenset[str]]] = {
    "no_face": ("no_face", frozenset({"no_person_content"})),
    "multi_face": ("multiple_faces", frozenset()),
    "tiny_face": ("face_too_small", frozenset({"no_face", "low_detection_score", "too_blurry"})),
    "low_resolution": (
        "image_too_small",
        frozenset({"no_face", "low_detection_score", "too_blurry", "face_too_small"}),
    ),
    "corrupt_image": ("undecodable_image", frozenset()),
    "truncated_image": ("undecodable_image", frozenset()),
    "non_english": ("not_english", frozenset({"no_person_content"})),
    "spam_caption": ("caption_spam", frozenset({"caption_too_short", "no_person_content", "not_english"})),
    "empty_caption": ("caption_empty", frozenset()),
    "duplicate": ("duplicate_image", frozenset({"duplicate_caption"})),
    "near_duplicate": ("duplicate_image", frozenset({"duplicate_caption"})),
}


def score_against_noise(decisions: pd.DataFrame, truth: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Per rule (and ``all_rules``): kept/rejected counts, precision and recall of rejection.

    Precision: share of R's rejections whose sample carries a noise label R is meant to
    catch or also rightly catches (:data:`NOISE_RULES`). Recall: share of samples with a
    label whose primary rule is R that R rejected. None without ground truth or with
    nothing to measure. ``all_rules`` scores the final decision against ``expected_keep``.
    """
    reasons = decisions["reasons"].map(set)
    n = len(decisions)
    expected_reject = None
    if truth is not None:
        labels = dict(zip(truth["SAMPLE_ID"].astype(int), truth["noise"]))
        keep = dict(zip(truth["SAMPLE_ID"].astype(int), truth["expected_keep"]))
        ids = decisions["SAMPLE_ID"].astype(int)
        primary = ids.map(lambda s: {NOISE_RULES[n][0] for n in labels.get(s, ()) if n in NOISE_RULES})
        accepted = ids.map(
            lambda s: set().union(
                *({NOISE_RULES[n][0], *NOISE_RULES[n][1]} for n in labels.get(s, ()) if n in NOISE_RULES)
            )
        )
        expected_reject = ~ids.map(lambda s: bool(keep.get(s, True))).to_numpy(dtype=bool)

    def ratio(a: int, b: int) -> float | None:
        return None if b == 0 else a / b

    stats = []
    for rule in RULE_NAMES:
        rejected = reasons.map(lambda r, rule=rule: rule in r).to_numpy(dtype=bool)
        row = {
            "rule": rule,
            "kept": int(n - rejected.sum()),
            "rejected": int(rejected.sum()),
            "precision": None,
            "recall": None,
        }
        if truth is not None:
            right = accepted.map(lambda r, rule=rule: rule in r).to_numpy(dtype=bool)
            meant = primary.map(lambda r, rule=rule: rule in r).to_numpy(dtype=bool)
            row["precision"] = ratio(int((rejected & right).sum()), int(rejected.sum()))
            row["recall"] = ratio(int((rejected & meant).sum()), int(meant.sum()))
        stats.append(row)
    rejected = ~decisions["kept"].to_numpy(dtype=bool)
    overall = {
        "rule": "all_rules",
        "kept": int(n - rejected.sum()),
        "rejected": int(rejected.sum()),
        "precision": None,
        "recall": None,
    }
    if expected_reject is not None:
        hits = int((rejected & expected_reject).sum())
        overall["precision"], overall["recall"] = (
            ratio(hits, int(rejected.sum())),
            ratio(hits, int(expected_reject.sum())),
        )
    stats.append(overall)
    return stats
