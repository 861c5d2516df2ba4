"""Benchmark SFT speed and memory on ml-100k prompts: SmolLM2 at full depth and truncated, a few optimizer steps.

    python scripts/bench_sft.py --steps 10 --out eval/results

Two recipes: chat `seqrec` prompts (history in the prompt, `sft_ml100k_seqrec.yaml`) at several depths and batch
shapes, and the plain `sequence` recipe of the quality table (`sft_ml100k_long.yaml`) with the softmax over the whole
vocabulary and with `sid_softmax` (over the SID tokens + EOS). Needs `data/ml-100k` and its `sid_index.json`. Each
configuration runs in a fresh process so its peak RSS is its own; seconds per step include the first (slower)
steps. Writes `eval/results/sft_bench.json` and `sft_bench.md`.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from llmrec.data.io import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
SEQREC = "scripts/configs/sft_ml100k_seqrec.yaml"  # chat seqrec prompts (history in the prompt) + fusion
SEQUENCE = "scripts/configs/sft_ml100k_long.yaml"  # plain `sequence` runs, SIDs back to back (the quality recipe)
SEQREC_TASKS = {"tasks": "seqrec=2000,item2sid=0,sid2item=0,fusion=500,search=0"}
# name -> (recipe, overrides)
CONFIGS = {
    "seqrec: full depth (30 layers), batch 8": (SEQREC, {**SEQREC_TASKS, "per_device_train_batch_size": 8}),
    "seqrec: full depth (30 layers), batch 4 x 2 accumulation": (
        SEQREC,
        {**SEQREC_TASKS, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
    ),
    "seqrec: first 10 layers, batch 8": (
        SEQREC,
        {**SEQREC_TASKS, "per_device_train_batch_size": 8, "keep_layers": 10},
    ),
    "sequence: full depth, batch 8, softmax over the vocabulary": (SEQUENCE, {"sid_softmax": False}),
    "sequence: full depth, batch 8, sid_softmax": (SEQUENCE, {"sid_softmax": True}),
}


def run_one(name: str, steps: int) -> dict:
    from trl import ModelConfig, SFTConfig, TrlParser

    from llmrec.config import SFTScriptArguments
    from llmrec.training import run_sft

    with tempfile.TemporaryDirectory() as tmp:
        recipe, overrides = CONFIGS[name]
        argv = ["--config", str(ROOT / recipe), "--output_dir", f"{tmp}/run"]
        argv += ["--max_steps", str(steps), "--eval_strategy", "no", "--save_steps", "100000", "--logging_steps", "1"]
        argv += ["--gradient_accumulation_steps", "1"]  # the configurations below may override it
        for key, value in overrides.items():
            argv += [f"--{key}", str(value)]
        parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
        script_args, training_args, model_args = parser.parse_args_and_config(argv)
        run_sft(script_args, training_args, model_args)
        log = json.loads(Path(tmp, "run", "training_log.json").read_text())
    return {
        "config": name,
        "recipe": recipe,
        "steps": steps,
        "seconds_per_step": log["seconds_per_step"],
        "tokens_per_second": log["tokens_per_second"],
        "padding_fraction": log["padding_fraction"],
        "trainable_parameters": log["trainable_parameters"],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "first_loss": next(row["loss"] for row in log["log_history"] if "loss" in row),
    }


def main(steps: int, out: Path) -> None:
    rows = []
    for name in CONFIGS:
        result = subprocess.run(
            [sys.executable, __file__, "--one", name, "--steps", str(steps)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    write_json_atomic(out / "sft_bench.json", {"dataset": "ml-100k", "model": "SmolLM2-135M-Instruct", "rows": rows})
    lines = [
        "| configuration | s / optimizer step | tokens / s | padding | peak RSS GB | trainable params |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['seconds_per_step']:.1f} | {row['tokens_per_second']:.0f} | "
            f"{row['padding_fraction']:.1%} | {row['peak_rss_gb']:.1f} | {row['trainable_parameters']:,} |"
        )
    write_text_atomic(out / "sft_bench.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps)))
    else:
        main(args.steps, args.out)
