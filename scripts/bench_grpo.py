r"""GRPO benchmark: validation and test metrics of an SFT run before and after GRPO, in the same harness.

    python scripts/bench_grpo.py --grpo-config scripts/configs/grpo_ml100k.yaml --dataset data/ml-100k
    python scripts/bench_grpo.py --grpo-config scripts/configs/grpo_office.yaml --dataset data/amazon-office
    python scripts/bench_grpo.py --dataset data/ml-100k \
        --grpo-config scripts/configs/grpo_ml100k.yaml scripts/configs/grpo_ml100k_gentle.yaml

Trains the GRPO run of each `--grpo-config` with `scripts/grpo.py` in a child process (reused if finished, resumed
if killed; all configs continue the same `sft_run`, which must exist: train it with scripts/sft.py or
scripts/bench_quality.py first), scores the SFT run and every GRPO run on the validation and test splits through
the constrained decoder (cached per adapter under `eval/results/raw/<dataset>/`), and writes
`eval/results/grpo_<dataset>[_<tag>].json` and `.md` (`--tag` keeps one table per SFT run) with each run's settings,
rewards at the start and end of training, training CPU-minutes and, per GRPO run and split, the NDCG@10 change
against SFT with a paired bootstrap 95 % interval over users (evaluations cached before per-user ranks existed show
n/a), then regenerates the README block between the `results:grpo` markers (`--readme` does only that).
"""

import argparse
import json
import logging
from pathlib import Path

import yaml
from bench_quality import (  # scripts/ is on sys.path when this file runs as a script
    ndcg10_change,
    replace_readme_block,
    run_train_seconds,
    trained_run,
)

from eval.evaluate import evaluate_popularity, evaluate_run_cached
from llmrec.data.dataset import load_dataset
from llmrec.data.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")
README_START, README_END = "<!-- results:grpo:start -->", "<!-- results:grpo:end -->"


def reward_window(history: list[dict], first: bool, steps: int = 3) -> float:
    """Mean total reward over the first (or last) `steps` logged steps."""
    rows = [row["reward"] for row in history if "reward" in row]
    chosen = rows[:steps] if first else rows[-steps:]
    return sum(chosen) / len(chosen)


def markdown(result: dict) -> str:
    lines = [
        f"Dataset `{result['dataset']}`, {result['n_users']} users per split{result['users_note']}, full ranking "
        f"over {result['n_items']} items, history excluded. SFT run `{result['sft_run']}`. GRPO runs (mean rollout "
        "reward over the first and the last 3 logged steps):",
        "",
        "| GRPO run | steps | prompts x G | rewards | rollout | mode | lr | beta | CPU-min | reward first -> last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for grpo in result["grpo_runs"]:
        lines.append(
            f"| `{grpo['run']}` | {grpo['steps']} | {grpo['prompts_seen']} x {grpo['num_generations']} | "
            f"`{grpo['rewards']}` | {grpo['rollout']} | {grpo['mode']} | {grpo['learning_rate']:g} | {grpo['beta']} | "
            f"{grpo['train_cpu_minutes']} | {grpo['reward_start']:.3f} -> {grpo['reward_end']:.3f} |"
        )
    lines += [
        "",
        "| run | split | " + " | ".join(SHOWN) + " | ndcg@10 change vs SFT [95% CI] |",
        "|---|---|" + "---|" * (len(SHOWN) + 1),
    ]
    for row in result["rows"]:
        cells = [f"{row['metrics'][metric]:.4f}" for metric in SHOWN]
        change = row.get("ndcg@10_change")
        if change is not None:
            cells.append(f"{change['diff']:+.4f} [{change['low']:+.4f}, {change['high']:+.4f}]")
        else:
            cells.append("n/a (no per-user ranks)" if "ndcg@10_change" in row else "")
        lines.append(f"| {row['run']} | {row['split']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_readme(results: Path, readme: Path = REPO / "README.md") -> None:
    """Replace the README block between the `results:grpo` markers with every `grpo_*.md` in `results`."""
    files = sorted(results.glob("grpo_*.md"))
    blocks = [f"#### {path.stem.removeprefix('grpo_')}\n\n{path.read_text(encoding='utf-8')}" for path in files]
    body = "\n".join(blocks) if blocks else "No GRPO results yet: run `python scripts/bench_grpo.py`.\n"
    replace_readme_block(readme, README_START, README_END, body)


def grpo_summary(run: Path) -> dict:
    """Settings, rewards and training time of a finished GRPO run, from its run_config and training log."""
    log = json.loads((run / "training_log.json").read_text(encoding="utf-8"))
    grpo = json.loads((run / "run_config.json").read_text(encoding="utf-8"))["grpo"]
    training, script = grpo["training_args"], grpo["script_args"]
    return {
        "run": run.name,
        "path": str(run),
        "steps": training["max_steps"],
        "prompts_seen": training["max_steps"] * training["generation_batch_size"] // training["num_generations"],
        "num_generations": training["num_generations"],
        "rewards": script["rewards"],
        "rollout": script["rollout"],
        "mode": script["mode"],
        "beta": training["beta"],
        "learning_rate": training["learning_rate"],
        "train_cpu_minutes": round(run_train_seconds(run) / 60, 1),
        "reward_start": reward_window(log["log_history"], first=True),
        "reward_end": reward_window(log["log_history"], first=False),
    }


def main(args: argparse.Namespace) -> None:
    if args.readme:
        update_readme(args.results)
        return
    if args.grpo_config is None or args.dataset is None:
        raise SystemExit("--grpo-config and --dataset are required (or --readme alone).")
    configs = {path: yaml.safe_load(path.read_text(encoding="utf-8")) for path in args.grpo_config}
    sft_runs = {Path(config["sft_run"]) for config in configs.values()}
    if len(sft_runs) != 1:
        raise SystemExit(f"all --grpo-config files must continue the same sft_run; got {sorted(map(str, sft_runs))}.")
    if args.output_dir and len(configs) > 1:
        raise SystemExit("--output-dir names one GRPO run; pass a single --grpo-config with it.")
    sft_run = sft_runs.pop()
    if not (sft_run / "run_config.json").is_file():
        raise SystemExit(f"{sft_run} is not a finished SFT run; train it first (scripts/bench_quality.py or sft.py).")
    dataset = load_dataset(args.dataset)
    grpo_runs = [
        trained_run(path, Path(args.output_dir or config["output_dir"]), [], script="grpo.py")
        for path, config in configs.items()
    ]
    if len({run.resolve() for run in grpo_runs}) != len(grpo_runs):
        raise SystemExit("two --grpo-config files share an output_dir; give each its own.")
    results = args.results
    raw = results / "raw" / dataset.name
    users = args.max_users
    rows = [
        {"run": "most-popular", "split": split, "metrics": evaluate_popularity(dataset, split, max_users=users)}
        for split in ("valid", "test")
    ]
    sft_metrics_by_split: dict[str, dict] = {}
    scored = [("SFT", sft_run)] + [(f"SFT + GRPO `{run.name}`", run) for run in grpo_runs]
    for name, run in scored:
        for split in ("valid", "test"):
            # The full SFT test file is the one bench_quality.py writes for that run, so its cache is shared.
            suffix = ("" if split == "test" else f"_{split}") + (f"_u{args.max_users}" if args.max_users else "")
            out = raw / f"llmrec_{run.name}{suffix}.json"
            metrics = evaluate_run_cached(run, dataset, split, out, max_users=args.max_users, num_beams=args.num_beams)
            per_user = ("user_ids", "target_ranks")  # kept in the raw file only
            summary = {key: value for key, value in metrics.items() if key not in per_user}
            row = {"run": name, "split": split, "path": str(run), "metrics": summary}
            if run == sft_run:
                sft_metrics_by_split[split] = metrics
            else:
                row["ndcg@10_change"] = ndcg10_change(sft_metrics_by_split[split], metrics)
            rows.append(row)
    result = {
        "dataset": dataset.name,
        "n_users": args.max_users or len(dataset.load_split().users),
        "n_items": len(dataset.items),
        "users_note": f" (the first {args.max_users} of {len(dataset.load_split().users)})" if args.max_users else "",
        "sft_run": str(sft_run),
        "grpo_configs": {str(path): config for path, config in configs.items()},
        "grpo_runs": [grpo_summary(run) for run in grpo_runs],
        "rows": rows,
    }
    stem = f"grpo_{dataset.name}" + (f"_{args.tag}" if args.tag else "")  # update_readme shows every grpo_*.md
    write_json_atomic(results / f"{stem}.json", result)
    table = markdown(result)
    write_text_atomic(results / f"{stem}.md", table)
    print(table)
    if args.results.resolve() == (REPO / "eval" / "results").resolve():
        update_readme(args.results)
    print(f"results written to {results / f'{stem}.md'}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpo-config", type=Path, nargs="+", help="scripts/grpo.py YAML(s), same sft_run")
    parser.add_argument("--dataset", type=Path, help="prepared dataset folder of the SFT run")
    parser.add_argument("--output-dir", help="GRPO run folder (default: the YAML's output_dir)")
    parser.add_argument("--num-beams", type=int, help="decoder beams (default 2 x 20)")
    parser.add_argument("--results", type=Path, default=Path("eval/results"), help="where results are written")
    parser.add_argument("--readme", action="store_true", help="only regenerate the README's GRPO results block")
    parser.add_argument("--max-users", type=int, help="score only the first N users of each split (all runs)")
    parser.add_argument(
        "--tag", help="results go to grpo_<dataset>_<tag>.{json,md}, beside other SFT runs' tables (default: none)"
    )
    return parser


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    main(make_parser().parse_args())
