"""Records and file names shared by every stage: the canonical dataset folder and its split.

A dataset folder holds three files written by `llmrec data prepare` and read by every later stage:

- `items.jsonl`: one item per line,
  `{"item_id": str, "title": str, <text field>: str | null, ..., "image": str | null}`;
- `interactions.csv`: `user_id,item_id,timestamp` with an integer timestamp (a position where the source has no time);
- `dataset.json`: name, source, counts, sha256 of the inputs and outputs, filtering and split settings, stats;

plus `split.jsonl`, the leave-one-out split (see `llmrec.data.split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

FORMAT_VERSION = 1

ITEMS_FILE = "items.jsonl"
INTERACTIONS_FILE = "interactions.csv"
DATASET_FILE = "dataset.json"
SPLIT_FILE = "split.jsonl"

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
RESERVED_ITEM_KEYS = ("item_id", "title", "image")


@dataclass(frozen=True)
class Item:
    """One catalog item.

    Args:
        item_id (`str`): catalog key, unique in the dataset.
        title (`str`): human-readable name, never empty.
        fields (`dict[str, str]`, *optional*): further free-text fields in display order (brand, categories,
            description, genres, year, ...). Empty values are dropped.
        image (`str`, *optional*): path (relative to the dataset folder or absolute) or URL of an image.
    """

    item_id: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)
    image: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"item_id": self.item_id, "title": self.title, **self.fields, "image": self.image}


class Interaction(NamedTuple):
    """One user-item event. `timestamp` orders a user's events; ties keep source order."""

    user_id: str
    item_id: str
    timestamp: int
