"""Ranking metrics for leave-one-out evaluation: one relevant item (the target) per user. Pure numpy.

All metrics start from `target_ranks`: the 1-based rank of each user's target in that user's ranked list, 0 when
the target is absent. With one relevant item, Recall@K equals HR@K and the ideal DCG is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based rank of `targets[u]` in `ranked[u]`, 0 if absent.

    Examples:
        >>> target_ranks([["a", "b"], ["c", "d"]], ["b", "x"]).tolist()
        [2, 0]
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets; pass one list per target.")
    ranks = np.zeros(len(targets), dtype=np.int64)  # (U,)
    for user, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        for position, item_id in enumerate(items, start=1):
            if item_id == target:
                ranks[user] = position
                break
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Recall@K = mean over users of 1[1 <= rank <= K].

    Examples:
        >>> recall_at_k(np.array([1, 3, 0, 11]), 10)
        0.5
    """
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@K: 1[1 <= rank <= K] / log2(rank + 1), shape `(U,)`.

    Examples:
        >>> ndcg_gains(np.array([1, 3, 0, 12]), 10).tolist()
        [1.0, 0.5, 0.0, 0.0]
    """
    ranks = np.asarray(ranks)
    hit = (ranks >= 1) & (ranks <= k)
    gains = np.zeros(len(ranks), dtype=np.float64)  # (U,)
    gains[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return gains


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@K = mean over users of 1[1 <= rank <= K] / log2(rank + 1) (ideal DCG is 1 with one target).

    Examples:
        >>> round(ndcg_at_k(np.array([1, 3, 0]), 10), 6)  # (1 + 1/log2(4) + 0) / 3
        0.5
    """
    return float(ndcg_gains(ranks, k).mean())


def paired_bootstrap(
    before: np.ndarray, after: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of `after - before` over users with a percentile bootstrap interval, resampling users (paired).

    `before` and `after` are per-user scores of two models on the same users in the same order (e.g. `ndcg_gains`).
    The interval says how much the difference could move with another sample of users of the same kind; an
    interval that contains 0 means the data do not tell the two models apart.

    Examples:
        >>> result = paired_bootstrap(np.zeros(200), np.r_[np.ones(100), np.zeros(100)])
        >>> result["diff"], 0.4 < result["low"] < 0.5 < result["high"] < 0.6
        (0.5, True)
    """
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 1 or len(before) == 0:
        raise ValueError(
            f"paired scores need two equal-length 1-d arrays, got shapes {before.shape} and {after.shape}; score "
            "both models on the same users."
        )
    diffs = after - before  # (U,)
    generator = np.random.default_rng(seed)
    samples = generator.integers(0, len(diffs), size=(resamples, len(diffs)))  # (R, U) user indices
    means = diffs[samples].mean(axis=1)  # (R,)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"diff": float(diffs.mean()), "low": float(low), "high": float(high), "level": level}


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """MRR@K = mean over users of 1[1 <= rank <= K] / rank.

    Examples:
        >>> mrr_at_k(np.array([1, 4, 0, 20]), 10)
        0.3125
    """
    hit = (ranks >= 1) & (ranks <= k)
    reciprocal = np.zeros(len(ranks), dtype=np.float64)
    reciprocal[hit] = 1.0 / ranks[hit]
    return float(reciprocal.mean())


def coverage_at_k(ranked: Sequence[Sequence[str]], k: int, num_items: int) -> float:
    """Catalog coverage = |union of all users' top-K items| / number of catalog items.

    Examples:
        >>> coverage_at_k([["a", "b"], ["b", "c"]], 1, 4)
        0.5
    """
    return len({item_id for items in ranked for item_id in items[:k]}) / num_items


def invalid_rate(ranked: Sequence[Sequence[str]], k: int, catalog: set[str] | dict) -> float:
    """Share of the returned entries among the first K of every list that are invalid: an id outside the catalog
    or a repeat of an earlier id in the same list. A list shorter than K (every other item excluded as already
    seen) is not an error and adds no entries.

    Examples:
        >>> invalid_rate([["a", "a"], ["zz", "b"]], 2, {"a", "b"})
        0.5
    """
    bad = total = 0
    for items in ranked:
        top = list(items[:k])
        total += len(top)
        bad += sum(1 for item_id in top if item_id not in catalog) + len(top) - len(set(top))
    return bad / total if total else 0.0


def ranking_metrics(
    ranked: Sequence[Sequence[str]],
    targets: Sequence[str],
    catalog: set[str] | dict,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    """Recall@K and NDCG@K for each K, MRR@10, top-10 coverage and invalid rate at the largest K."""
    ranks = target_ranks(ranked, targets)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"recall@{k}"] = recall_at_k(ranks, k)
        metrics[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    metrics["mrr@10"] = mrr_at_k(ranks, 10)
    metrics["coverage@10"] = coverage_at_k(ranked, 10, len(catalog))
    metrics["invalid_rate"] = invalid_rate(ranked, max(ks), catalog)
    return metrics
