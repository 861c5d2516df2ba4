r"""Choose between SFT recipes on the validation split, before the chosen one is scored on test.

    python scripts/bench_recipes_valid.py --dataset data/ml-100k \
        --sft-config scripts/configs/sft_ml100k_cf_bf16.yaml=44 scripts/configs/sft_ml100k_cf_shift.yaml=44

Each `--sft-config RECIPE.yaml[=SEEDS]` is trained exactly as `scripts/bench_quality.py` trains it (same run folder
`runs/quality/<dataset>/<recipe>-seed<S>`, same overrides: reused when finished, resumed when killed) and scored on
the validation split through the constrained decoder (all users, history excluded; cached next to the test results
as `eval/results/raw/<dataset>/llmrec_<recipe>-seed<S>_valid.json`). The first recipe is the reference: every other
row gets its NDCG@10 minus the reference's per user (each averaged over its seeds), paired bootstrap 95 % interval.
A recipe that wins here is then run through bench_quality.py, which reuses the same trained folders for the test
split. Writes `eval/results/recipes_valid_<dataset>.json` and `.md` (`--tag T`: `recipes_valid_<dataset>_<T>`, for a
screen whose reference is another seed or index than the saved table's).
"""

import argparse
import logging
from pathlib import Path

from bench_quality import (  # scripts/ is on sys.path when this file runs as a script
    MINUTES_NOTE,
    SHOWN,
    llmrec_model,
    recipe_with_seeds,
    save_bench,
    tag_argument,
    tagged_stem,
    versus,
    without_per_user,
)

from eval.evaluate import evaluate_popularity
from llmrec.data.dataset import load_dataset


def markdown(result: dict) -> str:
    models = result["models"]
    pop = result["popularity_valid"]
    lines = [
        f"Dataset `{result['dataset']}`, validation split, {pop['n_users']} users, full ranking over "
        f"{result['n_items']} items, history excluded; mean ± std over the seeds (a single seed shows ± 0). "
        f"`vs first`: NDCG@10 minus `{models[0]['name']}`'s per user, paired bootstrap 95 % CI. " + MINUTES_NOTE,
        "",
        "| recipe | seeds | " + " | ".join(SHOWN) + " | training CPU-min | vs first |",
        "|---|---|" + "---|" * (len(SHOWN) + 2),
    ]
    for model in models:
        cells = [f"{model['summary'][n]['mean']:.4f} ± {model['summary'][n]['std']:.4f}" for n in SHOWN]
        diff = model.get("ndcg@10_vs_first")
        versus = f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else ""
        seeds = ",".join(str(row["seed"]) for row in model["per_seed"])
        lines.append(
            f"| {model['name']} | {seeds} | " + " | ".join(cells) + f" | {model['train_cpu_minutes']} | {versus} |"
        )
    lines.append("| most-popular | - | " + " | ".join(f"{pop[n]:.4f}" for n in SHOWN) + " | - | |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def result_name(dataset: str, tag: str | None) -> str:
    """File stem under eval/results: one table per dataset, or per tagged screen so it keeps the others'."""
    return tagged_stem(f"recipes_valid_{dataset}", tag)


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    models = [
        llmrec_model(config, seeds or args.seeds, dataset, args.runs, args.num_beams, split="valid")
        for config, seeds in args.sft_config
    ]
    versus(models[0], models[1:], "ndcg@10_vs_first")
    without_per_user(models)
    result = {
        "dataset": dataset.name,
        "split": "valid",
        "n_items": len(dataset.items),
        "dataset_sha256": dataset.meta["files"],
        "models": models,
        "popularity_valid": evaluate_popularity(dataset, "valid"),
        "note": args.note,
    }
    save_bench(result_name(dataset.name, args.tag), result, markdown(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument(
        "--sft-config",
        type=recipe_with_seeds,
        nargs="+",
        required=True,
        help="scripts/sft.py YAML(s), the first is the reference; RECIPE.yaml=42,43 gives that recipe its own seeds",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="seeds of recipes listed without '='")
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"), help="where llmrec runs are trained")
    parser.add_argument("--num-beams", type=int, default=None, help="decoder beams (default 2 x 20)")
    parser.add_argument(
        "--tag", type=tag_argument, help="suffix of the result files, so one screen does not replace another's table"
    )
    parser.add_argument("--note", help="a remark printed under the table (e.g. about machine load)")
    main(parser.parse_args())
