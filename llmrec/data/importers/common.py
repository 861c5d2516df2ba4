"""What every importer returns, and the helpers they share (item de-duplication, text cleanup)."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llmrec.data.io import DataError
from llmrec.schemas import Interaction, Item

logger = logging.getLogger(__name__)


@dataclass
class RawData:
    """An imported but not yet cleaned dataset.

    Args:
        name (`str`): dataset name written to `dataset.json`.
        source (`str`): short description of the source format.
        items (`dict[str, Item]`): the catalog, de-duplicated.
        interactions (`list[Interaction]`): events in source order.
        inputs (`list[Path]`): files read, checksummed into `dataset.json`.
        notes (`dict`): importer-specific counts (rows skipped and why).
    """

    name: str
    source: str
    items: dict[str, Item]
    interactions: list[Interaction]
    inputs: list[Path]
    notes: dict = field(default_factory=dict)


def collect_items(rows: Iterable[tuple[str, Item]]) -> tuple[dict[str, Item], int]:
    """Build a catalog from `(location, item)` pairs.

    A repeated item id with identical content is collapsed (and counted); with different content it is an
    error naming both locations, because silently picking one would change the item's text.
    """
    items: dict[str, Item] = {}
    where_first: dict[str, str] = {}
    identical = 0
    for where, item in rows:
        previous = items.get(item.item_id)
        if previous is None:
            items[item.item_id] = item
            where_first[item.item_id] = where
        elif previous == item:
            identical += 1
        else:
            raise DataError(
                f"{where}: item {item.item_id!r} appears again with different content than at "
                f"{where_first[item.item_id]} (title {previous.title!r} vs {item.title!r}); keep one row per item."
            )
    if identical:
        logger.info("Collapsed %d identical duplicate item rows.", identical)
    return items, identical


_TAG = re.compile(r"<[^>]*>")
_COMMENT_OR_STYLE = re.compile(r"<!--.*?-->|<style.*?</style>|<script.*?</script>", re.DOTALL | re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Strip HTML comments, style blocks and tags, unescape entities and collapse whitespace.

    Examples:
        >>> clean_text("Fine &amp; <b>bold</b><!-- .x {color:red} -->  pen")
        'Fine & bold pen'
    """
    text = _COMMENT_OR_STYLE.sub(" ", text)
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", html.unescape(text)).strip()
