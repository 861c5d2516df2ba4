r"""Which item embedding makes the better SIDs for a recommender: one SFT recipe, one index per arm, equal steps.

    llmrec index build --dataset data/ml-100k --out data/ml-100k/sid_index.json
    llmrec index build --dataset data/ml-100k --out data/ml-100k/sid_index_cf.json --modalities text,cf
    python scripts/bench_sid_modalities.py --dataset data/ml-100k --config scripts/configs/sft_ml100k_3ep.yaml \
        --max-steps 240 --arm text=data/ml-100k/sid_index.json --arm text+cf=data/ml-100k/sid_index_cf.json

Each arm `NAME=INDEX` trains `scripts/sft.py --config CONFIG --index_path INDEX --max_steps M` into
`runs/sid_modalities/<dataset>/NAME-sM` (reused when finished, resumed when killed) and scores it on the validation
split through the constrained decoder (all users, history excluded), next to most-popular. Each row also holds the
index's sequence coherence (`tokenizer.report.sequence_coherence`: does the first SID token follow the users'
sequences?), which costs nothing to compute, so it can be checked against what the trained model achieves.
Writes `eval/results/sid_modalities_<dataset>.json` and `.md`.
"""

import argparse
import logging
from pathlib import Path

from bench_quality import save_bench, valid_arm  # scripts/ is on sys.path when this file runs as a script

from eval.evaluate import evaluate_popularity
from llmrec.data.dataset import load_dataset
from llmrec.sid import load_index
from tokenizer.report import sequence_coherence

SHOWN = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@10")


def parse_arm(text: str) -> tuple[str, Path]:
    """`NAME=INDEX` -> (name, index path)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=INDEX, e.g. text+cf=data/ml-100k/cf.json")
    return name, Path(path)


def markdown(result: dict) -> str:
    pop = result["popularity_valid"]
    lines = [
        f"Validation split of `{result['dataset']}` ({pop['n_users']} users, full ranking, history excluded); recipe "
        f"`{result['config']}` for {result['max_steps']} steps with each arm's index. `next same` / `chance`: share "
        "of consecutive training items sharing a first code, and the same for independent draws; `markov@10` / "
        "`popular@10`: the validation item's first code in the top 10 of a first-order Markov model over first "
        "codes / of the 10 most frequent first codes.",
        "",
        "| arm | modalities | next same | chance | markov@10 | popular@10 | train min | train loss "
        "| R@10 | N@10 | R@20 | N@20 | cov@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["arms"]:
        seq, v = row["sequence"], row["valid"]
        lines.append(
            f"| {row['arm']} | {','.join(row['modalities'])} | {seq['next_same_first_code']:.3f} "
            f"| {seq['chance']:.3f} | {seq['markov_hit@10']:.3f} | {seq['popular_hit@10']:.3f} "
            f"| {row['train_minutes']} | {row['final_train_loss']:.3f} | "
            + " | ".join(f"{v[key]:.4f}" for key in SHOWN)
            + " |"
        )
    lines.append(
        "| most-popular | - | - | - | - | - | - | - | " + " | ".join(f"{pop[key]:.4f}" for key in SHOWN) + " |"
    )
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    users = dataset.load_split().users
    rows = []
    for name, index_path in args.arm:
        index = load_index(index_path, dataset.items)
        overrides = ["--index_path", str(index_path), "--max_steps", str(args.max_steps)]
        overrides += ["--dataset_dir", str(dataset.path)]
        out = args.runs / dataset.name / f"{name}-s{args.max_steps}"
        fields, _ = valid_arm(args.config, out, overrides, dataset, SHOWN)
        rows.append(
            {
                "arm": name,
                "index": str(index_path),
                "sids_sha256": index.sids_sha256(),
                "modalities": index.source.get("embedding", {}).get("modalities", []),
                "sequence": sequence_coherence(index, users),
                **fields,
            }
        )
    result = {
        "dataset": dataset.name,
        "config": str(args.config),
        "max_steps": args.max_steps,
        "arms": rows,
        "popularity_valid": evaluate_popularity(dataset, "valid"),
        "note": args.note,
    }
    save_bench(f"sid_modalities_{dataset.name}", result, markdown(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--config", type=Path, default=Path("scripts/configs/sft_ml100k_3ep.yaml"))
    parser.add_argument("--max-steps", type=int, default=240)
    parser.add_argument("--arm", type=parse_arm, action="append", required=True, help="NAME=INDEX, repeatable")
    parser.add_argument("--runs", type=Path, default=Path("runs/sid_modalities"))
    parser.add_argument("--note", help="a remark printed under the table (e.g. about machine load)")
    main(parser.parse_args())
