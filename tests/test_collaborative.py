"""The cf modality's item vectors: co-consumed items close, popularity factor dropped, unseen items zero."""

import numpy as np
import pytest

from llmrec.data.io import DataError
from tokenizer.collaborative import co_occurrence, collaborative_embeddings

ITEMS = [f"i{n}" for n in range(9)]  # i0-i3 one taste, i4-i7 another, i8 never consumed


def two_tastes(users_per_taste: int = 6) -> list[list[str]]:
    rng = np.random.default_rng(0)
    histories = []
    for taste in (ITEMS[:4], ITEMS[4:8]):
        for _ in range(users_per_taste):
            histories.append(list(rng.choice(taste, size=3, replace=False)))
    histories.append(["i0", "i4"])  # one user across both, so the matrix is connected
    return histories


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_items_consumed_by_the_same_users_are_closer_than_items_of_another_taste():
    vectors, summary = collaborative_embeddings(ITEMS, two_tastes(), dim=4)  # (9, 4)
    within = [
        cosine(vectors[a], vectors[b]) for taste in (range(4), range(4, 8)) for a in taste for b in taste if a < b
    ]
    across = [cosine(vectors[a], vectors[b]) for a in range(4) for b in range(4, 8)]
    assert np.mean(within) > 0.3 > 0 > np.mean(across)
    strongest = vectors[:8, 0]  # the largest kept factor splits the two tastes
    assert (np.sign(strongest[:4]) == np.sign(strongest[0])).all() and (
        np.sign(strongest[4:]) != np.sign(strongest[0])
    ).all()
    assert summary["cf_dim"] == 4 and summary["items_with_cf"] == 8 and summary["cf_users"] == 13


def test_unseen_items_get_zero_vectors_and_the_popularity_factor_is_dropped():
    histories = two_tastes()
    vectors, _ = collaborative_embeddings(ITEMS, histories, dim=4)
    assert not vectors[8].any()
    degree = np.array([sum(item in set(h) for h in histories) for item in ITEMS], dtype=float)
    # The dropped leading factor is ~sqrt(degree); the kept ones are orthogonal to it.
    np.testing.assert_allclose(vectors.T @ np.sqrt(degree), 0.0, atol=1e-4)


def test_the_same_interactions_give_the_same_vectors_and_dim_is_capped():
    first, _ = collaborative_embeddings(ITEMS, two_tastes(), dim=64)
    second, summary = collaborative_embeddings(ITEMS, two_tastes(), dim=64)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (9, summary["cf_dim"]) and summary["cf_dim"] == 9 - 2  # min side - 1, minus the dropped


def test_bad_histories_are_refused_with_the_item_named():
    with pytest.raises(DataError, match=r"1 history item\(s\) are not in the catalog \(e\.g\. \['ghost'\]\)"):
        collaborative_embeddings(ITEMS, [["i0", "ghost"], ["i1"]])
    with pytest.raises(DataError, match="histories are empty"):
        collaborative_embeddings(ITEMS, [[], []])
    with pytest.raises(DataError, match="at least 3 users and 3 items"):
        collaborative_embeddings(ITEMS, [["i0"], ["i1"]])


def two_chains(users: int = 12) -> list[list[str]]:
    """Every user consumes all of i0-i7: i0-i3 back to back (in any order), then i4-i7, or the other way round."""
    rng = np.random.default_rng(0)
    histories = []
    for user in range(users):
        chains = [list(rng.permutation(ITEMS[:4])), list(rng.permutation(ITEMS[4:8]))]
        histories.append([str(item) for item in (chains[0] + chains[1] if user % 2 else chains[1] + chains[0])])
    return histories


def test_a_window_separates_items_consumed_near_each_other_which_user_x_item_cannot():
    histories = two_chains()
    windowed, summary = collaborative_embeddings(ITEMS, histories, dim=4, window=2)  # (9, 4)
    within = [
        cosine(windowed[a], windowed[b]) for chain in (range(4), range(4, 8)) for a in chain for b in chain if a < b
    ]
    across = [cosine(windowed[a], windowed[b]) for a in range(4) for b in range(4, 8)]
    assert np.mean(within) > 0.3 > 0 > np.mean(across)
    assert summary["cf_matrix"] == "items within 2 places" and not windowed[8].any()
    # Every user consumed every item: the user x item matrix holds popularity only, and that factor is dropped.
    anywhere, summary = collaborative_embeddings(ITEMS, histories, dim=4)
    assert summary["cf_matrix"] == "users x items"
    assert np.abs(anywhere).max() < 1e-4 < np.abs(windowed).max()


def test_co_occurrence_weights_by_hand():
    column = {"a": 0, "b": 1, "c": 2}
    matrix = co_occurrence(column, [["a", "b", "c"], ["c", "a"]], window=2).toarray()  # (3, 3)
    # a-b and b-c are neighbours (1 each); a-c are 2 places apart in the first history (1/2) and neighbours in
    # the second (1); counted both ways.
    np.testing.assert_allclose(matrix, [[0, 1, 1.5], [1, 0, 1], [1.5, 1, 0]])
    with pytest.raises(ValueError, match="cf window must be >= 0"):
        collaborative_embeddings(ITEMS, two_chains(), window=-1)
