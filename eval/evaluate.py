"""Run a recommender over a split's examples and write `metrics.json` (metrics, config, checksum, wall time)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from eval.metrics import ranking_metrics
from eval.popularity import MostPopular
from llmrec.data.dataset import Dataset
from llmrec.data.io import write_json_atomic
from llmrec.data.split import Example, SplitName

logger = logging.getLogger(__name__)

RecommendFn = Callable[[Example, int], list[str]]


def evaluate_examples(
    recommend: RecommendFn, examples: list[Example], catalog: dict, k: int = 20, desc: str = "evaluate"
) -> dict[str, float]:
    """Rank the full catalog for every example with `recommend(example, k)` and compute the metrics at K<=`k`.

    `k` is capped at the catalog size, so tiny catalogs still evaluate.
    """
    k = min(k, len(catalog))
    ranked = [recommend(example, k) for example in tqdm(examples, desc=desc, unit="user", mininterval=1.0)]
    metrics = ranking_metrics(ranked, [example.target for example in examples], catalog, ks=(5, 10, 20))
    metrics["n_users"] = len(examples)
    return metrics


def evaluate_popularity(dataset: Dataset, split: SplitName = "test", exclude_seen: bool = True) -> dict:
    """Most-popular baseline (training counts) on the `split` examples of `dataset`."""
    loo = dataset.load_split()
    model = MostPopular(loo, dataset.items)
    started = time.perf_counter()
    metrics = evaluate_examples(
        lambda example, k: model.recommend(example.seen, k, exclude_seen), loo.examples(split), dataset.items
    )
    return {
        "model": "most-popular",
        "dataset": dataset.name,
        "split": split,
        **metrics,
        "config": {"exclude_seen": exclude_seen, "max_history": loo.max_history},
        "dataset_sha256": dataset.meta["files"],
        "wall_time_s": round(time.perf_counter() - started, 3),
    }


def save_metrics(metrics: dict, path: str | Path) -> None:
    write_json_atomic(path, metrics)
    logger.info("Wrote %s", path)
