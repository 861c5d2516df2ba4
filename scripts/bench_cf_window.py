r"""Does a cf window make SIDs follow users' sequences better, beyond what the quantizer's own seed changes?

    python scripts/bench_cf_window.py --dataset data/ml-100k --windows 0 3 --seeds 1 2 3 42

Builds one text+cf index per (cf window, quantizer seed) into `runs/cf_window/<dataset>/` (reused when present,
since a build is deterministic given its inputs) and reads each one's `tokenizer.report.sequence_coherence`: the
share of consecutive training items sharing a first code (`next same`, against `chance`) and the first-code Markov
hit@10 on the validation item. The RQ-VAE's seed alone moves these numbers, so a window only helps if its
mean over seeds beats window 0's by more than the spread within each window. No LM is trained here: this screens
indices cheaply (about 2 minutes per build on 2 cores); what a trained model makes of them is another question.
Writes `eval/results/cf_window_<dataset>.json` and `.md`.
"""

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_quality import save_bench  # scripts/ is on sys.path when this file runs as a script

from llmrec.data.dataset import load_dataset
from llmrec.sid import load_index
from tokenizer.build import build_index
from tokenizer.config import EmbeddingConfig, IndexConfig, QuantizerConfig
from tokenizer.report import sequence_coherence

METRICS = ("next_same_first_code", "chance", "markov_hit@10", "popular_hit@10")


def build_or_reuse(dataset, users, out: Path, window: int, seed: int) -> dict:
    """The sequence coherence of the text+cf index with this cf window and quantizer seed, building it if absent."""
    started = time.perf_counter()
    if out.exists():
        index = load_index(out)
        built = False
    else:
        config = IndexConfig(
            EmbeddingConfig(modalities=("text", "cf"), cf_window=window), replace(QuantizerConfig(), seed=seed)
        )
        index = build_index(dataset, out, config, cache=dataset.path / "embeddings")
        built = True
    coherence = sequence_coherence(index, users)
    return {
        "window": window,
        "seed": seed,
        "index": str(out),
        "built_seconds": round(time.perf_counter() - started, 1) if built else None,
        **{key: coherence[key] for key in METRICS},
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, std and range of each metric per window, over its seeds."""
    out = []
    for window in sorted({row["window"] for row in rows}):
        mine = [row for row in rows if row["window"] == window]
        entry = {"window": window, "seeds": [row["seed"] for row in mine]}
        for key in METRICS:
            values = np.array([row[key] for row in mine])
            entry[key] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)}
            entry[key]["min"], entry[key]["max"] = float(values.min()), float(values.max())
        out.append(entry)
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Text+cf indices of `{result['dataset']}` (3 x 256 RQ-VAE codes), one per cf window and quantizer seed; "
        "window 0 factors the user x item matrix, W > 0 the item x item matrix of items within W places in a training "
        "sequence. `next same`: share of consecutive training items sharing a first code (`chance`: the same for "
        "independent draws); `markov@10`: the validation item's first code in the top 10 of a first-order Markov "
        "model over first codes. Mean ± std over the seeds, min-max in brackets.",
        "",
        "| cf window | seeds | next same | chance | markov@10 | popular@10 |",
        "|---|---|---|---|---|---|",
    ]
    for entry in result["windows"]:
        cells = [
            f"{entry[key]['mean']:.4f} ± {entry[key]['std']:.4f} [{entry[key]['min']:.3f}-{entry[key]['max']:.3f}]"
            for key in METRICS
        ]
        lines.append(f"| {entry['window']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Per index:", ""]
    lines += [
        f"- window {row['window']}, seed {row['seed']}: markov@10 {row['markov_hit@10']:.4f}, next same "
        f"{row['next_same_first_code']:.4f}"
        for row in result["indices"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 42])
    parser.add_argument("--work", type=Path, default=Path("runs/cf_window"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    dataset = load_dataset(args.dataset)
    users = dataset.load_split().users  # read once: every index is scored on the same training pairs
    rows = []
    for window in args.windows:
        for seed in args.seeds:
            out = args.work / dataset.name / f"w{window}_s{seed}.json"
            rows.append(build_or_reuse(dataset, users, out, window, seed))
            print(rows[-1], flush=True)
    result = {"dataset": dataset.name, "indices": rows, "windows": summarise(rows)}
    save_bench(f"cf_window_{dataset.name}", result, markdown(result))


if __name__ == "__main__":
    main()
