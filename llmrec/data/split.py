"""Leave-one-out split: per user, last item = test target, second-to-last = validation target, rest = training.

`split.jsonl` holds one line per user, `{"user_id": str, "train": [item_id, ...], "valid": item_id, "test":
item_id}`, with full training sequences. The model input is the most recent `max_history` items before a
target (`LeaveOneOutSplit.examples`); truncation happens there and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmrec.data.io import DataError, located, read_lines

SplitName = Literal["train", "valid", "test"]


@dataclass(frozen=True)
class UserSplit:
    user_id: str
    train: tuple[str, ...]
    valid: str
    test: str


@dataclass(frozen=True)
class Example:
    """One evaluation case: predict `target` from `history` (the most recent items, oldest first).

    `seen` holds every item the user interacted with before the target (not only the truncated history), for
    excluding already-seen items from a ranking.
    """

    user_id: str
    history: tuple[str, ...]
    target: str
    seen: frozenset[str]


@dataclass(frozen=True)
class LeaveOneOutSplit:
    users: tuple[UserSplit, ...]
    max_history: int = 20

    def examples(self, split: SplitName) -> list[Example]:
        """Evaluation examples for `"valid"` or `"test"`; the test history includes the validation item.

        Examples:
            >>> s = LeaveOneOutSplit((UserSplit("u", ("a", "b", "c"), "d", "e"),), max_history=2)
            >>> s.examples("test")[0].history
            ('c', 'd')
        """
        if split not in ("valid", "test"):
            raise ValueError(f"examples() takes 'valid' or 'test', got {split!r}; training data is `users[i].train`.")
        examples = []
        for user in self.users:
            before = user.train if split == "valid" else (*user.train, user.valid)
            target = user.valid if split == "valid" else user.test
            examples.append(Example(user.user_id, before[-self.max_history :], target, frozenset(before)))
        return examples

    def train_counts(self) -> dict[str, int]:
        """Interaction count per item over the training sequences only (no validation or test targets)."""
        counts: dict[str, int] = {}
        for user in self.users:
            for item_id in user.train:
                counts[item_id] = counts.get(item_id, 0) + 1
        return counts


def leave_one_out(sequences: dict[str, list[str]], max_history: int = 20) -> LeaveOneOutSplit:
    """Split chronological per-user sequences; every user needs at least 3 items.

    Examples:
        >>> leave_one_out({"u": ["a", "b", "c", "d"]}).users[0]
        UserSplit(user_id='u', train=('a', 'b'), valid='c', test='d')
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}.")
    users = []
    for user_id, items in sequences.items():
        if len(items) < 3:
            raise DataError(
                f"user {user_id!r} has {len(items)} interaction(s); leave-one-out needs at least 3 "
                "(filter with min_user_interactions >= 3)."
            )
        users.append(UserSplit(user_id, tuple(items[:-2]), items[-2], items[-1]))
    return LeaveOneOutSplit(tuple(users), max_history)


def save_split(split: LeaveOneOutSplit, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for user in split.users:
            record = {"user_id": user.user_id, "train": list(user.train), "valid": user.valid, "test": user.test}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_split(path: str | Path, item_ids: set[str] | dict, max_history: int = 20) -> LeaveOneOutSplit:
    """Read `split.jsonl` and check every item id against the catalog."""
    path = Path(path)
    users = []
    for number, text in read_lines(path):
        where = located(path, number)
        try:
            record = json.loads(text)
            user = UserSplit(record["user_id"], tuple(record["train"]), record["valid"], record["test"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"{where}: expected {{'user_id', 'train': [...], 'valid', 'test'}}, could not read it ({err!r})."
            ) from None
        for item_id in (*user.train, user.valid, user.test):
            if item_id not in item_ids:
                raise DataError(f"{where}: item {item_id!r} is not in the catalog; re-run `llmrec data prepare`.")
        users.append(user)
    return LeaveOneOutSplit(tuple(users), max_history)
