"""The README's main job: the pipeline end to end on MovieLens-100K, offline, with resumable stages.

Stages so far: prepare the data -> semantic-ID index (MiniLM text embeddings, RQ-VAE, collision-free) ->
most-popular baseline on the test split -> example users with their items' SIDs. Each finished stage is reused on
the next run when its output still validates. Later stages (SFT, constrained decoding) slot in before the
evaluation. Like `llmrec.cli`, this is a composition root and imports `tokenizer` and `eval` inside functions.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llmrec.data.dataset import Dataset, load_dataset
from llmrec.data.importers import import_recbole_movielens
from llmrec.data.io import DataError
from llmrec.data.prepare import prepare
from llmrec.data.stats import format_stats
from llmrec.sid import SemanticIdIndex, load_index

logger = logging.getLogger(__name__)

TABLE_METRICS = ("recall@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")


def prepared_dataset(folder: Path) -> Dataset:
    """Reuse `folder` if it holds a valid prepared ml-100k, else (re)build it."""
    if folder.exists():
        try:
            dataset = load_dataset(folder)
            logger.info("Reusing %s", folder)
            return dataset
        except DataError as err:
            logger.warning("Rebuilding %s: %s", folder, err)
    return prepare(import_recbole_movielens("ml-100k"), folder, overwrite=True)


def built_index(dataset: Dataset, path: Path) -> SemanticIdIndex:
    """Reuse `path` if it is a valid index of this exact catalog, else build it with the default config."""
    if path.exists():
        try:
            index = load_index(path, dataset.items)
            if index.catalog_sha256 == dataset.meta["files"]["items.jsonl"]:
                logger.info("Reusing %s", path)
                return index
            logger.warning("Rebuilding %s: it was built from another version of the catalog.", path)
        except DataError as err:
            logger.warning("Rebuilding %s: %s", path, err)
    from tokenizer.build import build_index

    return build_index(dataset, path, cache=dataset.path / "embeddings")


def format_table(rows: list[dict]) -> str:
    """Markdown table of the metrics in `TABLE_METRICS`, one row per model."""
    header = "| model | " + " | ".join(TABLE_METRICS) + " |"
    lines = [header, "|---|" + "---|" * len(TABLE_METRICS)]
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(f"{row[name]:.4f}" for name in TABLE_METRICS) + " |")
    return "\n".join(lines)


def run_demo(workdir: str | Path, num_examples: int = 3) -> list[dict]:
    """Run every stage, print the report, metrics table and example users; return the metric rows."""
    from eval.evaluate import evaluate_popularity, save_metrics
    from eval.popularity import MostPopular

    workdir = Path(workdir)
    dataset = prepared_dataset(workdir / "data" / "ml-100k")
    print(format_stats(dataset.name, dataset.meta["stats"]))
    index = built_index(dataset, workdir / "index" / "sid_index.json")
    stats = index.stats
    print(
        f"\nsemantic-ID index: {len(index.items)} items, {index.num_levels} levels x {index.codebook_sizes[0]} codes, "
        f"collisions {stats['collision_rate_before']:.2%} -> {stats['collision_rate_after']:.2%}, "
        f"code usage {[round(u, 2) for u in stats['usage']]}, perplexity {[round(p) for p in stats['perplexity']]}"
    )

    rows = []
    for exclude_seen in (True, False):
        metrics = evaluate_popularity(dataset, "test", exclude_seen=exclude_seen)
        metrics["model"] = "most-popular" + ("" if exclude_seen else " (history not excluded)")
        save_metrics(metrics, workdir / "eval" / f"popularity_test{'' if exclude_seen else '_keep_seen'}.json")
        rows.append(metrics)
    print(f"\ntest split, {rows[0]['n_users']} users, full ranking over {len(dataset.items)} items")
    print(format_table(rows))

    split = dataset.load_split()
    model = MostPopular(split, dataset.items)
    for example in split.examples("test")[:num_examples]:
        recent = [f"{dataset.items[i].title} {index.format(index.items[i])}" for i in example.history[-3:]]
        top = [dataset.items[item_id].title for item_id in model.recommend(example.seen, k=5)]
        print(f"\nuser {example.user_id}: recent history {recent}")
        print(f"  most-popular top-5: {top}")
        print(f"  held-out next item: {dataset.items[example.target].title}")
    return rows
