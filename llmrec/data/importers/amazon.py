"""Amazon product reviews + metadata, 2014 (McAuley et al.) and 2018 (Ni et al.) formats, plain or .gz.

Reviews are JSON lines with `reviewerID`, `asin`, `unixReviewTime`. Metadata lines are JSON (2018) or Python
dict literals (2014, e.g. `{'asin': '0001', 'title': 'x'}`); each line is tried as JSON first, then as a
literal, so both formats and mixtures load. Text fields are cleaned of HTML. Items without a title are dropped
(with a count): their text would be empty. The usual 5-core filter is applied by `prepare` (`--min-user 5
--min-item 5` is the importer's default on the command line).

Item fields: `brand`, `categories` (2014: the category paths joined as `A > B > C; D > E`; 2018: the `category`
path), `description` (joined, cleaned, cut at 2,000 characters), `features` (2018 `feature`), and `image` (2014
`imUrl`, 2018 first of `imageURLHighRes` / `imageURL`).
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from llmrec.data.importers.common import RawData, clean_text, collect_items
from llmrec.data.io import DataError, located, read_lines
from llmrec.schemas import Interaction, Item

logger = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 2000


def _parse_record(text: str, where: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(
                f"{where}: neither JSON nor a Python dict literal; each line must hold one record."
            ) from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected one object per line, got {type(record).__name__}.")
    return record


def _join(value: object, separator: str) -> str:
    """Flatten a string or (nested) list of strings into cleaned text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return separator.join(part for part in (_join(part, separator) for part in value) if part)
    return clean_text(str(value))


def _categories(record: dict) -> str:
    if "categories" in record:  # 2014: list of category paths
        paths = record["categories"] or []
        return "; ".join(" > ".join(clean_text(c) for c in path if c) for path in paths if isinstance(path, list))
    return " > ".join(clean_text(c) for c in record.get("category") or [] if isinstance(c, str) and c.strip())


def _image(record: dict) -> str | None:
    if isinstance(record.get("imUrl"), str) and record["imUrl"].strip():
        return record["imUrl"].strip()
    for key in ("imageURLHighRes", "imageURL"):
        urls = record.get(key)
        if isinstance(urls, list) and urls:
            return str(urls[0])
    return None


def parse_meta_record(record: dict, where: str) -> Item | None:
    """Build an `Item` from one metadata record (2014 or 2018); `None` when it has no usable title."""
    asin = record.get("asin")
    if not isinstance(asin, str) or not asin.strip():
        raise DataError(f"{where}: metadata record has no 'asin' string; got keys {sorted(record)[:8]}.")
    title = _join(record.get("title"), " ")
    if not title:
        return None
    fields = {
        "brand": _join(record.get("brand"), " "),
        "categories": _categories(record),
        "description": _join(record.get("description"), " ")[:MAX_DESCRIPTION_CHARS],
        "features": _join(record.get("feature"), "; "),
    }
    return Item(asin.strip(), title, {key: value for key, value in fields.items() if value}, _image(record))


def import_amazon(reviews: str | Path, meta: str | Path, name: str | None = None) -> RawData:
    """Read Amazon review and metadata files (2014 or 2018 format, plain or gzip)."""
    reviews, meta = Path(reviews), Path(meta)
    item_rows, untitled = [], 0
    for number, text in read_lines(meta):
        where = located(meta, number)
        item = parse_meta_record(_parse_record(text, where), where)
        if item is None:
            untitled += 1
            continue
        item_rows.append((where, item))
    if untitled:
        logger.warning("%s: dropped %d items without a title.", meta, untitled)
    items, identical = collect_items(item_rows)
    if not items:
        raise DataError(
            f"{meta}: no item has a title; is this an Amazon metadata file? (Did you swap --reviews and --meta?)"
        )
    interactions = []
    for number, text in read_lines(reviews):
        where = located(reviews, number)
        record = _parse_record(text, where)
        missing = [key for key in ("reviewerID", "asin", "unixReviewTime") if key not in record]
        if missing:
            raise DataError(
                f"{where}: review lacks {missing}; expected Amazon review lines with reviewerID, asin, "
                "unixReviewTime. Did you swap --reviews and --meta?"
            )
        try:
            timestamp = int(record["unixReviewTime"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: unixReviewTime {record['unixReviewTime']!r} is not an integer.") from None
        interactions.append(Interaction(str(record["reviewerID"]), str(record["asin"]), timestamp))
    notes = {"items_without_title": untitled, "identical_duplicate_items": identical}
    stem = reviews.name.split(".")[0]
    return RawData(name or f"amazon-{stem}", "Amazon reviews + metadata", items, interactions, [reviews, meta], notes)
