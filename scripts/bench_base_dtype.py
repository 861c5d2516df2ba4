r"""Frozen projection weights in fp32 or bf16 during SFT: seconds per step and validation quality, at equal steps
or (with more bf16 steps) at equal training time.

    python scripts/bench_base_dtype.py --dataset data/ml-100k --config scripts/configs/sft_ml100k_cf.yaml \
        --arm float32:240 --arm bfloat16:240 --arm bfloat16:370

Each arm `DTYPE:M` trains `scripts/sft.py --config CONFIG --base_dtype DTYPE --max_steps M` into
`runs/base_dtype/<dataset>/DTYPE-sM` (reused when finished, resumed when killed) and scores it on the validation
split through the constrained decoder (all users, history excluded; the adapter is applied to the fp32 base, as
every run is served), next to most-popular. LoRA matrices and SID rows train in fp32 in both arms; only the frozen
projections' dtype differs. Writes `eval/results/base_dtype_<dataset>.json` and `.md`.
"""

import argparse
import logging
import platform
from pathlib import Path

from bench_quality import save_bench, valid_arm  # scripts/ is on sys.path when this file runs as a script

from eval.evaluate import evaluate_popularity
from llmrec.config import BASE_DTYPES
from llmrec.data.dataset import load_dataset

SHOWN = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@10")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (bf16 speed depends on it), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def parse_arm(text: str) -> tuple[str, int]:
    """`DTYPE:STEPS` -> (dtype name, steps)."""
    dtype, sep, steps = text.partition(":")
    if not sep or dtype not in BASE_DTYPES or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(
            f"--arm {text!r}: expected DTYPE:STEPS with DTYPE in {BASE_DTYPES}, e.g. bfloat16:240"
        )
    return dtype, int(steps)


def markdown(result: dict) -> str:
    pop = result["popularity_valid"]
    first = result["arms"][0]["seconds_per_step"] if result["arms"] else None
    lines = [
        f"Validation split of `{result['dataset']}` ({pop['n_users']} users, full ranking, history excluded); recipe "
        f"`{result['config']}` with `--base_dtype DTYPE --max_steps M`, one run each on this machine "
        f"({result['cpu']}). `speed-up`: the first arm's seconds per step over this arm's.",
        "",
        "| base dtype | steps | s / step | speed-up | train min | train loss | R@10 | N@10 | R@20 | N@20 | cov@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["arms"]:
        v = row["valid"]
        lines.append(
            f"| {row['base_dtype']} | {row['steps']} | {row['seconds_per_step']:.2f} "
            f"| {first / row['seconds_per_step']:.2f}x | {row['train_minutes']} | {row['final_train_loss']:.3f} | "
            + " | ".join(f"{v[key]:.4f}" for key in SHOWN)
            + " |"
        )
    lines.append("| most-popular | - | - | - | - | - | " + " | ".join(f"{pop[key]:.4f}" for key in SHOWN) + " |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    rows = []
    for dtype, steps in args.arm:
        overrides = ["--base_dtype", dtype, "--max_steps", str(steps), "--dataset_dir", str(dataset.path)]
        fields, log = valid_arm(args.config, args.runs / dataset.name / f"{dtype}-s{steps}", overrides, dataset, SHOWN)
        rows.append({"base_dtype": dtype, "steps": steps, "seconds_per_step": log["seconds_per_step"], **fields})
    result = {
        "dataset": dataset.name,
        "config": str(args.config),
        "cpu": cpu_name(),
        "arms": rows,
        "popularity_valid": evaluate_popularity(dataset, "valid"),
        "note": args.note,
    }
    save_bench(f"base_dtype_{dataset.name}", result, markdown(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--config", type=Path, default=Path("scripts/configs/sft_ml100k_cf.yaml"))
    parser.add_argument("--arm", type=parse_arm, action="append", required=True, help="DTYPE:STEPS, repeatable")
    parser.add_argument("--runs", type=Path, default=Path("runs/base_dtype"))
    parser.add_argument("--note", help="a remark printed under the table (e.g. about machine load)")
    main(parser.parse_args())
