"""Run a recommender over a split's examples and write `metrics.json` (metrics, config, checksum, wall time)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from eval.metrics import ranking_metrics, target_ranks
from eval.popularity import MostPopular
from llmrec.data.dataset import Dataset
from llmrec.data.io import DataError, sha256_file, write_json_atomic
from llmrec.data.split import Example, SplitName

logger = logging.getLogger(__name__)

RecommendFn = Callable[[Example, int], list[str]]


def evaluate_examples(
    recommend: RecommendFn, examples: list[Example], catalog: dict, k: int = 20, desc: str = "evaluate"
) -> dict:
    """Rank the full catalog for every example with `recommend(example, k)` and compute the metrics at K<=`k`, plus
    the per-user ranks (`per_user_ranks`).

    `k` is capped at the catalog size, so tiny catalogs still evaluate.
    """
    k = min(k, len(catalog))
    ranked = [recommend(example, k) for example in tqdm(examples, desc=desc, unit="user", mininterval=1.0)]
    targets = [example.target for example in examples]
    metrics = ranking_metrics(ranked, targets, catalog, ks=(5, 10, 20))
    metrics["n_users"] = len(examples)
    return {**metrics, **per_user_ranks([example.user_id for example in examples], ranked, targets)}


def evaluate_popularity(
    dataset: Dataset, split: SplitName = "test", exclude_seen: bool = True, max_users: int | None = None
) -> dict:
    """Most-popular baseline (training counts) on the `split` examples of `dataset` (the first `max_users`)."""
    loo = dataset.load_split()
    model = MostPopular(loo, dataset.items)
    started = time.perf_counter()
    examples = loo.examples(split)[:max_users] if max_users else loo.examples(split)
    metrics = evaluate_examples(
        lambda example, k: model.recommend(example.seen, k, exclude_seen), examples, dataset.items
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


def per_user_ranks(user_ids: list[str], ranked: list[list[str]], targets: list[str]) -> dict[str, list]:
    """`user_ids` and the 1-based rank of each target in its top-k list (0 when absent), for paired comparisons of
    two models on the same users (`eval.metrics.paired_bootstrap`)."""
    return {"user_ids": list(user_ids), "target_ranks": target_ranks(ranked, targets).tolist()}


def save_metrics(metrics: dict, path: str | Path) -> None:
    write_json_atomic(path, metrics)
    logger.info("Wrote %s", path)


def evaluate_run(
    run_dir: str | Path,
    dataset: Dataset,
    split: SplitName = "test",
    k: int = 20,
    num_beams: int | None = None,
    max_users: int | None = None,
    batch_size: int = 8,
    renormalize: bool = False,
) -> dict:
    """A trained run on the `split` examples of `dataset`, through the constrained decoder (full ranking: every
    catalog item is reachable; items the user has already seen are excluded, as for the popularity baseline);
    `renormalize` as in `Recommender.recommend_batch`."""
    from llmrec.recommender import Recommender

    recommender = Recommender.from_pretrained(run_dir)
    if recommender.index.catalog_sha256 != dataset.meta["files"]["items.jsonl"]:
        raise DataError(
            f"{run_dir} was trained on another catalog than {dataset.path}; evaluate it on the dataset it was "
            "built from."
        )
    loo = dataset.load_split()
    users = loo.users[:max_users] if max_users else loo.users
    histories = [list(u.train) if split == "valid" else [*u.train, u.valid] for u in users]
    targets = [u.valid if split == "valid" else u.test for u in users]
    k = min(k, len(dataset.items))
    started = time.perf_counter()
    ranked = []
    for start in tqdm(range(0, len(histories), batch_size), desc=f"evaluate {split}", unit="batch", mininterval=2.0):
        chunk = histories[start : start + batch_size]
        recs = recommender.recommend_batch(
            chunk, k=k, num_beams=num_beams, batch_size=batch_size, renormalize=renormalize
        )
        ranked += [[rec.item_id for rec in user_recs] for user_recs in recs]
    metrics = ranking_metrics(ranked, targets, dataset.items, ks=(5, 10, 20))
    return {
        "model": "llmrec",
        "run": str(run_dir),
        "dataset": dataset.name,
        "split": split,
        **metrics,
        "n_users": len(users),
        "config": {
            "k": k,
            "num_beams": beam_width(dataset, num_beams, k),
            "exclude_seen": True,
            "renormalize": renormalize,
        },
        "run_index_sha256": sha256_file(Path(run_dir) / "sid_index.json"),
        "run_sids_sha256": recommender.index.sids_sha256(),
        "run_adapter_sha256": sha256_file(Path(run_dir) / "adapter_model.safetensors"),
        "dataset_sha256": dataset.meta["files"],
        "wall_time_s": round(time.perf_counter() - started, 3),
        **per_user_ranks([u.user_id for u in users], ranked, targets),
    }


def beam_width(dataset: Dataset, num_beams: int | None, k: int = 20) -> int:
    """The beam width `evaluate_run` decodes top-`k` with: `num_beams`, or the recommender's default of twice `k`
    (`k` capped at the catalog size)."""
    return num_beams or 2 * min(k, len(dataset.items))


def scored_alike(
    saved: dict,
    dataset: Dataset,
    split: SplitName,
    max_users: int | None = None,
    num_beams: int | None = None,
    renormalize: bool = False,
) -> bool:
    """Whether a saved llmrec result scored this `split` of `dataset` for the same users, with the same beam width
    (`beam_width`: `evaluate_run`'s default when `num_beams` is None) and the same `renormalize` (results saved
    before that option existed decoded without it)."""
    everyone = len(dataset.load_split().users)
    users = min(max_users, everyone) if max_users else everyone  # evaluate_run slices the first max_users
    return (
        saved.get("split") == split
        and saved.get("n_users") == users
        and saved.get("config", {}).get("num_beams") == beam_width(dataset, num_beams)
        and saved.get("config", {}).get("renormalize", False) == renormalize
    )


def evaluate_run_cached(
    run_dir: str | Path,
    dataset: Dataset,
    split: SplitName,
    out: str | Path,
    max_users: int | None = None,
    num_beams: int | None = None,
    renormalize: bool = False,
) -> dict:
    """`evaluate_run`, saved to `out`; an existing `out` is reused when it scored this exact adapter (checksum) on
    the same split, number of users, beam width and `renormalize`."""
    out = Path(out)
    if out.is_file():
        saved = json.loads(out.read_text(encoding="utf-8"))
        adapter = sha256_file(Path(run_dir) / "adapter_model.safetensors")
        if saved.get("run_adapter_sha256") == adapter and scored_alike(
            saved, dataset, split, max_users, num_beams, renormalize
        ):
            logger.info("Reusing %s", out)
            return saved
    metrics = evaluate_run(run_dir, dataset, split, num_beams=num_beams, max_users=max_users, renormalize=renormalize)
    save_metrics(metrics, out)
    return metrics
