"""The `llmrec` command line: `data`, `index`, `sft`, `recommend`, `evaluate` and `demo` subcommands.

This module is the composition root: it imports `tokenizer` and `eval` lazily inside functions, so that no
library module of `llmrec` depends on them (tests/test_layout.py checks it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from llmrec.data.dataset import load_dataset
from llmrec.data.io import DataError
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.data.stats import format_stats

logger = logging.getLogger("llmrec")

DEFAULT_AMAZON_OFFICE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-office"


def parse_columns(text: str) -> dict[str, str]:
    """`"user_id=uid,item_id=iid"` -> `{"user_id": "uid", "item_id": "iid"}`."""
    pairs = [part for part in text.split(",") if part.strip()]
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"--columns entry {pair!r} must look like llmrec_name=file_column.")
        key, value = pair.split("=", 1)
        mapping[key.strip()] = value.strip()
    return mapping


def _add_prepare_options(parser: argparse.ArgumentParser, min_user: int = 3, min_item: int = 0) -> None:
    defaults = PrepareConfig()
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--min-user", type=int, default=min_user, help="k-core threshold for users (>= 3)")
    parser.add_argument("--min-item", type=int, default=min_item, help="k-core threshold for items (0 keeps all)")
    parser.add_argument(
        "--duplicates",
        choices=("keep", "first", "last"),
        default=defaults.duplicates,
        help="repeated (user, item) pairs at different times: keep all, or only the first/last",
    )
    parser.add_argument("--max-history", type=int, default=defaults.max_history, help="history length fed to models")
    parser.add_argument("--strict", action="store_true", help="fail on unknown items and users with < 3 interactions")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="import, clean and split datasets").add_subparsers(
        dest="data_command", required=True
    )
    prep = data.add_parser("prepare", help="write a canonical dataset folder").add_subparsers(
        dest="source", required=True
    )
    for name in ("ml-100k", "ml-1m"):
        sub = prep.add_parser(name, help=f"MovieLens {name[3:].upper()} (RecBole atomic files or GroupLens raw)")
        sub.add_argument("--path", help="folder with RecBole atomic files, or the RecBole wheel (default: find it)")
        sub.add_argument("--raw", help="folder with the GroupLens raw files (u.data/u.item or ratings.dat/movies.dat)")
        _add_prepare_options(sub)
    sub = prep.add_parser("amazon", help="Amazon reviews + metadata (2014 or 2018 format, .json or .json.gz)")
    sub.add_argument("--reviews", required=True, type=Path)
    sub.add_argument("--meta", required=True, type=Path)
    sub.add_argument("--name", help="dataset name (default: from the reviews file name)")
    _add_prepare_options(sub, min_user=5, min_item=5)
    sub = prep.add_parser("amazon-office", help="the amazon-office sequences folder (items.jsonl, interactions.csv)")
    sub.add_argument("--path", type=Path, default=DEFAULT_AMAZON_OFFICE)
    _add_prepare_options(sub)
    sub = prep.add_parser("csv", help="any interaction table + item table (CSV/TSV/JSONL) with a column mapping")
    sub.add_argument("--interactions", required=True, type=Path)
    sub.add_argument("--items", required=True, type=Path)
    sub.add_argument("--columns", type=parse_columns, default={}, help="e.g. user_id=uid,item_id=iid,timestamp=ts")
    sub.add_argument("--text-fields", help="comma-separated item columns to keep as text (default: all others)")
    sub.add_argument("--name", help="dataset name (default: the folder name)")
    _add_prepare_options(sub)
    stats = data.add_parser("stats", help="print the report of a prepared dataset folder")
    stats.add_argument("dataset", type=Path)

    from tokenizer.cli import add_index_commands

    add_index_commands(commands)

    sft = commands.add_parser(
        "sft", help="LoRA SFT on the alignment tasks (the arguments of scripts/sft.py)", add_help=False
    )
    sft.add_argument("sft_args", nargs=argparse.REMAINDER, help="--config FILE and/or any SFT argument")

    recommend = commands.add_parser("recommend", help="top-k items for a history, from a trained run")
    recommend.add_argument("--run", type=Path, required=True, help="run folder written by scripts/sft.py")
    recommend.add_argument("--history", nargs="+", required=True, help="item ids, oldest first")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--num-beams", type=int, help="beam width (default 2k)")
    recommend.add_argument("--keep-history", action="store_true", help="allow items of the history")
    recommend.add_argument(
        "--renormalize", action="store_true", help="normalise each SID level over the codes the trie allows"
    )
    recommend.add_argument("--skip-unknown", action="store_true", help="drop unknown ids with a warning")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recommend.add_argument(
        "--mode", choices=["direct", "reason"], default="direct", help="reason: a <think> rationale before the SID"
    )

    evaluate = commands.add_parser("evaluate", help="evaluate a model on the validation or test split")
    evaluate.add_argument("--dataset", type=Path, required=True)
    evaluate.add_argument("--model", choices=("popularity",), default="popularity", help="baseline when no --run")
    evaluate.add_argument("--run", type=Path, help="evaluate this trained llmrec run instead of a baseline")
    evaluate.add_argument("--num-beams", type=int, help="beam width for --run (default 2 x 20)")
    evaluate.add_argument("--max-users", type=int, help="evaluate only the first N users (quick checks)")
    evaluate.add_argument(
        "--renormalize", action="store_true", help="--run: normalise each SID level over the codes the trie allows"
    )
    evaluate.add_argument("--split", choices=("valid", "test"), default="test")
    evaluate.add_argument("--keep-seen", action="store_true", help="do not exclude items already in the history")
    evaluate.add_argument("--out", type=Path, help="metrics.json to write")

    demo = commands.add_parser("demo", help="the end-to-end pipeline on MovieLens-100K, offline")
    demo.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--sft-steps", type=int, help="SFT budget in optimizer steps (default: the demo recipe's)")
    demo.add_argument("--eval-users", type=int, help="evaluate only the first N test users (default: all)")
    demo.add_argument("--model", help="base model: any HF causal LM name or folder (default: offline SmolLM2)")
    return parser


def import_source(args: argparse.Namespace):
    """Run the importer the `data prepare` subcommand names."""
    from llmrec.data import importers

    if args.source in ("ml-100k", "ml-1m"):
        if args.raw:
            reader = importers.import_grouplens_100k if args.source == "ml-100k" else importers.import_grouplens_1m
            return reader(args.raw)
        return importers.import_recbole_movielens(args.source, args.path)
    if args.source == "amazon":
        return importers.import_amazon(args.reviews, args.meta, args.name)
    if args.source == "amazon-office":
        return importers.import_amazon_office(args.path)
    text_fields = args.text_fields.split(",") if args.text_fields else None
    return importers.import_table(args.interactions, args.items, args.columns, text_fields, args.name)


def run_prepare(args: argparse.Namespace) -> None:
    config = PrepareConfig(
        min_user_interactions=args.min_user,
        min_item_interactions=args.min_item,
        duplicates=args.duplicates,
        max_history=args.max_history,
        strict=args.strict,
    )
    dataset = prepare(import_source(args), args.out, config, overwrite=args.overwrite)
    print(format_stats(dataset.name, dataset.meta["stats"]))
    print(f"wrote {args.out}")


def run_evaluate(args: argparse.Namespace) -> None:
    from eval.evaluate import evaluate_popularity, evaluate_run, save_metrics

    dataset = load_dataset(args.dataset)
    if args.run:
        metrics = evaluate_run(
            args.run, dataset, args.split, num_beams=args.num_beams, max_users=args.max_users,
            renormalize=args.renormalize,
        )  # fmt: skip
    else:
        metrics = evaluate_popularity(dataset, args.split, exclude_seen=not args.keep_seen)
    if args.out:
        save_metrics(metrics, args.out)
    print(json.dumps({key: value for key, value in metrics.items() if key != "dataset_sha256"}, indent=2))


def run_recommend(args: argparse.Namespace) -> None:
    from llmrec.recommender import Recommender

    recommender = Recommender.from_pretrained(args.run)
    recs = recommender.recommend(
        args.history, k=args.k, exclude_history=not args.keep_history, num_beams=args.num_beams,
        skip_unknown=args.skip_unknown, mode=args.mode, renormalize=args.renormalize,
    )  # fmt: skip
    if args.json:
        print(json.dumps([rec.__dict__ for rec in recs], indent=2, ensure_ascii=False))
        return
    for item_id in args.history[-5:]:
        item = recommender.items.get(item_id)
        print(f"  history  {item_id:>10}  {item.title if item else '(unknown)'}")
    if recs and recs[0].rationale is not None:
        print(f"  <think> {recs[0].rationale}")
    for rank, rec in enumerate(recs, start=1):
        print(f"{rank:>3}. {rec.item_id:>10}  {rec.score:8.3f}  {rec.sid}  {rec.title}")


def run_sft_command(argv: list[str]) -> None:
    from trl import ModelConfig, SFTConfig, TrlParser

    from llmrec.config import SFTScriptArguments
    from llmrec.training import run_sft

    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig), prog="llmrec sft")
    print(f"run saved to {run_sft(*parser.parse_args_and_config(argv))}")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)  # `sft` hands everything after it to TRL's own parser
    if unknown and args.command != "sft":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "data" and args.data_command == "prepare":
            run_prepare(args)
        elif args.command == "data" and args.data_command == "stats":
            dataset = load_dataset(args.dataset)
            print(format_stats(dataset.name, dataset.meta["stats"]))
        elif args.command == "index":
            from tokenizer.cli import run_index_command

            run_index_command(args)
        elif args.command == "sft":
            run_sft_command(unknown + args.sft_args)
        elif args.command == "recommend":
            run_recommend(args)
        elif args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "demo":
            from llmrec.demo import run_demo

            options = {"sft_steps": args.sft_steps} if args.sft_steps else {}
            run_demo(args.workdir, eval_users=args.eval_users, model=args.model, **options)
    except (DataError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
