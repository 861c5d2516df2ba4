"""Cleaning steps applied by `prepare`: unknown items, duplicate interactions, k-core, chronological order.

Duplicate interactions (documented choice): rows identical in user, item and timestamp are always collapsed to
one. Repeated (user, item) pairs at different times are real re-consumption (re-ordering ink, re-watching) and
are kept by default (`duplicates="keep"`, as RecBole does); `"first"` or `"last"` keeps only that occurrence.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from llmrec.data.io import DataError
from llmrec.schemas import Interaction

logger = logging.getLogger(__name__)

DuplicatePolicy = Literal["keep", "first", "last"]
MIN_LOO_INTERACTIONS = 3


@dataclass
class FilterReport:
    """Counts of what each cleaning step removed, saved in `dataset.json`."""

    unknown_item_interactions: int = 0
    unknown_item_ids: int = 0
    identical_duplicate_rows: int = 0
    repeated_pair_rows_dropped: int = 0
    kcore_rounds: int = 0
    users_dropped: int = 0
    items_dropped: int = 0
    interactions_dropped_by_kcore: int = 0
    notes: list[str] = field(default_factory=list)


def drop_unknown_items(
    interactions: list[Interaction], item_ids: set[str] | dict, strict: bool, report: FilterReport, source: str
) -> list[Interaction]:
    """Drop interactions whose item is not in the catalog (with a count), or raise under `strict`."""
    unknown = Counter(row.item_id for row in interactions if row.item_id not in item_ids)
    if not unknown:
        return interactions
    examples = ", ".join(repr(item_id) for item_id, _ in unknown.most_common(5))
    total = sum(unknown.values())
    if strict:
        raise DataError(
            f"{source}: {total} interaction(s) refer to {len(unknown)} item id(s) missing from the item file "
            f"(e.g. {examples}); add them to the item file or drop --strict to skip them."
        )
    logger.warning("Dropping %d interactions on %d unknown item ids (e.g. %s).", total, len(unknown), examples)
    report.unknown_item_interactions, report.unknown_item_ids = total, len(unknown)
    return [row for row in interactions if row.item_id in item_ids]


def order_chronologically(interactions: Iterable[Interaction]) -> list[Interaction]:
    """Group rows by user (users in order of first appearance) and sort each user's rows by timestamp.

    Python's sort is stable, so rows with equal timestamps keep their source order: the same input always
    gives the same sequence.
    """
    by_user: dict[str, list[Interaction]] = {}
    for row in interactions:
        by_user.setdefault(row.user_id, []).append(row)
    return [row for rows in by_user.values() for row in sorted(rows, key=lambda row: row.timestamp)]


def handle_duplicates(
    interactions: list[Interaction], policy: DuplicatePolicy, report: FilterReport
) -> list[Interaction]:
    """Collapse identical rows; apply `policy` to repeated (user, item) pairs. Input must be chronological."""
    if policy not in ("keep", "first", "last"):
        raise ValueError(f"duplicates must be 'keep', 'first' or 'last', got {policy!r}.")
    seen_rows: set[Interaction] = set()
    unique = []
    for row in interactions:
        if row not in seen_rows:
            seen_rows.add(row)
            unique.append(row)
    report.identical_duplicate_rows = len(interactions) - len(unique)
    if policy == "keep":
        return unique
    ordered = unique if policy == "first" else unique[::-1]
    seen_pairs: set[tuple[str, str]] = set()
    kept = []
    for row in ordered:
        if (row.user_id, row.item_id) not in seen_pairs:
            seen_pairs.add((row.user_id, row.item_id))
            kept.append(row)
    kept = kept if policy == "first" else kept[::-1]
    report.repeated_pair_rows_dropped = len(unique) - len(kept)
    return kept


def check_short_users(interactions: list[Interaction], source: str) -> None:
    """Raise if any user has fewer interactions than leave-one-out needs (used under `strict`)."""
    counts = Counter(row.user_id for row in interactions)
    short = [user_id for user_id, count in counts.items() if count < MIN_LOO_INTERACTIONS]
    if short:
        raise DataError(
            f"{source}: {len(short)} user(s) have fewer than {MIN_LOO_INTERACTIONS} interactions (e.g. "
            f"{', '.join(repr(u) for u in short[:5])}); leave-one-out needs 3. Drop --strict to filter them out."
        )


def k_core(
    interactions: list[Interaction], min_user: int, min_item: int, report: FilterReport
) -> list[Interaction]:
    """Iteratively drop users with fewer than `min_user` and items with fewer than `min_item` interactions.

    Repeats until both conditions hold for every remaining user and item (removing an item can push a user
    below the threshold, and the other way round).
    """
    rows = interactions
    users_before = {row.user_id for row in rows}
    items_before = {row.item_id for row in rows}
    while True:
        user_counts = Counter(row.user_id for row in rows)
        item_counts = Counter(row.item_id for row in rows)
        kept = [row for row in rows if user_counts[row.user_id] >= min_user and item_counts[row.item_id] >= min_item]
        if len(kept) == len(rows):
            break
        report.kcore_rounds += 1
        rows = kept
    report.users_dropped = len(users_before) - len({row.user_id for row in rows})
    report.items_dropped = len(items_before) - len({row.item_id for row in rows})
    report.interactions_dropped_by_kcore = len(interactions) - len(rows)
    return rows
