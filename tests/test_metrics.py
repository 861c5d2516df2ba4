import math

import numpy as np
import pytest

from eval.metrics import (
    coverage_at_k,
    invalid_rate,
    mrr_at_k,
    ndcg_at_k,
    ndcg_gains,
    paired_bootstrap,
    ranking_metrics,
    recall_at_k,
    target_ranks,
)


def test_target_ranks_one_based_zero_when_absent():
    ranked = [["a", "b", "c"], ["c", "b", "a"], ["x", "y", "z"]]
    assert target_ranks(ranked, ["a", "a", "a"]).tolist() == [1, 3, 0]


def test_target_ranks_needs_one_list_per_target():
    with pytest.raises(ValueError, match="2 ranked lists for 1 targets"):
        target_ranks([["a"], ["b"]], ["a"])


def test_hand_computed_values():
    ranks = np.array([1, 2, 5, 0, 10])
    # Recall@5: ranks 1, 2, 5 hit -> 3/5.
    assert recall_at_k(ranks, 5) == pytest.approx(0.6)
    # NDCG@5: (1 + 1/log2(3) + 1/log2(6)) / 5.
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    # NDCG@10 adds rank 10: 1/log2(11).
    expected10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 5
    assert ndcg_at_k(ranks, 10) == pytest.approx(expected10)
    # MRR@10: (1 + 1/2 + 1/5 + 1/10) / 5.
    assert mrr_at_k(ranks, 10) == pytest.approx((1 + 0.5 + 0.2 + 0.1) / 5)
    assert mrr_at_k(ranks, 1) == pytest.approx(0.2)


def test_coverage_and_invalid_rate():
    ranked = [["a", "b"], ["a", "c"]]
    assert coverage_at_k(ranked, 2, 6) == pytest.approx(3 / 6)
    assert coverage_at_k(ranked, 1, 6) == pytest.approx(1 / 6)
    # One unknown id and one repeat among 5 returned entries; the short list is not an error.
    assert invalid_rate([["a", "zz"], ["b", "b"], ["c"]], 2, {"a", "b", "c"}) == pytest.approx(2 / 5)
    assert invalid_rate([["a", "b"]], 2, {"a", "b"}) == 0.0


def test_ranking_metrics_keys_and_values():
    metrics = ranking_metrics([["a", "b"], ["b", "a"]], ["b", "c"], {"a", "b", "c", "d"}, ks=(1, 2))
    assert metrics["recall@1"] == 0.0
    assert metrics["recall@2"] == 0.5
    assert metrics["ndcg@2"] == pytest.approx(0.5 / math.log2(3))
    assert metrics["coverage@10"] == 0.5
    assert metrics["invalid_rate"] == 0.0


def test_paired_bootstrap_interval():
    same = np.array([1.0, 0.0, 0.5, 0.0])
    assert paired_bootstrap(same, same) == {"diff": 0.0, "low": 0.0, "high": 0.0, "level": 0.95}
    gains = ndcg_gains(np.array([1, 0, 3, 0, 2, 0]), 10)
    better = ndcg_gains(np.array([1, 1, 1, 0, 2, 0]), 10)
    result = paired_bootstrap(gains, better, resamples=500)
    assert result["diff"] == pytest.approx((better - gains).mean())
    assert 0.0 <= result["low"] <= result["diff"] <= result["high"]  # never worse for any user: CI above 0
    assert paired_bootstrap(gains, better, resamples=500) == result  # seeded
    assert paired_bootstrap(better, gains, resamples=500)["diff"] == pytest.approx(-result["diff"])


def test_paired_bootstrap_needs_the_same_users():
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(np.zeros(0), np.zeros(0))
