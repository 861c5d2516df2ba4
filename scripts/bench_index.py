"""Benchmark the item tokenizer: real catalogs (ml-100k, amazon-office) and synthetic scaling (10k-100k items).

    python scripts/bench_index.py --data data --out eval/results

Each configuration runs in a fresh subprocess so that its peak RSS is its own. Real catalogs use the offline
MiniLM text embeddings (cached under `<dataset>/embeddings`, embedding time reported apart); the scaling runs use
SYNTHETIC embeddings (a mixture of 2,000 Gaussian clusters on the 384-d unit sphere), timing the quantizer and
collision resolution only. Writes `index_<dataset>.json`, `index_scaling.json`, `index_bench.md` and
`index_scaling.png`.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llmrec.data.io import write_json_atomic, write_text_atomic

REAL = ("ml-100k", "amazon-office")
METHODS = ("rqvae", "rqkmeans")
SCALES = (10_000, 50_000, 100_000)


def synthetic_embeddings(n: int, dim: int = 384, clusters: int = 2000, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: cluster centres on the sphere, items = centre + noise, renormalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_one(spec: dict) -> dict:
    """One configuration, in this process; returns the result row including peak RSS."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from llmrec.data import load_dataset
    from tokenizer.build import IndexConfig, build_index, quantize_embeddings
    from tokenizer.config import QuantizerConfig
    from tokenizer.report import semantic_coherence

    config = QuantizerConfig(method=spec["method"])
    started = time.perf_counter()
    if spec["kind"] == "real":
        dataset = load_dataset(Path(spec["data"]) / spec["dataset"])
        out = Path(spec["workdir"]) / f"{spec['dataset']}-{spec['method']}.json"
        index = build_index(
            dataset, out, IndexConfig(quantizer=config), Path(spec["data"]) / spec["dataset"] / "embeddings"
        )
        stats = dict(index.stats)
        stats["coherence"] = semantic_coherence(index, dataset.items)
    else:
        x = synthetic_embeddings(spec["items"])
        _, _, _, stats = quantize_embeddings(x, config)
    stats.pop("prefix_group_sizes", None)
    training = stats.pop("training")
    return {
        **spec,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "training_steps": training.get("steps"),
        **stats,
    }


def run_isolated(spec: dict) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark {spec} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{spec}: {row['wall_seconds']} s, {row['peak_rss_mb']} MB, collisions {row['collision_rate_before']:.4f}")
    return row


def markdown(real: list[dict], scaling: list[dict]) -> str:
    lines = [
        "| catalog | method | items | time s (embed + quantize) | peak RSS MB | collisions before -> after "
        "| usage a/b/c | perplexity a/b/c | coherence lift |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in real + scaling:
        name = row.get("dataset", f"synthetic {row.get('items')}")
        timing = f"{row.get('embedding_seconds', 0):.0f} + {row['quantizer_seconds'] + row['assignment_seconds']:.0f}"
        lift = row.get("coherence", {}).get("lift", "-")
        lines.append(
            f"| {name} | {row['method']} | {row['items']:,} | {timing} | {row['peak_rss_mb']:.0f} | "
            f"{row['collision_rate_before']:.2%} -> {row['collision_rate_after']:.2%} | "
            f"{'/'.join(f'{u:.2f}' for u in row['usage'])} | "
            f"{'/'.join(f'{p:.0f}' for p in row['perplexity'])} | {lift} |"
        )
    return "\n".join(lines) + "\n"


def plot_scaling(scaling: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        rows = [row for row in scaling if row["method"] == method]
        ax.plot([r["items"] for r in rows], [r["quantizer_seconds"] + r["assignment_seconds"] for r in rows], "o-",
                label=method)  # fmt: skip
    ax.set(
        xlabel="items (synthetic 384-d embeddings)",
        ylabel="seconds (fit + assign + resolve)",
        title="index build time",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(data: Path, out: Path, workdir: Path, skip_scaling: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    real = []
    for dataset in REAL:
        if not (data / dataset / "dataset.json").is_file():
            print(f"skipping {dataset}: prepare it first (python scripts/prepare_datasets.py)")
            continue
        rows = [run_isolated({"kind": "real", "dataset": dataset, "method": m, "data": str(data),
                              "workdir": str(workdir)}) for m in METHODS]  # fmt: skip
        write_json_atomic(out / f"index_{dataset}.json", rows)
        real += rows
    scaling = [] if skip_scaling else [run_isolated({"kind": "synthetic", "items": n, "method": m}) for n in SCALES
                                       for m in METHODS]  # fmt: skip
    if scaling:
        write_json_atomic(out / "index_scaling.json", {"note": "SYNTHETIC embeddings", "rows": scaling})
        plot_scaling(scaling, out / "index_scaling.png")
    write_text_atomic(out / "index_bench.md", markdown(real, scaling))
    print(markdown(real, scaling))
    print(f"wrote {out / 'index_bench.md'}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("eval/results"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_index"))
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
    else:
        main(args.data, args.out, args.workdir, args.skip_scaling)
