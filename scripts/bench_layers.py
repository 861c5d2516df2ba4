"""Depth vs quality at equal training CPU time: SmolLM2 truncated to N layers, trained for M steps each.

    python scripts/bench_layers.py --config scripts/configs/sft_ml100k.yaml --arm 10:300 --arm 30:120

Each arm `N:M` trains `scripts/sft.py --config CONFIG --keep_layers N --max_steps M` into `runs/layers/lN-sM`
(reused when finished, resumed when killed) and scores it on the validation split through the constrained decoder
(all users, history excluded), next to most-popular. Pick M so that the arms use about the same CPU time (a step
at 10 layers costs ~0.4x one at 30). Writes `eval/results/sft_layers.json` and `sft_layers.md`.
"""

import argparse
import logging
from pathlib import Path

from bench_quality import save_bench, valid_arm  # scripts/ is on sys.path when this file runs as a script

from eval.evaluate import evaluate_popularity
from llmrec.data.dataset import load_dataset

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@10")


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    rows = []
    for arm in args.arm:
        layers, steps = (int(part) for part in arm.split(":"))
        overrides = ["--keep_layers", str(layers), "--max_steps", str(steps)]
        fields, log = valid_arm(args.config, args.runs / f"l{layers}-s{steps}", overrides, dataset, SHOWN)
        rows.append(
            {
                "layers": layers,
                "steps": steps,
                "seconds_per_step": log["seconds_per_step"],
                "tokens_per_second": log["tokens_per_second"],
                **fields,
            }
        )
    pop = evaluate_popularity(dataset, "valid")
    config = str(args.config.resolve().relative_to(REPO))
    result = {"dataset": dataset.name, "config": config, "arms": rows, "popularity_valid": pop, "note": args.note}
    lines = [
        f"Validation split of `{dataset.name}` ({pop['n_users']} users, full ranking, history excluded); recipe "
        f"`{config}` with `--keep_layers N --max_steps M`.",
        "",
        "| layers | steps | train min | s / step | tokens / s | train loss | R@10 | N@10 | R@20 | N@20 | cov@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        v = row["valid"]
        lines.append(
            f"| {row['layers']} | {row['steps']} | {row['train_minutes']} | {row['seconds_per_step']} | "
            f"{row['tokens_per_second']} | {row['final_train_loss']:.3f} | {v['recall@10']:.4f} | "
            f"{v['ndcg@10']:.4f} | {v['recall@20']:.4f} | {v['ndcg@20']:.4f} | {v['coverage@10']:.4f} |"
        )
    lines.append(
        f"| most-popular | - | - | - | - | - | {pop['recall@10']:.4f} | {pop['ndcg@10']:.4f} | {pop['recall@20']:.4f} "
        f"| {pop['ndcg@20']:.4f} | {pop['coverage@10']:.4f} |"
    )
    if args.note:
        lines += ["", args.note]
    save_bench("sft_layers", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "scripts" / "configs" / "sft_ml100k.yaml")
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--arm", action="append", required=True, help="LAYERS:STEPS, repeatable")
    parser.add_argument("--runs", type=Path, default=Path("runs/layers"))
    parser.add_argument("--note", help="a remark printed under the table (e.g. about machine load)")
    main(parser.parse_args())
