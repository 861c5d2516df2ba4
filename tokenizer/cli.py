"""`llmrec index build | add | report`: the item tokenizer's commands (registered by `llmrec.cli`).

Building the parser imports only the config module; torch, faiss and the encoders load when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from llmrec.data.dataset import load_dataset
from llmrec.data.io import write_json_atomic
from llmrec.sid import load_index
from tokenizer.config import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    DEFAULT_TEXT_FIELDS,
    EmbeddingConfig,
    IndexConfig,
    QuantizerConfig,
    TextTemplate,
)


def add_index_commands(commands: argparse._SubParsersAction) -> None:
    """Register `index build|add|report` under the top-level parser's subcommands."""
    defaults = QuantizerConfig()
    index = commands.add_parser("index", help="item tokenizer: build, grow and inspect semantic-ID indices")
    sub = index.add_subparsers(dest="index_command", required=True)

    build = sub.add_parser("build", help="embed the catalog, fit the quantizer, write a collision-free index")
    build.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder")
    build.add_argument("--out", type=Path, required=True, help="sid_index.json to write")
    build.add_argument("--method", choices=("rqvae", "rqkmeans"), default=defaults.method)
    build.add_argument(
        "--modalities", default="text", help="comma-separated among text, image, cf (co-consumption), e.g. text,cf"
    )
    build.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="sentence-transformers name or path")
    build.add_argument("--image-encoder", default=DEFAULT_IMAGE_ENCODER, help="efficientnet-lite0 or an ST model")
    build.add_argument("--text-weight", type=float, default=1.0)
    build.add_argument("--image-weight", type=float, default=1.0)
    build.add_argument("--cf-weight", type=float, default=1.0, help="weight of the cf block in the fused vector")
    build.add_argument("--cf-dim", type=int, default=64, help="singular vectors kept for the cf modality")
    build.add_argument(
        "--cf-window",
        type=int,
        default=0,
        help="cf from items consumed within this many places of each other (item x item); 0: users x items",
    )
    build.add_argument(
        "--per-modality", action="store_true", help="one index per modality (MQL4GRec) instead of one fused SID"
    )
    build.add_argument("--text-fields", default=",".join(DEFAULT_TEXT_FIELDS), help="item fields in the text")
    build.add_argument("--levels", type=int, default=defaults.num_levels)
    build.add_argument("--codebook-size", type=int, default=defaults.codebook_size)
    build.add_argument("--epochs", type=int, default=defaults.epochs)
    build.add_argument("--min-steps", type=int, default=defaults.min_steps)
    build.add_argument("--seed", type=int, default=defaults.seed)
    build.add_argument(
        "--select-seeds",
        type=seed_list,
        default=(),
        help="comma-separated quantizer seeds, e.g. 1,2,3,42: fit each, keep the index whose first codes follow "
        "users' sequences best on the validation split (overrides --seed)",
    )
    build.add_argument("--cache", type=Path, help="embedding cache folder (default: <dataset>/embeddings)")
    build.add_argument("--report", action="store_true", help="also write <out>.report.json and <out>.report.png")

    add = sub.add_parser("add", help="give SIDs to new catalog items without changing existing ones")
    add.add_argument("--index", type=Path, required=True, help="existing sid_index.json")
    add.add_argument("--dataset", type=Path, required=True, help="prepared dataset with the grown catalog")
    add.add_argument("--out", type=Path, help="where to write the grown index (default: replace --index)")

    report = sub.add_parser("report", help="diagnostics of an index: usage, perplexity, collisions, coherence")
    report.add_argument("--index", type=Path, required=True)
    report.add_argument("--dataset", type=Path, required=True)
    report.add_argument("--out", type=Path, help="report JSON (default: <index>.report.json); a PNG goes beside it")
    report.add_argument("--field", help="label field for the coherence check (default: genres/categories/brand)")


def seed_list(text: str) -> tuple[int, ...]:
    """`--select-seeds 1,2,3,42` -> (1, 2, 3, 42), with an error naming the value otherwise."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--select-seeds {text!r}: give comma-separated integer seeds, e.g. 1,2,3,42"
        ) from None


def write_report(index_path: Path, dataset_dir: Path, out: Path | None = None, field: str | None = None) -> dict:
    """Recompute code statistics and coherence against the catalog; write JSON and PNG; return the report.

    Build-time figures that cannot be recomputed from the index file (collision rate before resolution,
    reconstruction error, timings) are copied from the index's stats.
    """
    from tokenizer.report import code_stats, plot_report, semantic_coherence, sequence_coherence

    dataset = load_dataset(dataset_dir)
    index = load_index(index_path, dataset.items)
    codes = np.array(list(index.items.values()))  # (N, M)
    build_keys = (
        "collision_rate_before", "moved_by_sinkhorn", "extra_level", "reconstruction_mse", "total_seconds",
        "seed_selection",
    )  # fmt: skip
    stats = {
        "index": str(index_path),
        "dataset": dataset.name,
        "items": len(index.items),
        "codebook_sizes": list(index.codebook_sizes),
        "method": index.source.get("quantizer", {}).get("method"),
        **{key: index.stats.get(key) for key in build_keys},  # absent from hand-made or foreign indices
        "collision_rate_after": 0.0,  # load_index rejects any index in which two items share a SID
        **code_stats(codes, index.codebook_sizes),
        "coherence": semantic_coherence(index, dataset.items, field),
        "sequence": sequence_coherence(index, dataset.load_split().users),
    }
    out = out or index_path.with_name(index_path.stem + ".report.json")
    write_json_atomic(out, {key: value for key, value in stats.items() if key != "prefix_group_sizes"})
    plot_report(index, stats, out.with_suffix(".png"))
    return stats


def run_index_command(args: argparse.Namespace) -> None:
    from tokenizer.build import add_items, build_index

    if args.index_command == "build":
        embedding = EmbeddingConfig(
            modalities=tuple(part.strip() for part in args.modalities.split(",") if part.strip()),
            text_encoder=args.text_encoder,
            image_encoder=args.image_encoder,
            text_weight=args.text_weight,
            image_weight=args.image_weight,
            cf_weight=args.cf_weight,
            cf_dim=args.cf_dim,
            cf_window=args.cf_window,
            template=TextTemplate(tuple(part.strip() for part in args.text_fields.split(",") if part.strip())),
        )
        quantizer = QuantizerConfig(
            method=args.method,
            num_levels=args.levels,
            codebook_size=args.codebook_size,
            epochs=args.epochs,
            min_steps=args.min_steps,
            seed=args.seed,
        )
        dataset = load_dataset(args.dataset)
        index = build_index(
            dataset,
            args.out,
            IndexConfig(embedding, quantizer, per_modality=args.per_modality, select_seeds=args.select_seeds),
            args.cache or args.dataset / "embeddings",
        )
        print(summary_line(index.stats, len(index.items), index.num_levels))
        if "seed_selection" in index.stats:
            print(selection_line(index.stats["seed_selection"]))
        if args.report:
            write_report(args.out, args.dataset)
        print(f"wrote {args.out}")
    elif args.index_command == "add":
        dataset = load_dataset(args.dataset)
        out = args.out or args.index
        index = load_index(args.index)
        grown = add_items(index, args.index, dataset, out)
        print(f"added {len(grown.items) - len(index.items)} items; wrote {out}")
    else:
        stats = write_report(args.index, args.dataset, args.out, args.field)
        shown = {key: value for key, value in stats.items() if key != "prefix_group_sizes"}
        print(json.dumps(shown, indent=2))


def selection_line(selection: dict) -> str:
    """`seed 42 chosen by first-code markov_hit@10 on valid: 1 .4825, 2 .4602, ..., 42 .4920`."""
    metric = selection["metric"]
    scores = ", ".join(f"{row['seed']} {row[metric]:.4f}" for row in selection["candidates"])
    return f"seed {selection['chosen']} chosen by first-code {metric} on {selection['split']}: {scores}"


def summary_line(stats: dict, items: int, levels: int) -> str:
    return (
        f"{items} items, {levels} levels, collisions {stats['collision_rate_before']:.2%} -> "
        f"{stats['collision_rate_after']:.2%}, usage {[round(u, 3) for u in stats['usage']]}, "
        f"perplexity {stats['perplexity']}, {stats['total_seconds']} s"
    )
