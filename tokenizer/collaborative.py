"""Collaborative item vectors: who consumed an item together with what, from the training interactions only.

Text embeddings place "Toy Story" near other animated comedies; on MovieLens that says little about who watches
what next. This modality adds the co-consumption signal (as LETTER, arXiv:2405.07314, adds collaborative
regularisation to the RQ-VAE): a truncated SVD of the degree-normalised user x item matrix
`D_u^-1/2 X D_i^-1/2` (X binary), whose item factors scaled by the singular values place two items close when
the same users consumed both (the leading factor, which only measures popularity, is dropped).
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
    item_ids: Sequence[str], histories: Sequence[Sequence[str]], dim: int = 64, seed: int = 42
) -> tuple[np.ndarray, dict]:
    """`(N, dim)` item vectors in `item_ids` order from users' `histories`, and a summary.

    Args:
        item_ids: the catalog, in index order.
        histories: one list of consumed item ids per user (training interactions only).
        dim: number of singular vectors kept; capped below the matrix's smaller side.
        seed: seeds ARPACK's start vector, so the same interactions give the same vectors.

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
    rows = [(user, column[item]) for user, history in enumerate(histories) for item in set(history)]
    if not rows:
        raise DataError("collaborative embeddings need training interactions; the histories are empty.")
    users, cols = np.array(rows).T
    matrix = csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (users, cols)), shape=(len(histories), len(item_ids))
    )  # (U, N) binary
    user_degree = np.asarray(matrix.sum(axis=1)).ravel()  # (U,)
    item_degree = np.asarray(matrix.sum(axis=0)).ravel()  # (N,)
    inv_sqrt = lambda degree: np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0)  # noqa: E731
    normalised = diags(inv_sqrt(user_degree)) @ matrix @ diags(inv_sqrt(item_degree))  # (U, N)
    # The leading singular pair of this normalisation (value 1, item vector ~ sqrt(degree)) only encodes
    # popularity: keep the `dim` pairs after it.
    k = min(dim + 1, min(normalised.shape) - 1)
    if k < 2:
        raise DataError(f"collaborative embeddings need at least 3 users and 3 items, got {normalised.shape}.")
    start = np.random.default_rng(seed).standard_normal(min(normalised.shape))
    _, singular, vt = svds(normalised, k=k, v0=start)  # vt (k, N), singular ascending
    order = np.argsort(singular)[::-1][1:]
    vectors = (vt[order].T * singular[order]).astype(np.float32)  # (N, k - 1)
    vectors[item_degree == 0] = 0.0
    summary = {
        "cf_dim": int(k - 1),
        "cf_users": len(histories),
        "items_with_cf": int((item_degree > 0).sum()),
        "cf_top_singular_values": [round(float(value), 4) for value in singular[order][:5]],
    }
    logger.info(
        "Collaborative embeddings: %d users, %d of %d items seen in training, %d dims",
        len(histories), summary["items_with_cf"], len(item_ids), k,
    )  # fmt: skip
    return vectors, summary
