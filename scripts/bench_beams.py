r"""Decoder settings (beam width, per-level renormalisation) against ranking quality and time, on the validation
split of one run.

    python scripts/bench_beams.py --run runs/quality/ml-100k/sft_ml100k_cf_bf16-seed44 --dataset data/ml-100k \
        --beams 40 80 20
    python scripts/bench_beams.py --run RUN --dataset data/ml-100k --beams 40 40r --tag renorm

Every arm scores all users' top-20 (history excluded) with the same adapter. An arm is a width, with an `r` suffix
for `renormalize=True` (each SID level normalised over the codes the trie allows, `constrained_beam_search`). The
default width (2 x 20 = 40) without renormalisation is cached as
`eval/results/raw/<dataset>/llmrec_<run>_valid.json`, the file bench_quality.py and bench_grpo.py share, the others
as `..._valid_b<W>.json` and `..._valid[_b<W>]_renorm.json`. Each arm after the first gets its NDCG@10 minus the
first arm's per user (paired bootstrap 95 % interval): a setting is chosen here, on validation, never on test.
Writes `eval/results/beams_<dataset>[_<tag>].json` and `.md`.
"""

import argparse
import logging
from pathlib import Path

from bench_quality import (  # scripts/ is on sys.path when this file runs as a script
    RESULTS,
    ndcg10_change,
    save_bench,
    tag_argument,
    tagged_stem,
)

from eval.evaluate import beam_width, evaluate_run_cached
from llmrec.data.dataset import load_dataset

SHOWN = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")


def parse_arm(text: str) -> tuple[int, bool]:
    """`"40"` -> (40, False); `"40r"` -> (40, True): a beam width, renormalised with the `r` suffix."""
    width = text[:-1] if text.endswith("r") else text
    if not width.isdigit() or int(width) < 1:
        raise argparse.ArgumentTypeError(f"arm {text!r}: a beam width, optionally followed by r (e.g. 40 or 40r)")
    return int(width), text.endswith("r")


def arm_label(beams: int, renormalize: bool) -> str:
    return f"{beams}, renormalized" if renormalize else str(beams)


def raw_path(raw: Path, run: Path, beams: int, default: int, renormalize: bool = False) -> Path:
    """The cache file of one arm: the shared `_valid.json` for the default width, `_valid_b<W>.json` for another
    width, with `_renorm` before `.json` when renormalised."""
    width = "" if beams == default else f"_b{beams}"
    return raw / f"llmrec_{run.name}_valid{width}{'_renorm' if renormalize else ''}.json"


def markdown(result: dict) -> str:
    rows = result["widths"]
    first = arm_label(rows[0]["num_beams"], rows[0].get("renormalize", False))
    lines = [
        f"Validation split of `{result['dataset']}` ({result['n_users']} users, full ranking, history excluded), run "
        f"`{result['run']}`, top-20 per user. `renormalized`: each SID level normalised over the codes the trie "
        "allows. `s / user`: decoding wall time of the whole split over its users. "
        f"`vs {first} beams`: NDCG@10 change per user, paired bootstrap 95 % CI.",
        "",
        "| beams | " + " | ".join(SHOWN) + f" | s / user | vs {first} beams |",
        "|---|" + "---|" * (len(SHOWN) + 2),
    ]
    for row in rows:
        diff = row.get("ndcg@10_vs_first")
        versus = f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else ""
        cells = " | ".join(f"{row[key]:.4f}" for key in SHOWN)
        label = arm_label(row["num_beams"], row.get("renormalize", False))
        lines.append(f"| {label} | {cells} | {row['seconds_per_user']:.3f} | {versus} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    raw = RESULTS / "raw" / dataset.name
    default = beam_width(dataset, None)
    rows, first = [], None
    for beams, renormalize in args.beams:
        out = raw_path(raw, args.run, beams, default, renormalize)
        saved = evaluate_run_cached(args.run, dataset, "valid", out, num_beams=beams, renormalize=renormalize)
        row = {"num_beams": beams, "renormalize": renormalize, **{key: saved[key] for key in SHOWN}}
        row["seconds_per_user"] = saved["wall_time_s"] / saved["n_users"]
        if first is None:
            first = saved
        else:
            row["ndcg@10_vs_first"] = ndcg10_change(first, saved)
        rows.append(row)
    result = {"dataset": dataset.name, "run": str(args.run), "n_users": saved["n_users"], "widths": rows}
    save_bench(tagged_stem(f"beams_{dataset.name}", args.tag), result, markdown(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished SFT run folder")
    parser.add_argument("--dataset", type=Path, required=True, help="its prepared dataset folder")
    parser.add_argument(
        "--beams",
        type=parse_arm,
        nargs="+",
        default=[(40, False), (20, False), (80, False)],
        help="arms: a width, with an r suffix to renormalise (40 40r 20); the first is the reference",
    )
    parser.add_argument(
        "--tag", type=tag_argument, help="write beams_<dataset>_<tag> instead, keeping the untagged table"
    )
    main(parser.parse_args())
