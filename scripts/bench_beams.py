r"""Beam width of the constrained decoder against ranking quality and time, on the validation split of one run.

    python scripts/bench_beams.py --run runs/quality/ml-100k/sft_ml100k_cf_bf16-seed44 --dataset data/ml-100k \
        --beams 40 80 20

Every width scores all users' top-20 (history excluded) with the same adapter; the default width (2 x 20 = 40) is
cached as `eval/results/raw/<dataset>/llmrec_<run>_valid.json`, the file bench_quality.py and bench_grpo.py share,
and the others as `..._valid_b<W>.json`. Each width after the first gets its NDCG@10 minus the first width's per
user (paired bootstrap 95 % interval): a width is chosen here, on validation, never on test. Writes
`eval/results/beams_<dataset>.json` and `.md`.
"""

import argparse
import logging
from pathlib import Path

from bench_quality import RESULTS, ndcg10_change, save_bench  # scripts/ is on sys.path when this file runs as a script

from eval.evaluate import beam_width, evaluate_run_cached
from llmrec.data.dataset import load_dataset

SHOWN = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "coverage@10")


def raw_path(raw: Path, run: Path, beams: int, default: int) -> Path:
    """The cache file of one width: the shared `_valid.json` for the default width, `_valid_b<W>.json` otherwise."""
    return raw / f"llmrec_{run.name}_valid{'' if beams == default else f'_b{beams}'}.json"


def markdown(result: dict) -> str:
    rows = result["widths"]
    lines = [
        f"Validation split of `{result['dataset']}` ({result['n_users']} users, full ranking, history excluded), run "
        f"`{result['run']}`, top-20 per user. `s / user`: decoding wall time of the whole split over its users. "
        f"`vs {rows[0]['num_beams']} beams`: NDCG@10 change per user, paired bootstrap 95 % CI.",
        "",
        "| beams | " + " | ".join(SHOWN) + f" | s / user | vs {rows[0]['num_beams']} beams |",
        "|---|" + "---|" * (len(SHOWN) + 2),
    ]
    for row in rows:
        diff = row.get("ndcg@10_vs_first")
        versus = f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else ""
        cells = " | ".join(f"{row[key]:.4f}" for key in SHOWN)
        lines.append(f"| {row['num_beams']} | {cells} | {row['seconds_per_user']:.3f} | {versus} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    raw = RESULTS / "raw" / dataset.name
    default = beam_width(dataset, None)
    rows, first = [], None
    for beams in args.beams:
        out = raw_path(raw, args.run, beams, default)
        saved = evaluate_run_cached(args.run, dataset, "valid", out, num_beams=beams)
        row = {"num_beams": beams, **{key: saved[key] for key in SHOWN}}
        row["seconds_per_user"] = saved["wall_time_s"] / saved["n_users"]
        if first is None:
            first = saved
        else:
            row["ndcg@10_vs_first"] = ndcg10_change(first, saved)
        rows.append(row)
    result = {"dataset": dataset.name, "run": str(args.run), "n_users": saved["n_users"], "widths": rows}
    save_bench(f"beams_{dataset.name}", result, markdown(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished SFT run folder")
    parser.add_argument("--dataset", type=Path, required=True, help="its prepared dataset folder")
    parser.add_argument("--beams", type=int, nargs="+", default=[40, 20, 80], help="widths, the first the reference")
    main(parser.parse_args())
