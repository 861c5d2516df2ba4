r"""Does a cf window or a heavier cf block make SIDs follow users' sequences better, beyond what the quantizer's
own seed changes?

    python scripts/bench_cf_window.py --dataset data/ml-100k --windows 0 3 --seeds 1 2 3 42
    python scripts/bench_cf_window.py --dataset data/ml-100k --windows 0 --cf-weights 1 2 4 --cf-only --tag weights

Builds one index per arm (cf window x cf weight, text+cf fused; `--cf-only` adds the cf block alone) and quantizer
seed into `runs/cf_window/<dataset>/` (reused when present, since a build is deterministic given its inputs) and
reads each one's `tokenizer.report.sequence_coherence`: the share of consecutive training items sharing a first
code (`next same`, against `chance`) and the first-code Markov hit@10 on the validation item. The RQ-VAE's seed
alone moves these numbers, so an arm only helps if its mean over seeds beats the default's (window 0, weight 1) by
more than the spread within each arm. No LM is trained here: this screens indices cheaply (about 2 minutes per
build on 2 cores); what a trained model makes of them is another question.
Writes `eval/results/cf_window_<dataset>[_<tag>].json` and `.md`.
"""

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_quality import (  # scripts/ is on sys.path when this file runs as a script
    save_bench,
    tag_argument,
    tagged_stem,
)

from llmrec.data.dataset import load_dataset
from llmrec.sid import load_index
from tokenizer.build import build_index
from tokenizer.config import EmbeddingConfig, IndexConfig, QuantizerConfig
from tokenizer.report import sequence_coherence

METRICS = ("next_same_first_code", "chance", "markov_hit@10", "popular_hit@10")


def arm_name(modalities: tuple[str, ...], window: int, cf_weight: float) -> str:
    """`text+cf w0 x1`: what an arm fuses, its cf window and its cf weight."""
    return f"{'+'.join(modalities)} w{window} x{cf_weight:g}"


def index_file(work: Path, modalities: tuple[str, ...], window: int, cf_weight: float, seed: int) -> Path:
    """Where an arm's index for one quantizer seed lives; the default fusion keeps the first bench's names."""
    if modalities == ("text", "cf") and cf_weight == 1.0:
        return work / f"w{window}_s{seed}.json"
    return work / f"{'+'.join(modalities)}_w{window}_x{cf_weight:g}_s{seed}.json"


def build_or_reuse(
    dataset, users, out: Path, window: int, seed: int, modalities: tuple[str, ...] = ("text", "cf"), cf_weight=1.0
) -> dict:
    """The sequence coherence of the index with these modalities, cf window, cf weight and quantizer seed, building
    it if absent."""
    started = time.perf_counter()
    if out.exists():
        index = load_index(out)
        built = False
    else:
        embedding = EmbeddingConfig(modalities=modalities, cf_window=window, cf_weight=cf_weight)
        config = IndexConfig(embedding, replace(QuantizerConfig(), seed=seed))
        index = build_index(dataset, out, config, cache=dataset.path / "embeddings")
        built = True
    coherence = sequence_coherence(index, users)
    return {
        "arm": arm_name(modalities, window, cf_weight),
        "modalities": list(modalities),
        "window": window,
        "cf_weight": cf_weight,
        "seed": seed,
        "index": str(out),
        "built_seconds": round(time.perf_counter() - started, 1) if built else None,
        **{key: coherence[key] for key in METRICS},
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, std and range of each metric per arm, over its seeds (arms in the order first seen)."""
    out = []
    for arm in dict.fromkeys(row["arm"] for row in rows):
        mine = [row for row in rows if row["arm"] == arm]
        entry = {"arm": arm, "window": mine[0]["window"], "seeds": [row["seed"] for row in mine]}
        for key in METRICS:
            values = np.array([row[key] for row in mine])
            entry[key] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)}
            entry[key]["min"], entry[key]["max"] = float(values.min()), float(values.max())
        out.append(entry)
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Indices of `{result['dataset']}` (3 x 256 RQ-VAE codes), one per arm and quantizer seed. An arm is what "
        "the item vector fuses (each block L2-normalised), its cf window and the cf block's weight `xK`; "
        "window 0 factors the user x item matrix, W > 0 the item x item matrix of items within W places in a training "
        "sequence. `next same`: share of consecutive training items sharing a first code (`chance`: the same for "
        "independent draws); `markov@10`: the validation item's first code in the top 10 of a first-order Markov "
        "model over first codes. Mean ± std over the seeds, min-max in brackets.",
        "",
        "| arm | seeds | next same | chance | markov@10 | popular@10 |",
        "|---|---|---|---|---|---|",
    ]
    for entry in result["arms"]:
        cells = [
            f"{entry[key]['mean']:.4f} ± {entry[key]['std']:.4f} [{entry[key]['min']:.3f}-{entry[key]['max']:.3f}]"
            for key in METRICS
        ]
        lines.append(f"| {entry['arm']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Per index:", ""]
    lines += [
        f"- {row['arm']}, seed {row['seed']}: markov@10 {row['markov_hit@10']:.4f}, next same "
        f"{row['next_same_first_code']:.4f}"
        for row in result["indices"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 42])
    parser.add_argument("--cf-weights", type=float, nargs="+", default=[1.0], help="weights of the cf block vs text")
    parser.add_argument("--cf-only", action="store_true", help="also build indices from the cf block alone")
    parser.add_argument(
        "--tag", type=tag_argument, default="", help="suffix of the result files, so a second screen keeps the first"
    )
    parser.add_argument("--work", type=Path, default=Path("runs/cf_window"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    dataset = load_dataset(args.dataset)
    users = dataset.load_split().users  # read once: every index is scored on the same training pairs
    arms = [(("text", "cf"), window, weight) for window in args.windows for weight in args.cf_weights]
    arms += [(("cf",), window, 1.0) for window in args.windows] if args.cf_only else []
    rows = []
    for modalities, window, weight in arms:
        for seed in args.seeds:
            out = index_file(args.work / dataset.name, modalities, window, weight, seed)
            rows.append(build_or_reuse(dataset, users, out, window, seed, modalities, weight))
            print(rows[-1], flush=True)
    result = {"dataset": dataset.name, "indices": rows, "arms": summarise(rows)}
    save_bench(tagged_stem(f"cf_window_{dataset.name}", args.tag), result, markdown(result))


if __name__ == "__main__":
    main()
