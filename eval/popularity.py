"""Most-popular baseline: rank items by their interaction count in the training sequences."""

from __future__ import annotations

from collections.abc import Iterable

from llmrec.data.split import LeaveOneOutSplit


class MostPopular:
    """Ranks the catalog by training popularity; ties break by catalog order, so rankings are deterministic.

    Args:
        split (`LeaveOneOutSplit`): counts come from `users[i].train` only, never from validation or test targets.
        catalog (`Iterable[str]`): every rankable item id, in catalog order.
    """

    def __init__(self, split: LeaveOneOutSplit, catalog: Iterable[str]) -> None:
        counts = split.train_counts()
        order = list(catalog)
        position = {item_id: index for index, item_id in enumerate(order)}
        self.ranking = sorted(order, key=lambda item_id: (-counts.get(item_id, 0), position[item_id]))

    def recommend(self, seen: Iterable[str] = (), k: int = 10, exclude_seen: bool = True) -> list[str]:
        """Top-`k` item ids; with `exclude_seen`, items in `seen` are skipped.

        Examples:
            >>> from llmrec.data.split import leave_one_out
            >>> split = leave_one_out({"u": ["a", "a", "b", "c", "d"]})
            >>> MostPopular(split, ["d", "b", "a"]).recommend(seen=["a"], k=2)
            ['b', 'd']
        """
        if k > len(self.ranking):
            raise ValueError(f"k={k} is larger than the catalog ({len(self.ranking)} items).")
        excluded = set(seen) if exclude_seen else set()
        top = []
        for item_id in self.ranking:
            if item_id not in excluded:
                top.append(item_id)
                if len(top) == k:
                    break
        return top
