"""Imported data -> cleaned, ordered, split dataset folder. The one pipeline every importer feeds."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from llmrec.version import __version__
from llmrec.data.dataset import Dataset, save_dataset
from llmrec.data.filtering import (
    MIN_LOO_INTERACTIONS,
    DuplicatePolicy,
    FilterReport,
    check_short_users,
    drop_unknown_items,
    handle_duplicates,
    k_core,
    order_chronologically,
)
from llmrec.data.importers.common import RawData
from llmrec.data.io import DataError, atomic_dir, sha256_file
from llmrec.data.split import leave_one_out
from llmrec.data.stats import dataset_stats
from llmrec.schemas import FORMAT_VERSION

logger = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """
    > Parameters that control cleaning and splitting

    Args:
        min_user_interactions (`int`, *optional*, defaults to `3`): k-core threshold for users; at least 3, the
            minimum for leave-one-out (one training, one validation, one test item).
        min_item_interactions (`int`, *optional*, defaults to `0`): k-core threshold for items. With 0 the whole
            catalog is kept, including items nobody interacted with; above 0 such items leave the catalog.
        duplicates (`str`, *optional*, defaults to `"keep"`): what to do with a (user, item) pair seen at
            several times: `"keep"` all, keep the `"first"` or the `"last"`. Identical rows always collapse.
        max_history (`int`, *optional*, defaults to `20`): most recent items fed to a model as history.
        strict (`bool`, *optional*, defaults to `False`): raise instead of dropping interactions on unknown
            items and users with fewer than 3 interactions.
    """

    min_user_interactions: int = MIN_LOO_INTERACTIONS
    min_item_interactions: int = 0
    duplicates: DuplicatePolicy = "keep"
    max_history: int = 20
    strict: bool = False

    def __post_init__(self) -> None:
        if self.min_user_interactions < MIN_LOO_INTERACTIONS:
            raise ValueError(
                f"min_user_interactions must be >= {MIN_LOO_INTERACTIONS} for leave-one-out, "
                f"got {self.min_user_interactions}."
            )
        if self.min_item_interactions < 0:
            raise ValueError(f"min_item_interactions must be >= 0, got {self.min_item_interactions}.")
        if self.duplicates not in ("keep", "first", "last"):
            raise ValueError(f"duplicates must be 'keep', 'first' or 'last', got {self.duplicates!r}.")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}.")


def prepare(raw: RawData, out: str | Path, config: PrepareConfig | None = None, overwrite: bool = False) -> Dataset:
    """Clean `raw`, split it leave-one-out and write the dataset folder `out` atomically.

    Steps: drop (or, under `strict`, reject) interactions on unknown items; order each user's events by time
    (stable); collapse duplicates; k-core filter; split; compute stats; write.
    """
    config = config or PrepareConfig()
    report = FilterReport()
    source = ", ".join(str(path) for path in raw.inputs) or raw.name
    rows = drop_unknown_items(raw.interactions, raw.items, config.strict, report, source)
    rows = order_chronologically(rows)
    rows = handle_duplicates(rows, config.duplicates, report)
    if config.strict:
        check_short_users(rows, source)
    rows = k_core(rows, config.min_user_interactions, config.min_item_interactions, report)
    if not rows:
        raise DataError(
            f"{source}: no interactions left after filtering (min_user_interactions="
            f"{config.min_user_interactions}, min_item_interactions={config.min_item_interactions}); lower them."
        )
    if report.users_dropped:
        logger.warning("Dropped %d users below %d interactions.", report.users_dropped, config.min_user_interactions)
    items = raw.items
    if config.min_item_interactions > 0:
        kept_ids = {row.item_id for row in rows}
        items = {item_id: item for item_id, item in raw.items.items() if item_id in kept_ids}
    dataset = Dataset(items=items, interactions=rows, meta={})
    split = leave_one_out(dataset.sequences(), config.max_history)
    stats = dataset_stats(items, rows)
    dataset.meta = {
        "format_version": FORMAT_VERSION,
        "name": raw.name,
        "source": raw.source,
        "llmrec_version": __version__,
        "counts": {key: stats[key] for key in ("users", "items", "interactions")},
        "inputs": [{"path": str(path), "sha256": sha256_file(path)} for path in raw.inputs],
        "import_notes": raw.notes,
        "filtering": {**asdict(report), "config": asdict(config)},
        "split": {"protocol": "leave-one-out", "max_history": config.max_history},
        "stats": stats,
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_dataset(dataset, tmp, split)
    dataset.path = Path(out)
    logger.info("Wrote %s (%d users, %d items).", out, stats["users"], stats["items"])
    return dataset
