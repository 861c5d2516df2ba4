"""The canonical dataset folder: `items.jsonl`, `interactions.csv`, `dataset.json` (see `llmrec.schemas`).

`save_dataset` writes a folder atomically; `load_dataset` reads one back and validates every line, so that later
stages can trust it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from llmrec.data.io import DataError, located, read_lines, read_versioned_json, sha256_file, write_json_atomic
from llmrec.data.split import LeaveOneOutSplit, load_split, save_split
from llmrec.schemas import (
    DATASET_FILE,
    FORMAT_VERSION,
    INTERACTION_COLUMNS,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    RESERVED_ITEM_KEYS,
    SPLIT_FILE,
    Interaction,
    Item,
)

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """A validated dataset held in memory.

    Args:
        items (`dict[str, Item]`): catalog in file order, keyed by `item_id`.
        interactions (`list[Interaction]`): grouped by user, each user's events in chronological order.
        meta (`dict`): the content of `dataset.json`.
        path (`Path`, *optional*): the folder it was loaded from.
    """

    items: dict[str, Item]
    interactions: list[Interaction]
    meta: dict
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.meta["name"]

    def load_split(self) -> LeaveOneOutSplit:
        """The leave-one-out split saved beside the dataset, with the `max_history` it was prepared with."""
        if self.path is None or SPLIT_FILE not in self.meta.get("files", {}):
            raise DataError(f"dataset {self.name!r} has no {SPLIT_FILE}; re-run `llmrec data prepare`.")
        return load_split(self.path / SPLIT_FILE, self.items, self.meta["split"]["max_history"])

    def sequences(self) -> dict[str, list[str]]:
        """Each user's item ids in chronological order, users in file order."""
        sequences: dict[str, list[str]] = {}
        for user_id, item_id, _ in self.interactions:
            sequences.setdefault(user_id, []).append(item_id)
        return sequences


def parse_item(record: object, where: str) -> Item:
    """Validate one decoded `items.jsonl` record and build an `Item`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(record).__name__}.")
    item_id, title = record.get("item_id"), record.get("title")
    if not isinstance(item_id, str) or not item_id.strip():
        raise DataError(f"{where}: 'item_id' must be a non-empty string, got {item_id!r}.")
    if not isinstance(title, str) or not title.strip():
        raise DataError(f"{where}: item {item_id!r} needs a non-empty string 'title', got {title!r}.")
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        raise DataError(f"{where}: item {item_id!r} has 'image' {image!r}; use a path or URL string, or null.")
    fields = {}
    for key, value in record.items():
        if key in RESERVED_ITEM_KEYS or value is None:
            continue
        if not isinstance(value, str):
            raise DataError(
                f"{where}: item {item_id!r} field {key!r} is {type(value).__name__}; text fields must be strings "
                "(join lists into one string) or null."
            )
        if value.strip():
            fields[key] = value
    return Item(item_id=item_id, title=title, fields=fields, image=image or None)


def read_items(path: Path) -> dict[str, Item]:
    """Read and validate `items.jsonl`: JSON objects, unique non-empty ids, non-empty titles, string fields."""
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for number, text in read_lines(path):
        where = located(path, number)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).") from None
        item = parse_item(record, where)
        if item.item_id in items:
            raise DataError(
                f"{where}: duplicate item_id {item.item_id!r} (first on line {first_line[item.item_id]}); "
                "item ids must be unique, remove or rename one."
            )
        items[item.item_id] = item
        first_line[item.item_id] = number
    return items


def read_interactions(path: Path, items: dict[str, Item]) -> list[Interaction]:
    """Read and validate `interactions.csv` against the catalog: header, integer timestamps, known items."""
    lines = read_lines(path, skip_blank=True)
    header_line, header_text = next(lines)
    header = next(csv.reader([header_text]))
    missing = [name for name in INTERACTION_COLUMNS if name not in header]
    if missing:
        raise DataError(
            f"{located(path, header_line)}: header {header} lacks column(s) {missing}; "
            f"the file needs the header {','.join(INTERACTION_COLUMNS)}."
        )
    user_col, item_col, time_col = (header.index(name) for name in INTERACTION_COLUMNS)
    interactions = []
    for number, text in lines:
        where = located(path, number)
        row = next(csv.reader([text]))
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} columns, found {len(row)} in {text!r}.")
        user_id, item_id = row[user_col], row[item_col]
        if not user_id:
            raise DataError(f"{where}: empty user_id.")
        if item_id not in items:
            raise DataError(
                f"{where}: item_id {item_id!r} is not in {ITEMS_FILE}; re-run `llmrec data prepare` to rebuild "
                "a consistent folder."
            )
        try:
            timestamp = int(row[time_col])
        except ValueError:
            raise DataError(f"{where}: timestamp {row[time_col]!r} is not an integer.") from None
        interactions.append(Interaction(user_id, item_id, timestamp))
    if not interactions:
        raise DataError(f"{path} has a header but no interactions.")
    return interactions


def load_dataset(folder: str | Path) -> Dataset:
    """Load and validate a dataset folder written by `save_dataset` / `llmrec data prepare`."""
    folder = Path(folder)
    meta_path = folder / DATASET_FILE
    meta = read_versioned_json(
        meta_path,
        FORMAT_VERSION,
        missing_fix=f"create the folder with `llmrec data prepare ... --out {folder}`",
        fix="re-run `llmrec data prepare`",
    )
    files = meta.get("files", {})
    for name in (ITEMS_FILE, INTERACTIONS_FILE):
        if name not in files:
            raise DataError(f"{meta_path}: 'files' lacks the checksum of {name}; re-run `llmrec data prepare`.")
    for name, expected in files.items():
        actual = sha256_file(folder / name) if (folder / name).is_file() else None
        if actual is None:
            raise DataError(f"{folder / name} not found; re-run `llmrec data prepare`.")
        if expected != actual:
            raise DataError(
                f"{folder / name} changed after it was prepared (sha256 {actual[:12]} != {str(expected)[:12]} in "
                f"{meta_path}); re-run `llmrec data prepare` instead of editing the folder by hand."
            )
    items = read_items(folder / ITEMS_FILE)
    interactions = read_interactions(folder / INTERACTIONS_FILE, items)
    return Dataset(items=items, interactions=interactions, meta=meta, path=folder)


def write_items(path: Path, items: dict[str, Item]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for item in items.values():
            handle.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")


def write_interactions(path: Path, interactions: list[Interaction]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INTERACTION_COLUMNS)
    writer.writerows(interactions)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def save_dataset(dataset: Dataset, folder: Path, split: LeaveOneOutSplit | None = None) -> None:
    """Write the dataset files (and the split) into an existing folder and record their checksums.

    Callers wrap this in `llmrec.data.io.atomic_dir` so the final folder appears complete or not at all.
    """
    write_items(folder / ITEMS_FILE, dataset.items)
    write_interactions(folder / INTERACTIONS_FILE, dataset.interactions)
    names = [ITEMS_FILE, INTERACTIONS_FILE]
    if split is not None:
        save_split(split, folder / SPLIT_FILE)
        names.append(SPLIT_FILE)
    dataset.meta["files"] = {name: sha256_file(folder / name) for name in names}
    write_json_atomic(folder / DATASET_FILE, dataset.meta)
