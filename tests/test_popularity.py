import pytest

from eval.evaluate import evaluate_popularity
from eval.popularity import MostPopular
from llmrec.data.split import leave_one_out


def test_ranking_uses_training_counts_only_and_breaks_ties_by_catalog_order():
    # Training parts: u1 -> x x y, u2 -> y z. Targets (w, v) never count.
    split = leave_one_out({"u1": ["x", "x", "y", "w", "w"], "u2": ["y", "z", "v", "w"]})
    model = MostPopular(split, ["v", "w", "z", "y", "x"])
    # counts: x 2, y 2, z 1, v 0, w 0; ties x/y and v/w keep catalog order (y before x, v before w).
    assert model.ranking == ["y", "x", "z", "v", "w"]
    assert model.recommend(seen=["y"], k=2) == ["x", "z"]
    assert model.recommend(seen=["y"], k=2, exclude_seen=False) == ["y", "x"]
    with pytest.raises(ValueError, match="larger than the catalog"):
        model.recommend(k=6)


def test_evaluate_popularity_on_tiny_dataset(tiny_dataset):
    # Training parts: u1 a b c, u2 b, u3 c a, u4 a. Counts a 3, b 2, c 2 -> ranking a b c d e f.
    # Test: u1 target e (seen a..d) -> top: e f; u2 a (seen b c) -> a d e; u3 d (seen c a b) -> d e f; u4 e (seen a b).
    metrics = evaluate_popularity(tiny_dataset, "test")
    assert metrics["n_users"] == 4
    assert metrics["recall@5"] == 1.0
    # ranks: u1 e at 1, u2 a at 1, u3 d at 1, u4 e: ranking minus {a, b} = c d e -> rank 3.
    assert metrics["mrr@10"] == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)
    assert metrics["invalid_rate"] == 0.0
    assert metrics["config"]["exclude_seen"] is True
    assert metrics["user_ids"] == ["u1", "u2", "u3", "u4"] and metrics["target_ranks"] == [1, 1, 1, 3]  # per user


def test_scored_alike_matches_what_evaluate_run_would_score(tiny_dataset):
    """A cached llmrec result is reused only for the same split, users, beam width and renormalisation; asking for
    more users than the split has scores all of them, as `evaluate_run` does, so it matches a result over everyone."""
    from eval.evaluate import scored_alike

    saved = {"split": "test", "n_users": 4, "config": {"num_beams": 2 * 6}}  # 6 items: top-20 capped at 6
    assert scored_alike(saved, tiny_dataset, "test")
    assert scored_alike(saved, tiny_dataset, "test", max_users=100)
    assert not scored_alike(saved, tiny_dataset, "test", max_users=3)
    assert not scored_alike(saved, tiny_dataset, "valid")
    assert not scored_alike(saved, tiny_dataset, "test", num_beams=8)
    # Saved before `renormalize` existed: decoded without it, so it stands for renormalize=False only.
    assert not scored_alike(saved, tiny_dataset, "test", renormalize=True)
    renormalized = {**saved, "config": {"num_beams": 12, "renormalize": True}}
    assert scored_alike(renormalized, tiny_dataset, "test", renormalize=True)
    assert not scored_alike(renormalized, tiny_dataset, "test")
