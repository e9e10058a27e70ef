"""SLFIR metrics on hand-computed cases, the tie rule, and batched ranking vs a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fvlp_core.metrics import (
    rank_captions_and_photos,
    rank_true_items,
    reranked_text_image_recall,
    sketch_retrieval_metrics,
    step_curves,
    text_image_recall,
)


def _naive_ranks(queries: np.ndarray, gallery: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """The reference procedure, one sketch at a time."""
    ranks = np.zeros(queries.shape[:2], dtype=np.int64)
    for e in range(queries.shape[0]):
        for t in range(queries.shape[1]):
            sims = gallery @ queries[e, t]
            ranks[e, t] = int((sims >= sims[true_index[e]]).sum())
    return ranks


def test_single_step_two_photos() -> None:
    found = sketch_retrieval_metrics(np.array([[1]]), gallery_size=2)
    assert found["m_at_A"] == pytest.approx(100.0)
    assert found["m_at_B"] == pytest.approx(100.0)
    # T = 1: w_1 = exp(1 - 1)/e = 1/e, divided by T = 1.
    assert found["wm_at_A"] == pytest.approx(100.0 / math.e)
    assert found["wm_at_B"] == pytest.approx(100.0 / math.e)
    np.testing.assert_allclose(found["acc_at_1"], [100.0])

    missed = sketch_retrieval_metrics(np.array([[2]]), gallery_size=2)
    assert missed["m_at_A"] == pytest.approx(0.0)
    assert missed["m_at_B"] == pytest.approx(50.0)
    np.testing.assert_allclose(missed["acc_at_1"], [0.0])
    np.testing.assert_allclose(missed["acc_at_5"], [100.0])


def test_two_episodes_two_steps_by_hand() -> None:
    ranks = np.array([[1, 3], [2, 1]])
    found = sketch_retrieval_metrics(ranks, gallery_size=3)
    # Episode 1: 1/r = (1, 1/3), percentile = (1, 0); episode 2: (1/2, 1), (1/2, 1).
    assert found["m_at_B"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)
    assert found["m_at_A"] == pytest.approx(62.5)
    w1, w2 = math.exp(-0.5), math.exp(-1.0)  # exp(1 - t/T)/e for T = 2
    assert found["wm_at_B"] == pytest.approx(100 * ((w1 + w2 / 3) / 2 + (w1 / 2 + w2) / 2) / 2)
    assert found["wm_at_A"] == pytest.approx(100 * ((w1) / 2 + (w1 / 2 + w2) / 2) / 2)
    np.testing.assert_allclose(found["acc_at_1"], [50.0, 50.0])
    np.testing.assert_allclose(found["acc_at_5"], [100.0, 100.0])
    assert set(found) == {"m_at_A", "m_at_B", "wm_at_A", "wm_at_B", "acc_at_1", "acc_at_5", "acc_at_10"}

    curves = step_curves(ranks, gallery_size=3)
    np.testing.assert_allclose(curves["rank_percentile"], [75.0, 50.0])
    np.testing.assert_allclose(curves["reciprocal_rank"], [75.0, 100 * (1 / 3 + 1) / 2])


def test_weighted_metrics_cannot_exceed_mean_weight() -> None:
    # A perfect run at T = 50 gives wm@* = 100 * mean(w_t), about 62.6 (weights not renormalised).
    perfect = sketch_retrieval_metrics(np.ones((3, 50), dtype=np.int64), gallery_size=450)
    expected = 100 * np.mean(np.exp(-np.arange(1, 51) / 50))
    assert perfect["wm_at_A"] == pytest.approx(expected)
    assert perfect["wm_at_A"] == pytest.approx(62.6, abs=0.1)


def test_ties_rank_the_true_photo_last() -> None:
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    queries = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]])
    ranks = rank_true_items(queries, gallery, np.array([0, 1, 2, 2]))
    np.testing.assert_array_equal(ranks, [[2], [2], [1], [3]])


@pytest.mark.parametrize("bad_rank, gallery_size", [(0, 5), (6, 5), (1, 1)])
def test_invalid_ranks_are_rejected(bad_rank: int, gallery_size: int) -> None:
    with pytest.raises(ValueError):
        sketch_retrieval_metrics(np.array([[1, bad_rank]]), gallery_size=gallery_size)


def test_float_ranks_are_rejected() -> None:
    with pytest.raises(ValueError, match="integers"):
        sketch_retrieval_metrics(np.array([[1.0, 2.0]]), gallery_size=3)


@pytest.mark.parametrize("quantised", [False, True])
def test_batched_ranking_equals_naive_loop(quantised: bool) -> None:
    rng = np.random.default_rng(7)
    if quantised:
        # Small integers: exact dot products, so many exact ties exercise the ">=" rule.
        gallery = rng.integers(-1, 2, size=(40, 6)).astype(np.float32)
        queries = rng.integers(-1, 2, size=(25, 9, 6)).astype(np.float32)
    else:
        gallery = rng.standard_normal((60, 32)).astype(np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        queries = rng.standard_normal((25, 9, 32)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=2, keepdims=True)
    true_index = rng.integers(0, gallery.shape[0], size=25)
    expected = _naive_ranks(queries, gallery, true_index)
    # Tiny blocks force several tiles both ways, including ragged last ones.
    for query_block, gallery_block in ((2048, 1024), (7, 9), (5, 16), (1, 1)):
        found = rank_true_items(queries, gallery, true_index, query_block=query_block, gallery_block=gallery_block)
        np.testing.assert_array_equal(found, expected)
    if quantised:
        assert (expected > 1).any()


def test_ranking_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="embedding size"):
        rank_true_items(np.zeros((2, 3, 4)), np.zeros((5, 8)), [0, 1])
    with pytest.raises(ValueError, match="0..4"):
        rank_true_items(np.zeros((2, 3, 4)), np.zeros((5, 4)), [0, 5])


def test_text_image_recall_by_hand() -> None:
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    found = text_image_recall(texts, images, [0, 1, 1])
    # Text 2 describes image 1 but matches image 0 better: rank 2.
    assert found["t2i_r_at_1"] == pytest.approx(200 / 3)
    assert found["t2i_r_at_5"] == pytest.approx(100.0)
    # Image 0 ties its own text with text 2 (rank 2, tie -> last); image 1's best text ranks 1.
    assert found["i2t_r_at_1"] == pytest.approx(50.0)
    assert found["i2t_r_at_10"] == pytest.approx(100.0)


def test_caption_photo_ranking_equals_the_dense_matrix() -> None:
    rng = np.random.default_rng(3)
    images = rng.standard_normal((30, 16))
    texts = rng.standard_normal((50, 16))
    captions_of = rng.integers(0, 25, size=50)  # photos 25..29 (and any unpicked) have no caption
    similarity = texts @ images.T
    ranking = rank_captions_and_photos(texts, images, captions_of, top_k=5)

    own = similarity[np.arange(50), captions_of]
    np.testing.assert_array_equal(ranking.text_to_image.ranks, (similarity >= own[:, None]).sum(axis=1))
    np.testing.assert_array_equal(ranking.text_to_image.top_rows, np.argsort(-similarity, axis=1)[:, :5])
    np.testing.assert_allclose(ranking.text_to_image.top_scores, -np.sort(-similarity, axis=1)[:, :5])
    with_caption = np.unique(captions_of)
    np.testing.assert_array_equal(ranking.image_rows, with_caption)
    best_own = [
        min((similarity[:, p] >= similarity[c, p]).sum() for c in np.flatnonzero(captions_of == p))
        for p in with_caption
    ]
    np.testing.assert_array_equal(ranking.image_to_text.ranks, best_own)
    np.testing.assert_array_equal(
        ranking.image_to_text.top_rows, np.argsort(-similarity.T[with_caption], axis=1)[:, :5]
    )


def test_itm_reranking_reorders_the_top_k_and_leaves_the_rest_by_hand() -> None:
    # Caption embeddings against identity photo embeddings: similarity = the caption rows.
    similarity = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5], [0.2, 0.3, 0.9]])  # 3 captions x 3 photos
    captions_of = np.array([0, 1, 1])  # photo 1 has two captions; photo 2 none
    ranking = rank_captions_and_photos(similarity, np.eye(3), captions_of, top_k=2)
    np.testing.assert_array_equal(ranking.text_to_image.top_rows, [[0, 1], [0, 1], [2, 1]])
    np.testing.assert_array_equal(ranking.image_rows, [0, 1])  # photo 2 has no caption: not a query
    np.testing.assert_array_equal(ranking.image_to_text.top_rows, [[0, 1], [0, 1]])
    t2i_logits = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    i2t_logits = np.array([[-5.0, 0.0], [0.0, 0.0]])
    found = reranked_text_image_recall(ranking, captions_of, t2i_logits, i2t_logits)
    # Captions 1 and 2 were second by similarity; ITM lifts their photo to first.
    assert found["t2i_r_at_1"] == pytest.approx(100.0)
    # Photo 0's caption drops to second behind a -5 ITM logit; photo 1's best own caption is second.
    assert (found["i2t_r_at_1"], found["i2t_r_at_5"]) == (0.0, 100.0)
    # With k = 1, a true photo outside the candidates keeps its similarity rank (2 for captions 1, 2).
    top1 = rank_captions_and_photos(similarity, np.eye(3), captions_of, top_k=1)
    found = reranked_text_image_recall(top1, captions_of, t2i_logits[:, :1], i2t_logits[:, :1])
    assert found["t2i_r_at_1"] == pytest.approx(100 / 3) and found["t2i_r_at_5"] == 100.0
