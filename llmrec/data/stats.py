"""Dataset report: users, items, interactions, sequence length quantiles, sparsity."""

from __future__ import annotations

from collections import Counter

import numpy as np

from llmrec.schemas import Interaction, Item


def dataset_stats(items: dict[str, Item], interactions: list[Interaction]) -> dict:
    """Summary numbers saved in `dataset.json` and printed by `llmrec data prepare`.

    Sparsity is `1 - interactions / (users * items)` over the whole catalog.
    """
    user_counts = Counter(row.user_id for row in interactions)
    item_counts = Counter(row.item_id for row in interactions)
    lengths = np.array(sorted(user_counts.values()), dtype=np.int64)  # (U,)
    pairs = Counter((row.user_id, row.item_id) for row in interactions)
    n_users, n_items, n_rows = len(user_counts), len(items), len(interactions)
    quantiles = {f"p{q}": float(np.percentile(lengths, q)) for q in (10, 25, 50, 75, 90)}
    return {
        "users": n_users,
        "items": n_items,
        "interactions": n_rows,
        "items_with_interactions": len(item_counts),
        "repeated_user_item_rows": sum(count - 1 for count in pairs.values()),
        "sequence_length": {
            "min": int(lengths.min()),
            **quantiles,
            "max": int(lengths.max()),
            "mean": round(float(lengths.mean()), 3),
        },
        "sparsity": round(1.0 - n_rows / (n_users * n_items), 6),
        "items_with_image": sum(1 for item in items.values() if item.image),
    }


def format_stats(name: str, stats: dict) -> str:
    """One screen of text for the terminal."""
    seq = stats["sequence_length"]
    lines = [
        f"dataset {name}",
        f"  users         {stats['users']:>10,}",
        f"  items         {stats['items']:>10,}  ({stats['items_with_interactions']:,} with interactions)",
        f"  interactions  {stats['interactions']:>10,}  ({stats['repeated_user_item_rows']:,} repeated user-item)",
        f"  sparsity      {stats['sparsity']:>10.4%}",
        "  seq length    min {min} / p25 {p25:g} / median {p50:g} / p75 {p75:g} / p90 {p90:g} / max {max} "
        "(mean {mean:g})".format(**seq),
    ]
    return "\n".join(lines)
