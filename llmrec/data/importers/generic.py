"""Any interaction table plus item table, CSV/TSV or JSON lines (plain or .gz), with a column mapping.

`columns` maps llmrec names to the file's names, e.g. `{"user_id": "uid", "item_id": "movie", "timestamp":
"ts", "title": "name"}`; unmapped names are looked up as themselves. The timestamp may be an integer, a float
(truncated to seconds), an ISO-8601 date or datetime, or absent: then each user's rows keep file order (the
row number becomes the timestamp). Every other non-empty item column becomes a text field, unless `text_fields`
picks which.

The `../shared/data/amazon-office` layout (`item_id,title,brand,categories,description` and
`user_id,item_id,position`) is one such mapping: see `import_amazon_office`.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from llmrec.data.importers.common import RawData, clean_text, collect_items
from llmrec.data.io import DataError, located, open_bytes, read_lines
from llmrec.schemas import Interaction, Item

INTERACTION_KEYS = ("user_id", "item_id", "timestamp")
ITEM_KEYS = ("item_id", "title", "image")


def parse_timestamp(value: object, where: str) -> int:
    """Integer seconds from an int, a float, a numeric string or an ISO-8601 date/datetime (UTC if naive).

    Examples:
        >>> parse_timestamp("1995-01-02", "x")
        789004800
        >>> parse_timestamp("881250949.0", "x")
        881250949
    """
    text = str(value).strip()
    try:
        return int(float(text))
    except OverflowError:
        raise DataError(f"{where}: timestamp {text!r} is not finite.") from None
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            f"{where}: timestamp {text!r} is neither a number nor an ISO-8601 date; fix the value or map another "
            "column to timestamp."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def read_table(path: str | Path) -> list[tuple[int, dict]]:
    """Rows of a CSV/TSV (header required) or JSON-lines file as `(line, record)`; the format comes from the suffix."""
    path = Path(path)
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind in (".jsonl", ".json", ".ndjson"):
        rows = []
        for number, text in read_lines(path):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{located(path, number)}: not valid JSON ({err.msg}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{located(path, number)}: expected one JSON object per line.")
            rows.append((number, record))
        return rows
    if kind not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unknown table format {kind!r}; use .csv, .tsv or .jsonl (optionally .gz).")
    for _ in read_lines(path):  # strict UTF-8 check with line numbers before csv parsing
        pass
    with open_bytes(path) as handle:
        text = handle.read().decode("utf-8-sig")  # tolerate Excel's byte-order mark
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if kind == ".tsv" else ",")
    rows = []
    for record in reader:
        if None in record:
            raise DataError(f"{located(path, reader.line_num)}: more values than header columns {reader.fieldnames}.")
        rows.append((reader.line_num, record))
    if not rows:
        raise DataError(f"{path} has a header but no rows.")
    return rows


def _column(columns: dict[str, str], key: str) -> str:
    return columns.get(key, key)


def _value(record: dict, column: str) -> str:
    """The cell as stripped text; a missing key or null is empty (but a JSON `0` stays `"0"`)."""
    value = record.get(column)
    return "" if value is None else str(value).strip()


def _check_columns(path: Path, record: dict, needed: list[str], columns: dict[str, str]) -> None:
    missing = [key for key in needed if _column(columns, key) not in record]
    if missing:
        mapped = [f"{key} (column {_column(columns, key)!r})" for key in missing]
        raise DataError(
            f"{path}: missing column(s) {', '.join(mapped)}; found {sorted(record)}. Map them with "
            f"--columns {','.join(f'{key}=<your column>' for key in missing)}."
        )


def import_table(
    interactions: str | Path,
    items: str | Path,
    columns: dict[str, str] | None = None,
    text_fields: list[str] | None = None,
    name: str | None = None,
    clean_html: bool = False,
) -> RawData:
    """Import a generic interaction table and item table (see the module docstring)."""
    columns = columns or {}
    unknown_keys = set(columns) - set(INTERACTION_KEYS) - set(ITEM_KEYS) - set(text_fields or [])
    if unknown_keys:
        raise ValueError(f"--columns maps unknown llmrec name(s) {sorted(unknown_keys)}; use {INTERACTION_KEYS + ITEM_KEYS}.")
    interactions, items = Path(interactions), Path(items)
    item_table = read_table(items)
    _check_columns(items, item_table[0][1], ["item_id", "title"], columns)
    used = {_column(columns, key) for key in ITEM_KEYS}
    if text_fields is not None:
        present = {key for _, record in item_table for key in record}
        absent = [key for key in text_fields if _column(columns, key) not in present]
        if absent:
            raise DataError(f"{items}: text field column(s) {absent} appear in no row; found {sorted(present)}.")
    item_rows = []
    for number, record in item_table:
        where = located(items, number)
        item_id, title = _value(record, _column(columns, "item_id")), _value(record, _column(columns, "title"))
        if not item_id or not title:
            raise DataError(f"{where}: item needs a non-empty item_id and title, got {item_id!r} / {title!r}.")
        names = text_fields if text_fields is not None else [key for key in record if key not in used]
        fields = {}
        for key in names:
            value = _value(record, _column(columns, key))
            fields[key] = clean_text(value) if clean_html else value
        image = _value(record, _column(columns, "image")) or None
        title = clean_text(title) if clean_html else title
        item_rows.append((where, Item(item_id, title, {k: v for k, v in fields.items() if v}, image)))
    catalog, identical = collect_items(item_rows)

    table = read_table(interactions)
    time_column = _column(columns, "timestamp")
    has_time = time_column in table[0][1]
    _check_columns(interactions, table[0][1], ["user_id", "item_id"] + (["timestamp"] * ("timestamp" in columns)), columns)
    rows = []
    for index, (number, record) in enumerate(table):
        where = located(interactions, number)
        user_id = _value(record, _column(columns, "user_id"))
        item_id = _value(record, _column(columns, "item_id"))
        if not user_id or not item_id:
            raise DataError(f"{where}: empty user_id or item_id.")
        if has_time and _value(record, time_column) == "":
            raise DataError(f"{where}: no timestamp in column {time_column!r}; every row needs one when the first has.")
        timestamp = parse_timestamp(record[time_column], where) if has_time else index
        rows.append(Interaction(user_id, item_id, timestamp))
    notes = {"identical_duplicate_items": identical, "timestamp": "column" if has_time else "row order"}
    return RawData(name or interactions.parent.name, "table", catalog, rows, [interactions, items], notes)


def import_amazon_office(folder: str | Path) -> RawData:
    """The `amazon-office` layout: `items.jsonl` + `interactions.csv` with `position` as the order."""
    folder = Path(folder)
    raw = import_table(
        folder / "interactions.csv",
        folder / "items.jsonl",
        columns={"timestamp": "position"},
        text_fields=["brand", "categories", "description"],
        name="amazon-office",
        clean_html=True,
    )
    raw.source = "amazon-office (Amazon 2018 Office Products, MiniOneRec sequences; position as timestamp)"
    return raw
