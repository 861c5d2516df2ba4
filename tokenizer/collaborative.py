"""Collaborative item vectors: who consumed an item together with what, from the training interactions only.

Text embeddings place "Toy Story" near other animated comedies; on MovieLens that says little about who watches
what next. This modality adds the co-consumption signal (as LETTER, arXiv:2405.07314, adds collaborative
regularisation to the RQ-VAE): a truncated SVD of the degree-normalised user x item matrix
`D_u^-1/2 X D_i^-1/2` (X binary), whose item factors scaled by the singular values place two items close when
the same users consumed both (the leading factor, which only measures popularity, is dropped).
With `window = w > 0` the matrix is instead item x item: two items count as co-occurring when one follows the
other within `w` places in a user's training sequence (weight `1/distance`, both directions), normalised the same
way, `D^-1/2 A D^-1/2`. Items then share prefixes when they are consumed *near each other in time*, which is what
a next-item model predicts from, rather than anywhere in the same history.
Fused with text (`--modalities text,cf`), items that are watched together share SID prefixes, so the LM's
first-token choice is closer to the choice a sequential recommender learns.

Only the histories passed in are used: `build_index` passes the training part of the leave-one-out split, never a
validation or test item. An item nobody consumed in training gets a zero vector, so only its text places it (like
an item without an image); so does every item added later by `llmrec index add`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix, diags
from scipy.sparse.linalg import svds

from llmrec.data.io import DataError

logger = logging.getLogger(__name__)


def collaborative_embeddings(
    item_ids: Sequence[str], histories: Sequence[Sequence[str]], dim: int = 64, seed: int = 42, window: int = 0
) -> tuple[np.ndarray, dict]:
    """`(N, dim)` item vectors in `item_ids` order from users' `histories`, and a summary.

    Args:
        item_ids: the catalog, in index order.
        histories: one list of consumed item ids per user (training interactions only).
        dim: number of singular vectors kept; capped below the matrix's smaller side.
        seed: seeds ARPACK's start vector, so the same interactions give the same vectors.
        window: 0 factors the user x item matrix (co-consumption anywhere in a history); `w > 0` factors the
            item x item matrix of items within `w` places of each other in a sequence (histories in time order).

    Examples:
        >>> histories = [["a", "b"], ["a", "b"], ["c", "d"], ["c", "d"], ["a", "b", "c"]]
        >>> vectors, _ = collaborative_embeddings(["a", "b", "c", "d"], histories, dim=2)
        >>> bool(vectors[0] @ vectors[1] > vectors[0] @ vectors[3])
        True
    """
    column = {item_id: position for position, item_id in enumerate(item_ids)}
    unknown = sorted({item for history in histories for item in history if item not in column})
    if unknown:
        raise DataError(
            f"collaborative embeddings: {len(unknown)} history item(s) are not in the catalog (e.g. {unknown[:5]}); "
            "the dataset's split and items.jsonl disagree: prepare the dataset again."
        )
    if window < 0:
        raise ValueError(f"cf window must be >= 0 (0: user x item co-consumption), got {window}.")
    matrix = co_occurrence(column, histories, window) if window else user_item(column, histories)  # (N, N) / (U, N)
    if matrix.nnz == 0:
        raise DataError("collaborative embeddings need training interactions; the histories are empty.")
    row_degree = np.asarray(matrix.sum(axis=1)).ravel()  # (U,) or (N,)
    item_degree = np.asarray(matrix.sum(axis=0)).ravel()  # (N,)
    inv_sqrt = lambda degree: np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)  # noqa: E731
    normalised = diags(inv_sqrt(row_degree)) @ matrix @ diags(inv_sqrt(item_degree))  # (U, N) or (N, N)
    # The leading singular pair of this normalisation (value 1, item vector ~ sqrt(degree)) only encodes
    # popularity: keep the `dim` pairs after it.
    k = min(dim + 1, min(normalised.shape) - 1)
    if k < 2:
        need = "3 items" if window else "3 users and 3 items"
        raise DataError(f"collaborative embeddings need at least {need}, got a {normalised.shape} matrix.")
    start = np.random.default_rng(seed).standard_normal(min(normalised.shape))
    _, singular, vt = svds(normalised, k=k, v0=start)  # vt (k, N), singular ascending
    order = np.argsort(singular)[::-1][1:]
    vectors = (vt[order].T * singular[order]).astype(np.float32)  # (N, k - 1)
    vectors[item_degree == 0] = 0.0
    summary = {
        "cf_dim": int(k - 1),
        "cf_matrix": f"items within {window} places" if window else "users x items",
        "cf_users": len(histories),
        "items_with_cf": int((item_degree > 0).sum()),
        "cf_top_singular_values": [round(float(value), 4) for value in singular[order][:5]],
    }
    logger.info(
        "Collaborative embeddings: %d users, %d of %d items seen in training, %d dims",
        len(histories), summary["items_with_cf"], len(item_ids), k,
    )  # fmt: skip
    return vectors, summary


def user_item(column: dict[str, int], histories: Sequence[Sequence[str]]) -> csr_matrix:
    """`(U, N)` binary matrix: user u consumed item i (repeats count once)."""
    rows = [(user, column[item]) for user, history in enumerate(histories) for item in set(history)]
    users, cols = np.array(rows, dtype=np.int64).reshape(-1, 2).T
    return csr_matrix((np.ones(len(rows)), (users, cols)), shape=(len(histories), len(column)))


def co_occurrence(column: dict[str, int], histories: Sequence[Sequence[str]], window: int) -> csr_matrix:
    """`(N, N)` symmetric matrix: sum over sequences of `1/d` for every pair of items `d <= window` places apart."""
    rows, cols, weights = [], [], []
    for history in histories:
        positions = [column[item] for item in history]
        for distance in range(1, window + 1):
            rows += positions[:-distance]
            cols += positions[distance:]
            weights += [1.0 / distance] * max(len(positions) - distance, 0)
    size = len(column)
    matrix = csr_matrix((np.array(weights, dtype=np.float64), (rows, cols)), shape=(size, size))
    return (matrix + matrix.T).tocsr()
