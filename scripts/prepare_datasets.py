"""Prepare every built-in dataset and write a report of their stats and most-popular baselines.

    python scripts/prepare_datasets.py --out data --results eval/results

Writes `data/<name>/` for ml-100k, ml-1m and amazon-office (when `../shared/data/amazon-office` exists), then
`eval/results/datasets.json` and `eval/results/datasets.md` (counts, sequence lengths, prepare time, Pop@test).
"""

import argparse
import time
from pathlib import Path

from eval.evaluate import evaluate_popularity
from llmrec.cli import DEFAULT_AMAZON_OFFICE
from llmrec.data import prepare
from llmrec.data.importers import import_amazon_office, import_recbole_movielens
from llmrec.data.io import write_json_atomic, write_text_atomic

SOURCES = {
    "ml-100k": lambda: import_recbole_movielens("ml-100k"),
    "ml-1m": lambda: import_recbole_movielens("ml-1m"),
    "amazon-office": lambda: import_amazon_office(DEFAULT_AMAZON_OFFICE),
}


def main(out: Path, results: Path) -> None:
    report = {}
    for name, load in SOURCES.items():
        if name == "amazon-office" and not DEFAULT_AMAZON_OFFICE.is_dir():
            print(f"skipping amazon-office: {DEFAULT_AMAZON_OFFICE} not found")
            continue
        started = time.perf_counter()
        dataset = prepare(load(), out / name, overwrite=True)
        seconds = time.perf_counter() - started
        pop = evaluate_popularity(dataset, "test")
        report[name] = {"stats": dataset.meta["stats"], "prepare_seconds": round(seconds, 2), "popularity_test": pop}
    write_json_atomic(results / "datasets.json", report)
    lines = [
        "| dataset | users | items | interactions | seq len median / mean | sparsity | prepare s "
        "| Pop R@10 | Pop N@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report.items():
        stats, pop = row["stats"], row["popularity_test"]
        seq = stats["sequence_length"]
        lines.append(
            f"| {name} | {stats['users']:,} | {stats['items']:,} | {stats['interactions']:,} | "
            f"{seq['p50']:g} / {seq['mean']:.1f} | {stats['sparsity']:.4f} | {row['prepare_seconds']:.1f} | "
            f"{pop['recall@10']:.4f} | {pop['ndcg@10']:.4f} |"
        )
    write_text_atomic(results / "datasets.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {results / 'datasets.json'}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--results", type=Path, default=Path("eval/results"))
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    main(args.out, args.results)
