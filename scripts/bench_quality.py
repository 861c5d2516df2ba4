r"""Quality benchmark: most-popular, SASRec (RecBole 1.2.1) and llmrec on the same split, several seeds.

    python scripts/bench_quality.py --dataset data/ml-100k --sft-config scripts/configs/sft_ml100k.yaml
    python scripts/bench_quality.py --dataset data/amazon-office \
        --sft-config scripts/configs/sft_office.yaml scripts/configs/sft_office_3ep.yaml   # one row per recipe
    python scripts/bench_quality.py --dataset data/amazon-office --llmrec-seeds 42 \
        --sft-config scripts/configs/sft_office.yaml scripts/configs/sft_office_5ep.yaml=42,43,44  # per-recipe seeds
    python scripts/bench_quality.py --dataset data/ml-100k --sasrec-max-seconds none ...  # SASRec to early stop
    python scripts/bench_quality.py --readme    # only regenerate the README's results section

For each seed: SASRec is trained (until RecBole's early stopping, or the epoch that crosses `--sasrec-max-seconds`,
600 s by default; its row says which) and scored in our harness (history items masked, like every row), and an
llmrec run is trained with `scripts/sft.py --config SFT_CONFIG --seed S` (reused if already finished, resumed if
killed) and scored through the constrained decoder. Every per-seed result is cached under `eval/results/raw/`, so a
rerun only computes what is missing. Writes `eval/results/quality_<dataset>.json` (per-seed metrics, mean and
standard deviation, training CPU-minutes, configs and checksums), `quality_<dataset>.md` and
`quality_<dataset>.png`, then regenerates the README section between the `results:quality` markers from every
`quality_*.json`. Each llmrec row is also compared with SASRec user by user (NDCG@10, paired bootstrap 95 %
interval) when both have per-user ranks in their raw files (results cached before those were stored lack them:
delete such a raw file to recompute it).
"""

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from eval.evaluate import evaluate_popularity, evaluate_run_cached, save_metrics, scored_alike
from eval.metrics import ndcg_gains, paired_bootstrap
from llmrec.data.dataset import load_dataset
from llmrec.data.io import write_json_atomic, write_text_atomic

RESULTS = Path("eval/results")
REPO = Path(__file__).resolve().parents[1]
SHOWN = ("recall@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")
README_START, README_END = "<!-- results:quality:start -->", "<!-- results:quality:end -->"


def cached(path: Path, compute, valid=lambda saved: True) -> dict:
    """Read `path` if it exists and `valid(saved)`, else compute, save and return."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if valid(saved):
            logging.info("Reusing %s", path)
            return saved
    result = compute()
    save_metrics(result, path)
    return result


def sasrec_cache_matches(saved: dict, dataset_files: dict, max_seconds: float | None) -> bool:
    """A cached SASRec result is reused only for the same split files and the same training budget (a different
    `--sasrec-max-seconds` trains a different number of epochs)."""
    same_budget = saved["config"].get("max_seconds") == max_seconds
    if not same_budget:
        logging.info(
            "Cached SASRec result trained for max_seconds=%s, not %s: recomputing.",
            saved["config"].get("max_seconds"),
            max_seconds,
        )
    return saved["dataset_sha256"] == dataset_files and same_budget


DEFAULT_SASREC_SECONDS = 600.0


def sasrec_budget(text: str) -> float | None:
    """Parse `--sasrec-max-seconds`: seconds per seed, or `none` to train until RecBole's early stopping ends it."""
    if text.strip().lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"the SASRec budget must be positive seconds or 'none', got {text!r}")
    return seconds


def sasrec_result_name(seed: int, max_seconds: float | None) -> str:
    """Raw file of one SASRec seed: `sasrec_seed42.json` for the default budget, `sasrec_seed42_1800s.json` or
    `sasrec_seed42_uncapped.json` for another, so results of different budgets are kept side by side."""
    if max_seconds == DEFAULT_SASREC_SECONDS:
        return f"sasrec_seed{seed}.json"
    budget = "uncapped" if max_seconds is None else f"{max_seconds:g}s"
    return f"sasrec_seed{seed}_{budget}.json"


def sasrec_row_name(rows: list[dict], max_seconds: float | None) -> str:
    """The SASRec row's name says whether every seed ended by early stopping or the wall-clock cap cut one short,
    since a cut baseline is a weaker bar."""
    cut = max_seconds is not None and any(row["train_time_s"] >= max_seconds for row in rows)
    return f"SASRec (RecBole, cut at {max_seconds:g} s)" if cut else "SASRec (RecBole, early-stopped)"


def recipe_with_seeds(text: str) -> tuple[Path, list[int] | None]:
    """Parse one `--sft-config` value: `RECIPE.yaml` (the seeds of `--llmrec-seeds`) or `RECIPE.yaml=42,43,44`
    (these seeds for this recipe only), so one call can keep every recipe's row while adding seeds to one."""
    path, sep, seeds = text.rpartition("=")
    if not sep:
        return Path(text), None
    try:
        parsed = [int(seed) for seed in seeds.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sft-config {text!r}: the seeds after '=' must be comma-separated integers, e.g. {path}=42,43,44"
        ) from None
    if len(set(parsed)) != len(parsed):
        raise argparse.ArgumentTypeError(f"--sft-config {text!r}: a seed is listed twice")
    return Path(path), parsed


def recipe_index(recipe: dict, dataset_dir: Path) -> Path:
    """The index a recipe trains on, looked up in the benchmarked dataset's folder: a recipe naming
    `data/ml-100k/sid_index_cf.json` uses `<dataset_dir>/sid_index_cf.json`; one naming none, `sid_index.json`."""
    return dataset_dir / Path(recipe.get("index_path") or "sid_index.json").name


def trained_run(config: Path, out: Path, overrides: list[str], script: str = "sft.py") -> Path:
    """Train (or resume, or reuse) one llmrec run with a documented entry point, `scripts/SCRIPT --config CONFIG
    --output_dir OUT *overrides` (sft.py or grpo.py), in a child process. Also used by bench_layers.py and
    bench_grpo.py."""
    if (out / "run_config.json").is_file():
        return out
    command = [sys.executable, str(REPO / "scripts" / script), "--config", str(config)]
    command += ["--output_dir", str(out), *overrides]
    if out.is_dir() and any(out.glob("checkpoint-*")):
        command.append("--resume")
    logging.info("Training %s", " ".join(command))
    subprocess.run(command, check=True)
    return out


def valid_arm(config: Path, out: Path, overrides: list[str], dataset, shown: tuple[str, ...]) -> tuple[dict, dict]:
    """Train (or reuse) one arm with `trained_run` and score it on the validation split through the constrained
    decoder (cached in the run's `valid_metrics.json`); returns the row fields every validation bench reports
    (`train_minutes`, `final_train_loss`, the `shown` metrics under `valid`, `run`) and the run's training log.
    Used by bench_layers.py, bench_sid_modalities.py and bench_base_dtype.py."""
    run = trained_run(config, out, overrides)
    saved = evaluate_run_cached(run, dataset, "valid", run / "valid_metrics.json")
    log = json.loads((run / "training_log.json").read_text(encoding="utf-8"))
    fields = {
        "train_minutes": round(run_train_seconds(run) / 60, 1),
        "final_train_loss": log["metrics"]["train_loss"],
        "valid": {key: saved[key] for key in shown},
        "run": str(run),
    }
    return fields, log


def tagged_stem(prefix: str, tag: str | None) -> str:
    """`prefix`, or `prefix_<tag>` for a bench run that must not overwrite the untagged table (another run, seed or
    index); the tag becomes part of a file name, so only letters, digits, '-' and '_' are accepted."""
    if tag and not tag.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--tag {tag!r}: use letters, digits, '-' or '_' (it becomes part of a file name)")
    return prefix + (f"_{tag}" if tag else "")


def tag_argument(text: str) -> str:
    """argparse `type` of a bench's `--tag`: checked by `tagged_stem`'s rule when the command line is read, so a bad
    tag fails at once instead of after the bench's training or decoding."""
    try:
        tagged_stem("", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def save_bench(stem: str, result: dict, text: str) -> None:
    """Write a validation bench's result to `eval/results/<stem>.json` (atomically) and its table to `<stem>.md`, and
    print the table. Used by the validation benches (bench_layers.py, bench_beams.py, bench_recipes_valid.py, ...)."""
    write_json_atomic(RESULTS / f"{stem}.json", result)
    write_text_atomic(RESULTS / f"{stem}.md", text)
    print(text)


def run_train_seconds(run: Path) -> float:
    """A run's training wall seconds over all its resumed segments; refuses a run whose time is only partly known
    (resumed from a checkpoint without `train_clock.json`), rather than report too low a cost."""
    log = json.loads((run / "training_log.json").read_text(encoding="utf-8"))
    if log.get("timed_from_step", 0):
        raise SystemExit(
            f"{run}/training_log.json counts training time from step {log['timed_from_step']} only (resumed from a "
            "checkpoint without train_clock.json): its cost is unknown. Retrain it, or add that checkpoint's "
            "measured time to its train_clock.json before resuming."
        )
    return log["train_seconds"]


def reusable_without_run(saved: dict, dataset, num_beams: int | None, split: str = "test") -> bool:
    """Whether a cached llmrec result can stand in for its deleted run folder: it scored this dataset's exact split
    files on `split` for every user with this beam width, and it carries its run's training time. (With the run
    present, `evaluate_run_cached` checks the adapter checksum instead.)"""
    return (
        saved.get("dataset_sha256") == dataset.meta["files"]
        and scored_alike(saved, dataset, split, num_beams=num_beams)
        and "train_seconds" in saved
    )


def llmrec_seed_result(
    config: Path, run: Path, overrides: list[str], dataset, raw_path: Path, num_beams: int | None, split: str = "test"
) -> dict:
    """`split` metrics and training seconds of one llmrec recipe and seed. The run folder is trained (or resumed, or
    reused) and scored, and its training time is saved into the raw result; if the folder is gone (a new machine)
    but a matching raw result holds its scores and training time, that result is reused instead of retraining
    for an hour. Delete the raw file to retrain."""
    if not (run / "run_config.json").is_file() and raw_path.is_file():
        saved = json.loads(raw_path.read_text(encoding="utf-8"))
        if reusable_without_run(saved, dataset, num_beams, split):
            logging.warning(
                "%s is gone: reusing its scores and training time from %s (adapter sha256 %s).",
                run, raw_path, saved.get("run_adapter_sha256"),
            )  # fmt: skip
            return saved
    run = trained_run(config, run, overrides)
    row = evaluate_run_cached(run, dataset, split, raw_path, num_beams=num_beams)
    seconds = run_train_seconds(run)
    if row.get("train_seconds") != seconds:
        row["train_seconds"] = seconds
        save_metrics(row, raw_path)
    return row


def llmrec_model(
    sft_config: Path, seeds: list[int], dataset, runs: Path, num_beams: int | None, split: str = "test"
) -> dict:
    """One llmrec row: `sft_config` trained (or reused) once per seed as `<runs>/<dataset>/<recipe>-seed<S>` and
    scored on `split` (raw results cached as `eval/results/raw/<dataset>/llmrec_<recipe>-seed<S>[_valid].json`).
    Shared with bench_recipes_valid.py, so a recipe chosen on validation is the very run scored on test."""
    recipe = yaml.safe_load(sft_config.read_text())
    raw = RESULTS / "raw" / dataset.name
    rows, train_seconds = [], []
    for seed in seeds:
        name = f"{sft_config.stem}-seed{seed}"  # one run per recipe and seed
        overrides = ["--seed", str(seed), "--prompts_seed", str(seed), "--dataset_dir", str(dataset.path)]
        overrides += ["--index_path", str(recipe_index(recipe, dataset.path))]
        suffix = "" if split == "test" else f"_{split}"
        row = llmrec_seed_result(
            sft_config, runs / dataset.name / name, overrides, dataset, raw / f"llmrec_{name}{suffix}.json",
            num_beams, split,
        )  # fmt: skip
        rows.append({**row, "seed": seed})
        train_seconds.append(row["train_seconds"])
    layers = recipe.get("keep_layers") or "all"
    return {
        "name": f"llmrec `{sft_config.stem}` ({recipe.get('model_name_or_path', 'smollm2')}, {layers} layers)",
        "per_seed": rows,
        "summary": summary(rows),
        "train_cpu_minutes": round(statistics.fmean(train_seconds) / 60, 1),
        "sft_config": recipe,
        "sft_config_path": str(sft_config),
    }


def summary(rows: list[dict]) -> dict:
    """Mean and sample standard deviation of every metric over seeds."""
    out = {}
    for name in SHOWN:
        values = [row[name] for row in rows]
        out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


PER_USER = ("user_ids", "target_ranks")  # kept in eval/results/raw/, left out of the summary JSON


def mean_user_gains(rows: list[dict]) -> tuple[list[str], np.ndarray] | None:
    """Per-user NDCG@10 averaged over a model's seeds, with the user order; `None` if a row lacks per-user ranks
    (cached before they were stored: delete that raw file to recompute it)."""
    if not all("target_ranks" in row for row in rows):
        return None
    users = rows[0]["user_ids"]
    if any(row["user_ids"] != users for row in rows):
        raise ValueError("per-seed results list different users; re-run them on the same split.")
    return users, np.mean([ndcg_gains(np.array(row["target_ranks"]), 10) for row in rows], axis=0)  # (U,)


def versus(reference: dict, models: list[dict], key: str) -> None:
    """Add `key` to each of `models`: its per-user NDCG@10 minus `reference`'s (each averaged over its seeds), mean
    and paired-bootstrap 95 % interval over users. Skipped for a model (or all, for the reference) without per-user
    ranks or scored on other users. The seed spread is the table's ± std. Shared with bench_recipes_valid.py."""
    base = mean_user_gains(reference["per_seed"])
    for model in models:
        ours = mean_user_gains(model["per_seed"])
        if base is None or ours is None or ours[0] != base[0]:
            continue
        model[key] = paired_bootstrap(base[1], ours[1])


def versus_sasrec(models: list[dict]) -> None:
    """`versus` SASRec's row for every llmrec model, as `ndcg@10_vs_sasrec`."""
    sasrec = next((m for m in models if m["name"].startswith("SASRec")), None)
    if sasrec is not None:
        versus(sasrec, [m for m in models if m["name"].startswith("llmrec")], "ndcg@10_vs_sasrec")


def ndcg10_change(before: dict, after: dict) -> dict | None:
    """Paired bootstrap of the per-user NDCG@10 change from `before` to `after` (two evaluations of the same users),
    or None when either evaluation predates per-user ranks (re-run it to get the interval). Used by bench_grpo.py
    and bench_beams.py."""
    if "target_ranks" not in before or "target_ranks" not in after:
        return None
    if before["user_ids"] != after["user_ids"]:
        raise SystemExit("the two evaluations scored different users; delete their raw files and re-run.")
    return paired_bootstrap(ndcg_gains(before["target_ranks"], 10), ndcg_gains(after["target_ranks"], 10))


def without_per_user(models: list[dict]) -> None:
    """Drop the per-user fields (kept in eval/results/raw/) from every model's per-seed rows before the summary
    JSON is written."""
    for model in models:
        model["per_seed"] = [{k: v for k, v in row.items() if k not in PER_USER} for row in model["per_seed"]]


MINUTES_NOTE = (
    "`training CPU-min`: wall-clock minutes of training on the machine's CPU cores (2 here), mean over the seeds, "
    "as the run's `train_seconds` recorded it."
)


def markdown(result: dict) -> str:
    lines = [
        f"Dataset `{result['dataset']}`, test split, {result['n_users']} users, full ranking over "
        f"{result['n_items']} items, history items excluded for every model; mean ± std over the seeds "
        f"(a single seed shows ± 0). {MINUTES_NOTE}",
        "",
        "| model | seeds | " + " | ".join(SHOWN) + " | training CPU-min |",
        "|---|---|" + "---|" * (len(SHOWN) + 1),
    ]
    for model in result["models"]:
        cells = [f"{model['summary'][n]['mean']:.4f} ± {model['summary'][n]['std']:.4f}" for n in SHOWN]
        minutes = model.get("train_cpu_minutes")
        lines.append(f"| {model['name']} | {len(model['per_seed'])} | " + " | ".join(cells) + f" | {minutes or '-'} |")
    compared = [model for model in result["models"] if "ndcg@10_vs_sasrec" in model]
    if compared:
        lines += ["", "NDCG@10 minus SASRec's per user (each averaged over its seeds), paired bootstrap 95 % CI:"]
        for model in compared:
            diff = model["ndcg@10_vs_sasrec"]
            lines.append(f"- {model['name']}: {diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Short labels: an llmrec row is named by its recipe (the table has the model and depth).
    names = [model["name"].split(" (")[0].replace("`", "") for model in result["models"]]
    colors = {"most-popular": "#999999", "SASRec": "#4c72b0"}
    llmrec_colors = iter(["#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3"] * 4)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bar_colors = [colors.get(name, None) or next(llmrec_colors) for name in names]
    for ax, metric in zip(axes, ("recall@10", "ndcg@10"), strict=True):
        means = [model["summary"][metric]["mean"] for model in result["models"]]
        stds = [model["summary"][metric]["std"] for model in result["models"]]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=bar_colors)
        ax.set_xticks(range(len(names)), names, rotation=15, ha="right", fontsize=8)
        ax.set_title(f"{result['dataset']}: test {metric}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def update_readme(readme: Path = REPO / "README.md") -> None:
    """Replace the README block between the markers with every `quality_*.md`, in dataset order."""
    blocks = []
    for path in sorted(RESULTS.glob("quality_*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        blocks.append(f"#### {result['dataset']}\n\n" + (RESULTS / f"quality_{result['dataset']}.md").read_text())
        blocks.append(f"![{result['dataset']} quality](eval/results/quality_{result['dataset']}.png)\n")
    body = "\n".join(blocks) if blocks else "No quality results yet: run `python scripts/bench_quality.py`.\n"
    replace_readme_block(readme, README_START, README_END, body)


def replace_readme_block(readme: Path, start: str, end: str, body: str) -> None:
    """Rewrite `readme` (atomically) with `body` between the `start` and `end` marker lines, keeping all text
    outside them; a README without both markers is left as it is and refused. Shared with bench_grpo.py."""
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{readme} lacks the {start} / {end} markers.")
    head, rest = text.split(start, 1)
    write_text_atomic(readme, f"{head}{start}\n{body}{end}{rest.split(end, 1)[1]}")


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    raw = RESULTS / "raw" / dataset.name
    models = []

    pop = cached(raw / "popularity_test.json", lambda: evaluate_popularity(dataset, "test"))
    models.append({"name": "most-popular", "per_seed": [pop], "summary": summary([pop])})

    if not args.skip_sasrec:
        from eval.sasrec import evaluate_sasrec

        rows = []
        for seed in args.sasrec_seeds or args.seeds:
            rows.append(
                cached(
                    raw / sasrec_result_name(seed, args.sasrec_max_seconds),
                    lambda seed=seed: evaluate_sasrec(
                        dataset,
                        "test",
                        seed=seed,
                        max_seconds=args.sasrec_max_seconds,
                        work_dir=args.runs / dataset.name / "recbole",
                    ),
                    valid=lambda saved: sasrec_cache_matches(saved, dataset.meta["files"], args.sasrec_max_seconds),
                )
            )
        for seed, row in zip(args.sasrec_seeds or args.seeds, rows, strict=True):
            row["seed"] = seed
        minutes = round(statistics.fmean(row["train_time_s"] for row in rows) / 60, 1)
        models.append(
            {
                "name": sasrec_row_name(rows, args.sasrec_max_seconds),
                "per_seed": rows,
                "summary": summary(rows),
                "train_cpu_minutes": minutes,
            }
        )

    for sft_config, recipe_seeds in args.sft_config or []:
        seeds = recipe_seeds or args.llmrec_seeds or args.seeds
        models.append(llmrec_model(sft_config, seeds, dataset, args.runs, args.num_beams))

    versus_sasrec(models)
    without_per_user(models)
    result = {
        "dataset": dataset.name,
        "split": "test",
        "n_users": pop["n_users"],
        "n_items": len(dataset.items),
        "seeds": {model["name"]: [row.get("seed") for row in model["per_seed"]] for model in models},
        "dataset_sha256": dataset.meta["files"],
        "models": models,
    }
    write_json_atomic(RESULTS / f"quality_{dataset.name}.json", result)
    table = markdown(result)
    write_text_atomic(RESULTS / f"quality_{dataset.name}.md", table)
    plot(result, RESULTS / f"quality_{dataset.name}.png")
    print(table)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="prepared dataset folder with its sid_index.json")
    parser.add_argument(
        "--sft-config",
        type=recipe_with_seeds,
        nargs="+",
        help="scripts/sft.py YAML(s), one llmrec row each; RECIPE.yaml=42,43 gives that recipe its own seeds",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--sasrec-seeds", type=int, nargs="+", help="seeds for SASRec only (default: --seeds)")
    parser.add_argument("--llmrec-seeds", type=int, nargs="+", help="seeds for llmrec only (default: --seeds)")
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"), help="where llmrec runs are trained")
    parser.add_argument("--num-beams", type=int, default=None, help="decoder beams (default 2 x 20)")
    parser.add_argument(
        "--sasrec-max-seconds",
        type=sasrec_budget,
        default=DEFAULT_SASREC_SECONDS,
        help="SASRec wall-clock cap per seed, or 'none': train until early stopping (RecBole's stopping_step)",
    )
    parser.add_argument("--skip-sasrec", action="store_true")
    parser.add_argument("--readme", action="store_true", help="only regenerate the README results section")
    arguments = parser.parse_args()
    if not arguments.readme:
        if arguments.dataset is None:
            parser.error("--dataset is required (or pass --readme)")
        main(arguments)
    update_readme()
