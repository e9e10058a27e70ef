"""Caption measurements, duplicate finding, rule decisions, rule versions and scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fvlp_core.config import CleanConfig
from fvlp_core.filters import (
    RULE_NAMES,
    caption_text,
    decide,
    image_duplicates,
    measure_captions,
    minhash,
    near_duplicates,
    normalise_caption,
    person_cues,
    rule_versions,
    score_against_noise,
    spam_category,
)

VERSIONS = {"image": "img1", "caption": "cap1", "agreement": "none"}


def test_language_id_separates_english_from_other_languages():
    measured = measure_captions(
        [
            "A young woman smiling at the camera",
            "Porträt einer jungen Frau mit Brille",
            "Retrato de un hombre con barba",
            "微笑的年轻女子肖像",
            "Actress Emma Stone attends the Oscars",
            None,
        ]
    )
    ratios = measured["english_ratio"]
    assert ratios[0] > 0.9 and ratios[4] > 0.9
    assert ratios[1] < 0.5 and ratios[2] < 0.5 and ratios[3] < 0.1
    assert ratios[5] is None


@pytest.mark.parametrize(
    "text,category",
    [
        ("Click here to buy now!!! 50% OFF free shipping", "boilerplate"),
        ("http://www.example.com/images/123.jpg", "url"),
        ("<div class='x'>woman</div>", "html"),
        ("IMG_20190412.JPG", "boilerplate"),
        ("{{product_title}}", "boilerplate"),
        ("#love #face #selfie #model", "hashtags"),
        ("sale sale sale sale sale", "repetition"),
        ("Portrait of a woman - Stock Photo", None),  # site suffixes are normal on LAION
        ("Portrait-of-a-smiling-woman-with-glasses.jpg", None),
    ],
)
def test_spam_categories(text, category):
    assert spam_category(text) == category


def test_person_cues_count_people_words_and_names():
    assert person_cues("Tom Hanks at the premiere") >= 1
    assert person_cues("close up face of a bearded man") >= 2
    assert person_cues("Thomas at the office 2017") >= 1
    assert person_cues("Team photo of our office staff") >= 1
    assert person_cues("sunset over the lake with mountains") == 0


def test_whitespace_only_captions_are_empty():
    measured = measure_captions([" ", "\n", ""])
    assert measured["caption_chars"] == [0, 0, 0]


def test_caption_text_flags_invalid_utf8_and_mojibake():
    assert caption_text(b"caf\xe9") == ("caf\ufffd", False)
    assert caption_text("Caf\ufffd au lait")[1] is False
    assert caption_text("Café au lait") == ("Café au lait", True)
    assert caption_text(None) == ("", True)


def test_huge_caption_is_measured_cheaply():
    measured = measure_captions(["face " * 19_999 + "smile"])
    assert measured["caption_chars"][0] == 100_000 and measured["english_ratio"][0] is not None


def test_near_duplicate_captions_point_at_the_earliest_copy():
    captions = [
        "Portrait of a young woman with long wavy hair at the beach",
        "Elderly man reading a newspaper in the park",
        "portrait of a young woman with long wavy hair at the beach!",  # exact after normalising
        "Portrait of a young woman with long wavy hair at the beach in 2014",  # near
        "Businessman giving a talk at a conference",
    ]
    signatures = [minhash(normalise_caption(c)) for c in captions]
    duplicate_of, similarity = near_duplicates(signatures)
    assert duplicate_of.tolist()[:2] == [-1, -1] and duplicate_of[4] == -1
    assert duplicate_of[2] == 0 and similarity[2] == 1.0
    assert duplicate_of[3] == 0 and 0.6 < similarity[3] < 1.0


def test_image_duplicates_find_nearest_earlier_hash():
    base = 0x0F0F_F0F0_1234_5678
    hashes = [base, 0x7777_0000_FFFF_1111, None, base ^ 0b101, base]
    duplicate_of, distance = image_duplicates(hashes, max_distance=6, block=2)
    assert duplicate_of.tolist() == [-1, -1, -1, 0, 0]  # row 1 is far from row 0: no duplicate
    assert distance.tolist() == [64, 64, 64, 2, 0]
    assert image_duplicates(hashes, max_distance=-1)[0].tolist() == [-1] * 5
    with pytest.raises(ValueError, match="-1..11"):
        image_duplicates(hashes, max_distance=12)


@pytest.mark.parametrize("max_distance", [0, 3, 6, 11])
def test_image_duplicates_equal_an_exhaustive_scan(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    unsigned: list[int] = []
    for i in range(400):
        if i and rng.random() < 0.4:  # a near copy of an earlier hash, 0-14 bits flipped
            flips = rng.choice(64, int(rng.integers(0, 15)), replace=False)
            unsigned.append(unsigned[int(rng.integers(0, i))] ^ sum(1 << int(b) for b in flips))
        else:
            unsigned.append(int(rng.integers(0, 2**32)) << 32 | int(rng.integers(0, 2**32)))
    # Stored as Arrow's signed int64, some rows without a hash.
    hashes = [None if rng.random() < 0.05 else u - (1 << 64) * (u >> 63) for u in unsigned]
    expected_of, expected_distance = [-1] * 400, [64] * 400
    for i, h in enumerate(hashes):
        near = [((h ^ e) & (2**64 - 1)).bit_count() for e in hashes[:i] if h is not None and e is not None]
        earlier = [j for j, e in enumerate(hashes[:i]) if h is not None and e is not None]
        if near and min(near) <= max_distance:
            expected_distance[i] = min(near)
            expected_of[i] = earlier[near.index(min(near))]  # the earliest of the nearest
    duplicate_of, distance = image_duplicates(hashes, max_distance, block=37)
    assert duplicate_of.tolist() == expected_of
    assert distance.tolist() == expected_distance
    assert sum(d <= max_distance for d in expected_distance) > 3  # duplicates at every radius


def _measurements(**overrides) -> pd.DataFrame:
    row = {
        "SAMPLE_ID": 1,
        "image_error_rule": None,
        "image_error": None,
        "image_width": 256,
        "image_height": 256,
        "face_scores": [0.99],
        "face_areas": [10000.0],
        "face_score": 0.99,
        "face_fraction": 0.4,
        "sharpness": 120.0,
        "caption_chars": 40,
        "caption_words": 7,
        "caption_utf8": True,
        "english_ratio": 1.0,
        "spam": None,
        "person_cues": 2,
        "duplicate_similarity": 0.0,
        "duplicate_distance": 64,
        "agreement": None,
    }
    row.update(overrides)
    return pd.DataFrame([row])


@pytest.mark.parametrize(
    "overrides,rule",
    [
        (
            {
                "image_error_rule": "undecodable_image",
                "image_error": "truncated",
                "image_width": None,
                "image_height": None,
                "face_scores": [],
                "face_areas": [],
                "face_score": None,
                "face_fraction": None,
                "sharpness": None,
            },
            "undecodable_image",
        ),
        ({"image_width": 60, "image_height": 60}, "image_too_small"),
        ({"image_width": 1000, "image_height": 200}, "extreme_aspect_ratio"),
        (
            {"face_scores": [], "face_areas": [], "face_score": None, "face_fraction": None, "sharpness": None},
            "no_face",
        ),
        ({"face_scores": [0.99, 0.98], "face_areas": [10000.0, 6000.0]}, "multiple_faces"),
        ({"face_fraction": 0.05}, "face_too_small"),
        ({"face_score": 0.7, "face_scores": [0.7]}, "low_detection_score"),
        ({"sharpness": 3.0}, "too_blurry"),
        ({"duplicate_distance": 2}, "duplicate_image"),
        ({"caption_chars": 0, "caption_words": 0, "english_ratio": None, "person_cues": 0}, "caption_empty"),
        ({"caption_utf8": False}, "caption_not_utf8"),
        ({"caption_words": 1}, "caption_too_short"),
        ({"caption_chars": 5000}, "caption_too_long"),
        ({"english_ratio": 0.05}, "not_english"),
        ({"spam": "url"}, "caption_spam"),
        ({"person_cues": 0}, "no_person_content"),
        ({"duplicate_similarity": 1.0}, "duplicate_caption"),
    ],
)
def test_each_rule_rejects_with_its_measured_value(overrides, rule):
    decided = decide(_measurements(**overrides), CleanConfig(), agreement_applied=False)
    assert not decided["kept"].iloc[0]
    assert decided["reasons"].iloc[0] == [rule]
    measured = json.loads(decided["measurements"].iloc[0])
    assert set(measured) == set(RULE_NAMES) and measured[rule] is not None


def test_a_clean_row_is_kept_and_small_second_faces_are_tolerated():
    decided = decide(_measurements(face_scores=[0.99, 0.95], face_areas=[10000.0, 900.0]), CleanConfig(), False)
    assert decided["kept"].iloc[0] and decided["reasons"].iloc[0] == []


def test_agreement_is_recorded_but_only_applied_with_a_trained_model():
    low = _measurements(agreement=0.05)
    assert decide(low, CleanConfig(), agreement_applied=False)["kept"].iloc[0]
    applied = decide(low, CleanConfig(), agreement_applied=True)
    assert applied["reasons"].iloc[0] == ["image_text_agreement"]
    assert json.loads(applied["measurements"].iloc[0])["image_text_agreement"] == 0.05


def test_changing_one_threshold_changes_only_that_rules_version():
    before = rule_versions(CleanConfig(), VERSIONS)
    after = rule_versions(CleanConfig(min_sharpness=99.0), VERSIONS)
    assert {r for r in RULE_NAMES if before[r] != after[r]} == {"too_blurry"}
    shared = rule_versions(CleanConfig(min_face_score=0.5), VERSIONS)
    assert {r for r in RULE_NAMES if before[r] != shared[r]} == {"low_detection_score", "multiple_faces"}
    new_detector = rule_versions(CleanConfig(), {**VERSIONS, "image": "img2"})
    changed = {r for r in RULE_NAMES if before[r] != new_detector[r]}
    assert "no_face" in changed and "not_english" not in changed and "caption_spam" not in changed


def test_scoring_against_ground_truth_noise():
    decisions = pd.DataFrame(
        {
            "SAMPLE_ID": [1, 2, 3, 4, 5],
            "kept": [True, False, False, False, True],
            "reasons": [[], ["no_face"], ["no_face"], ["caption_too_short"], []],
        }
    )
    truth = pd.DataFrame(
        {
            "SAMPLE_ID": [1, 2, 3, 4, 5],
            "noise": [[], ["no_face"], [], ["spam_caption"], ["no_face"]],
            "expected_keep": [True, False, True, False, False],
        }
    )
    stats = {s["rule"]: s for s in score_against_noise(decisions, truth)}
    assert stats["no_face"]["rejected"] == 2 and stats["no_face"]["kept"] == 3
    assert stats["no_face"]["precision"] == 0.5 and stats["no_face"]["recall"] == 0.5
    assert stats["caption_too_short"]["precision"] == 1.0  # a too-short spam caption is rightly rejected
    assert stats["caption_too_short"]["recall"] is None  # no label has it as its primary rule
    assert stats["caption_spam"]["recall"] == 0.0
    overall = stats["all_rules"]
    assert overall["rejected"] == 3 and overall["precision"] == pytest.approx(2 / 3)
    assert overall["recall"] == pytest.approx(2 / 3)
    without_truth = score_against_noise(decisions, None)
    assert all(s["precision"] is None and s["recall"] is None for s in without_truth)
