"""The README's main job: the pipeline end to end on MovieLens-100K, offline, with resumable stages.

Stages: prepare the data -> semantic-ID index (MiniLM text embeddings, RQ-VAE, collision-free) -> LoRA SFT of
SmolLM2 with the CPU-budget recipe `DEMO_RECIPE` -> evaluation on the test split through the constrained decoder,
next to most-popular -> the metrics table and example users with their recent history and top-5 (titles). Each
finished stage is reused on the next run when its output still validates; a killed SFT stage resumes from its
last checkpoint. Like `llmrec.cli`, this is a composition root and imports `tokenizer` and `eval` inside
functions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from llmrec.data.dataset import Dataset, load_dataset
from llmrec.data.importers import import_recbole_movielens
from llmrec.data.io import DataError, sha256_file
from llmrec.data.prepare import prepare
from llmrec.data.stats import format_stats
from llmrec.sid import SemanticIdIndex, load_index

logger = logging.getLogger(__name__)

TABLE_METRICS = ("recall@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")

# The CPU-budget SFT recipe (scripts/configs/sft_ml100k.yaml holds the same settings for scripts/sft.py): the
# `sequence` task (every SID of a run of training items is a next-item target, so one forward pass trains ~20
# predictions), plain prompts (no chat template: fewer tokens), all 30 layers of SmolLM2 (at equal CPU time they
# rank better than the first 10: eval/results/sft_layers.md). 80 steps take about 12 minutes on 2 cores.
DEMO_RECIPE = {
    "script": {"tasks": "sequence=0", "eval_task": "sequence", "chat": False, "keep_layers": None, "max_history": 20},
    "training": {
        "max_steps": 80,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "max_length": 512,
        "train_sampling_strategy": "group_by_length",
        "logging_steps": 10,
        "save_steps": 20,
        "save_total_limit": 1,
        "eval_strategy": "no",
        "seed": 42,
    },
    "lora": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
}


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


def trained_run(dataset: Dataset, index_path: Path, out: Path, max_steps: int, model: str | None = None) -> Path:
    """Reuse `out` if it is a finished run of this dataset, index and step budget; resume it if a checkpoint is
    there; else train it. A finished run that does not match is moved aside to `<out>.stale-<time>`, not deleted."""
    from trl import ModelConfig, SFTConfig

    from llmrec.config import SFTScriptArguments
    from llmrec.training import RUN_CONFIG, last_complete_checkpoint, run_sft

    config_path = out / RUN_CONFIG
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        same = (
            config.get("index_sha256") == sha256_file(index_path)
            and config["script_args"]["dataset_dir"] == str(dataset.path)
            and config["training_args"]["max_steps"] == max_steps
        )
        if same:
            logger.info("Reusing the trained run %s", out)
            return out
        stale = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        logger.warning("%s was trained on another dataset, index or budget; moving it to %s", out, stale)
        shutil.move(out, stale)
    resume = out.is_dir() and last_complete_checkpoint(out) is not None
    script_args = SFTScriptArguments(
        dataset_dir=str(dataset.path), index_path=str(index_path), resume=resume, **DEMO_RECIPE["script"]
    )
    training_args = SFTConfig(
        output_dir=str(out),
        **{**DEMO_RECIPE["training"], "max_steps": max_steps},
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    model_args = ModelConfig(model_name_or_path=model, **DEMO_RECIPE["lora"])
    return run_sft(script_args, training_args, model_args)


def format_table(rows: list[dict]) -> str:
    """Markdown table of the metrics in `TABLE_METRICS`, one row per model."""
    header = "| model | " + " | ".join(TABLE_METRICS) + " |"
    lines = [header, "|---|" + "---|" * len(TABLE_METRICS)]
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(f"{row[name]:.4f}" for name in TABLE_METRICS) + " |")
    return "\n".join(lines)


def run_demo(
    workdir: str | Path,
    num_examples: int = 3,
    sft_steps: int = DEMO_RECIPE["training"]["max_steps"],
    eval_users: int | None = None,
    model: str | None = None,
) -> list[dict]:
    """Run every stage, print the report, metrics table and example users; return the metric rows.

    `sft_steps` is the SFT budget (optimizer steps of 8 rows), `eval_users` evaluates only the first N test users
    (default: all), `model` replaces the default SmolLM2 (any HF causal LM name or folder).
    """
    from eval.evaluate import evaluate_popularity, evaluate_run_cached, save_metrics
    from llmrec.recommender import Recommender

    started = time.perf_counter()
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

    print(f"\nSFT: {sft_steps} steps of the CPU recipe {DEMO_RECIPE['script']} (progress below)")
    run_dir = trained_run(dataset, workdir / "index" / "sid_index.json", workdir / "run", sft_steps, model)
    log = json.loads((run_dir / "training_log.json").read_text(encoding="utf-8"))
    print(f"trained run: {run_dir} ({log['train_seconds'] / 60:.1f} CPU-minutes of training)")

    rows = [evaluate_run_cached(run_dir, dataset, "test", workdir / "eval" / "llmrec_test.json", eval_users)]
    rows[0]["model"] = "llmrec (SmolLM2, demo budget)" if model is None else f"llmrec ({model})"
    for exclude_seen in (True, False):
        metrics = evaluate_popularity(dataset, "test", exclude_seen=exclude_seen, max_users=eval_users)
        metrics["model"] = "most-popular" + ("" if exclude_seen else " (history not excluded)")
        save_metrics(metrics, workdir / "eval" / f"popularity_test{'' if exclude_seen else '_keep_seen'}.json")
        rows.append(metrics)
    print(f"\ntest split, {rows[0]['n_users']} users, full ranking over {len(dataset.items)} items")
    print(format_table(rows))

    recommender = Recommender.from_pretrained(run_dir)
    examples = dataset.load_split().examples("test")[:num_examples]
    recommended = recommender.recommend_batch([list(example.history) for example in examples], k=5)
    for example, recs in zip(examples, recommended, strict=True):
        recent = [f"{dataset.items[i].title} {index.format(index.items[i])}" for i in example.history[-3:]]
        print(f"\nuser {example.user_id}: recent history {recent}")
        print(f"  llmrec top-5: {[rec.title for rec in recs]}")
        print(f"  held-out next item: {dataset.items[example.target].title}")
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} minutes; outputs in {workdir}")
    return rows
