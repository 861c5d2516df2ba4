"""Semantic IDs: code tuples <-> token strings, and the `sid_index.json` artifact that maps items to them.

A SID is a tuple of codes, one per level, e.g. `(12, 3, 200)`, written as tokens `<a_12><b_3><c_200>`: one LM
token per (level, code). `sid_index.json` is everything inference needs about the item tokenizer:

    {"format_version": 1, "level_names": ["a", "b", "c"], "codebook_sizes": [256, 256, 256],
     "token_template": "<{level}_{code}>", "catalog_sha256": "...", "source": {...encoder and quantizer config},
     "stats": {...collision rates, usage}, "items": {"item_id": [12, 3, 200], ...}}

`load_index` validates it: codes are integer lists of equal length, inside each level's codebook, unique across
items, and (given a catalog) cover exactly the catalog's items.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

from llmrec.data.io import DataError, read_versioned_json, write_json_atomic

INDEX_FORMAT_VERSION = 1
DEFAULT_TOKEN_TEMPLATE = "<{level}_{code}>"
DEFAULT_LEVEL_NAMES = ("a", "b", "c", "d", "e", "f", "g", "h")

Sid = tuple[int, ...]


@dataclass
class SemanticIdIndex:
    """Item id -> SID map plus what is needed to render and check SIDs.

    Args:
        items (`dict[str, tuple[int, ...]]`): SID of every item, in catalog order.
        codebook_sizes (`tuple[int, ...]`): number of codes at each level.
        level_names (`tuple[str, ...]`, *optional*): the `{level}` part of each level's tokens.
        token_template (`str`, *optional*, defaults to `"<{level}_{code}>"`): token of one (level, code).
        catalog_sha256 (`str`, *optional*): checksum of the catalog text the index was built from.
        source (`dict`, *optional*): encoder, quantizer and collision-handling config.
        stats (`dict`, *optional*): collision rates, code usage and similar diagnostics.
    """

    items: dict[str, Sid]
    codebook_sizes: tuple[int, ...]
    level_names: tuple[str, ...] = ()
    token_template: str = DEFAULT_TOKEN_TEMPLATE
    catalog_sha256: str = ""
    source: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codebook_sizes = tuple(self.codebook_sizes)
        if not self.level_names:
            if self.num_levels > len(DEFAULT_LEVEL_NAMES):
                raise ValueError(f"{self.num_levels} levels need explicit level_names (defaults cover 8).")
            self.level_names = DEFAULT_LEVEL_NAMES[: self.num_levels]
        self.level_names = tuple(self.level_names)
        if len(self.level_names) != self.num_levels:
            raise ValueError(f"{len(self.level_names)} level_names for {self.num_levels} levels.")

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def token(self, level: int, code: int) -> str:
        """The token string of `code` at `level`.

        Examples:
            >>> SemanticIdIndex({}, (4, 4)).token(1, 3)
            '<b_3>'
        """
        return self.token_template.format(level=self.level_names[level], code=code)

    def sid_tokens(self, sid: Sid) -> list[str]:
        return [self.token(level, code) for level, code in enumerate(sid)]

    def format(self, sid: Sid) -> str:
        """`(12, 3)` -> `"<a_12><b_3>"`.

        Examples:
            >>> SemanticIdIndex({}, (16, 4)).format((12, 3))
            '<a_12><b_3>'
        """
        return "".join(self.sid_tokens(sid))

    def parse(self, text: str) -> Sid:
        """Inverse of `format`; raises `ValueError` on anything that is not exactly one SID of this index.

        Examples:
            >>> SemanticIdIndex({}, (16, 4)).parse("<a_12><b_3>")
            (12, 3)
        """
        pattern = "".join(
            re.escape(self.token_template.format(level=name, code="\0")).replace("\0", r"(0|[1-9][0-9]*)")
            for name in self.level_names
        )
        match = re.fullmatch(pattern, text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not a {self.num_levels}-level SID like {self.format((0,) * self.num_levels)!r}."
            )
        sid = tuple(int(group) for group in match.groups())
        for level, code in enumerate(sid):
            if code >= self.codebook_sizes[level]:
                raise ValueError(
                    f"{text!r}: code {code} at level {level} is outside 0..{self.codebook_sizes[level] - 1}."
                )
        return sid

    def all_tokens(self) -> list[str]:
        """Every (level, code) token, level by level: the tokens to add to an LM vocabulary."""
        return [self.token(level, code) for level, size in enumerate(self.codebook_sizes) for code in range(size)]

    def item_of(self) -> dict[Sid, str]:
        """SID -> item id (SIDs are unique, so this inverts `items`)."""
        return {sid: item_id for item_id, sid in self.items.items()}

    def sids_sha256(self) -> str:
        """Checksum of what the index means, not how it was built: tokens and every item's SID, in catalog order.
        Two builds that assign the same SIDs agree here even though their files differ (timings in `stats`), so a
        result can be tied to its SIDs after the index file is gone or rebuilt."""
        meaning = {
            "codebook_sizes": list(self.codebook_sizes),
            "level_names": list(self.level_names),
            "token_template": self.token_template,
            "items": [[item_id, [int(code) for code in sid]] for item_id, sid in self.items.items()],
        }
        return hashlib.sha256(json.dumps(meaning, separators=(",", ":")).encode("utf-8")).hexdigest()

    def to_json(self) -> dict:
        return {
            "format_version": INDEX_FORMAT_VERSION,
            "num_levels": self.num_levels,
            "codebook_sizes": list(self.codebook_sizes),
            "level_names": list(self.level_names),
            "token_template": self.token_template,
            "catalog_sha256": self.catalog_sha256,
            "source": self.source,
            "stats": self.stats,
            "items": {item_id: [int(code) for code in sid] for item_id, sid in self.items.items()},
        }


def validate_codes(items: dict[str, Sid], codebook_sizes: tuple[int, ...], where: str) -> None:
    """Raise `DataError` unless every SID has one in-range integer code per level and no two items share a SID."""
    owner: dict[Sid, str] = {}
    for item_id, sid in items.items():
        if len(sid) != len(codebook_sizes):
            raise DataError(
                f"{where}: item {item_id!r} has {len(sid)} codes, the index has {len(codebook_sizes)} levels."
            )
        for level, code in enumerate(sid):
            if not isinstance(code, Integral) or isinstance(code, bool) or not 0 <= code < codebook_sizes[level]:
                raise DataError(
                    f"{where}: item {item_id!r} code {code!r} at level {level} is outside "
                    f"0..{codebook_sizes[level] - 1}."
                )
        if sid in owner:
            raise DataError(
                f"{where}: items {owner[sid]!r} and {item_id!r} share the SID {list(sid)}; SIDs must be unique. "
                "Rebuild the index (collision resolution runs at build time)."
            )
        owner[sid] = item_id


def check_covers_catalog(index: SemanticIdIndex, catalog: Iterable[str], where: str) -> None:
    """Raise `DataError` unless the index holds exactly the catalog's items."""
    catalog_ids = set(catalog)
    missing = [item_id for item_id in catalog_ids if item_id not in index.items]
    extra = [item_id for item_id in index.items if item_id not in catalog_ids]
    if missing:
        raise DataError(
            f"{where}: {len(missing)} catalog item(s) have no SID (e.g. {sorted(missing)[:5]}); add them with "
            "`llmrec index add` or rebuild the index."
        )
    if extra:
        raise DataError(
            f"{where}: {len(extra)} indexed item(s) are not in the catalog (e.g. {sorted(extra)[:5]}); the index "
            "belongs to another dataset."
        )


def save_index(index: SemanticIdIndex, path: str | Path) -> None:
    """Validate and write `sid_index.json` atomically."""
    validate_codes(index.items, index.codebook_sizes, str(path))
    write_json_atomic(path, index.to_json())


def load_index(path: str | Path, catalog: Iterable[str] | None = None) -> SemanticIdIndex:
    """Read and validate `sid_index.json`; with `catalog`, also check that it covers exactly those item ids."""
    path = Path(path)
    payload = read_versioned_json(
        path,
        INDEX_FORMAT_VERSION,
        missing_fix=f"build it with `llmrec index build --dataset DIR --out {path}`",
        fix="rebuild the index",
    )
    for key in ("codebook_sizes", "items", "token_template", "level_names"):
        if key not in payload:
            raise DataError(f"{path}: missing key {key!r}; the file is not a complete sid_index.json.")
    sizes = payload["codebook_sizes"]
    if not sizes or not all(isinstance(size, int) and size > 0 for size in sizes):
        raise DataError(f"{path}: codebook_sizes {sizes!r} must be a non-empty list of positive integers.")
    if not isinstance(payload["items"], dict) or not payload["items"]:
        raise DataError(f"{path}: 'items' must be a non-empty object item_id -> codes.")
    items = {}
    for item_id, codes in payload["items"].items():
        if not isinstance(codes, list):
            raise DataError(f"{path}: item {item_id!r} codes {codes!r} must be a list of integers.")
        items[item_id] = tuple(codes)
    validate_codes(items, tuple(sizes), str(path))
    if len(payload["level_names"]) != len(sizes):
        raise DataError(
            f"{path}: {len(payload['level_names'])} level_names for {len(sizes)} codebook_sizes; one name per level."
        )
    index = SemanticIdIndex(
        items=items,
        codebook_sizes=tuple(sizes),
        level_names=tuple(payload["level_names"]),
        token_template=payload["token_template"],
        catalog_sha256=payload.get("catalog_sha256", ""),
        source=payload.get("source", {}),
        stats=payload.get("stats", {}),
    )
    if catalog is not None:
        check_covers_catalog(index, catalog, str(path))
    return index
