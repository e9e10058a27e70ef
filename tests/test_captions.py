"""Grammar-template captions and the attribute head that feeds them when ground truth is missing."""

from __future__ import annotations

import numpy as np
import pytest

from fvlp_core.attribute_head import (
    confident_attributes,
    load_attribute_head,
    predict_probabilities,
    save_attribute_head,
    train_attribute_head,
)
from fvlp_core.attributes import ATTRIBUTE_INDEX, ATTRIBUTES
from fvlp_core.captions import caption_for_sample, join_phrases, template_caption


def test_caption_reads_like_the_faceCaption_template():
    caption = caption_for_sample(7, ["Arched_Eyebrows", "Smiling", "No_Beard"], male=False)
    assert caption.endswith(".") and caption[0].isupper()
    for phrase in ("arched eyebrows", "a slight smile", "no beard"):
        assert phrase in caption
    assert any(caption.startswith(s) for s in ("She has", "This woman has", "The woman has", "A woman has"))


def test_caption_groups_hair_and_clothing_and_follows_gender():
    caption = caption_for_sample(
        3, ["Male", "Wavy_Hair", "Black_Hair", "Eyeglasses", "Wearing_Hat", "Young"], male=True
    )
    assert "wavy black hair" in caption
    assert "He is wearing" in caption and ("eyeglasses and a hat" in caption or "a hat and eyeglasses" in caption)
    assert "young man" in caption
    neutral = caption_for_sample(3, ["Bangs"], male=None)
    assert "person" in neutral and " she " not in f" {neutral.lower()} "


def test_caption_is_deterministic_per_sample_and_varies_across_samples():
    attrs = ["Smiling", "Bangs", "Pale_Skin", "Rosy_Cheeks", "Wearing_Earrings"]
    assert caption_for_sample(11, attrs, False, seed=1) == caption_for_sample(11, attrs, False, seed=1)
    assert len({caption_for_sample(i, attrs, False) for i in range(20)}) > 3


def test_caption_without_attributes_is_still_a_sentence():
    import random

    assert template_caption([], None, random.Random(0)) == "A close-up portrait of a person."


def test_join_phrases():
    assert join_phrases(["a"]) == "a" and join_phrases(["a", "b"]) == "a and b"
    assert join_phrases(["a", "b", "c"]) == "a, b and c"


def _synthetic_faces(n: int, rng: np.random.Generator):
    """Crops whose attributes are visible: dark hair band, glasses bar, bright mouth."""
    crops, labels = [], []
    for _ in range(n):
        crop = np.full((64, 64, 3), 170, np.uint8) + rng.integers(0, 20, (64, 64, 3), dtype=np.uint8)
        names = []
        if rng.random() < 0.5:
            crop[:14] = 20
            names.append("Black_Hair")
        if rng.random() < 0.5:
            crop[26:32, 8:56] = 0
            names.append("Eyeglasses")
        if rng.random() < 0.5:
            crop[46:54, 20:44] = (230, 40, 40)
            names.append("Smiling")
        crops.append(crop)
        labels.append(names)
    return crops, labels


def test_attribute_head_learns_visible_attributes_and_keeps_only_confident_ones(tmp_path):
    rng = np.random.default_rng(0)
    train_crops, train_labels = _synthetic_faces(160, rng)
    test_crops, test_labels = _synthetic_faces(40, rng)
    head = train_attribute_head(train_crops, train_labels, epochs=20, seed=0)
    probabilities = predict_probabilities(head, test_crops)
    assert probabilities.shape == (40, len(ATTRIBUTES))
    predicted, _ = confident_attributes(probabilities, 0.85)
    for name in ("Black_Hair", "Eyeglasses", "Smiling"):
        truth = np.array([name in labels for labels in test_labels])
        guess = np.array([name in labels for labels in predicted])
        assert (truth == guess).mean() >= 0.9, name
    # Attributes never present in training are never confidently predicted.
    assert not any("Bald" in labels for labels in predicted)

    restored = load_attribute_head(save_attribute_head(head, tmp_path / "head.pt"))
    np.testing.assert_allclose(predict_probabilities(restored, test_crops), probabilities, atol=1e-5)


def test_confident_attributes_threshold_and_gender():
    probabilities = np.zeros((3, len(ATTRIBUTES)), np.float32)
    probabilities[0, ATTRIBUTE_INDEX["Male"]] = 0.95
    probabilities[0, ATTRIBUTE_INDEX["Goatee"]] = 0.86
    probabilities[1, ATTRIBUTE_INDEX["Male"]] = 0.5
    probabilities[1, ATTRIBUTE_INDEX["Smiling"]] = 0.84
    probabilities[2, ATTRIBUTE_INDEX["Male"]] = 0.02
    names, male = confident_attributes(probabilities, 0.85)
    assert names == [["Goatee", "Male"], [], []]
    assert male == [True, None, False]


def test_attribute_head_refuses_to_train_on_nothing():
    with pytest.raises(ValueError, match="at least 2"):
        train_attribute_head([], [], epochs=1)


@pytest.mark.parametrize(
    "source, expected",
    [("template", ["T", "T", "T"]), ("original", ["L", "T", "T"]), ("both", None)],
)
def test_pretraining_caption_source_picks_template_original_or_both(source, expected):
    """A face with LAION text and a template gets the one the source asks for; a face without
    text keeps its caption under every source."""
    from fvlp_train.data import FacePairStream

    stream = FacePairStream.__new__(FacePairStream)
    stream.caption_source, stream.seed = source, 0
    picked = [stream._pick_caption("T", text, epoch=0, sample_id=i) for i, text in enumerate(["L", "", None])]
    if expected is not None:
        assert picked == expected
    else:
        drawn = {stream._pick_caption("T", "L", epoch=e, sample_id=i) for e in range(3) for i in range(20)}
        assert drawn == {"T", "L"} and picked[1:] == ["T", "T"]
        assert stream._pick_caption("T", "L", 1, 5) == stream._pick_caption("T", "L", 1, 5)  # resumable
