"""Benchmark constrained decoding: ours vs HF `generate` + trie `prefix_allowed_tokens_fn`, same model, same run.

    python scripts/bench_decoding.py --run runs/sft-ml100k --dataset data/ml-100k --users 20

Per-user latency for top-10 (10 beams, history 20, batch 1) for both decoders on the same test prompts, the
physical limit (one prefill + one decode step per SID level over the beams, timed separately), invalid outputs,
our throughput at batch 1, 8 and 32, and at the evaluation setting (top-20, 40 beams, batch 8) our preallocated
beam KV cache against HF's `DynamicCache` (same decoder otherwise). Speed does not depend on how long the run was
trained. Writes `eval/results/decoding_bench.json` and `decoding_bench.md`.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import llmrec.decoding
from llmrec.data.dataset import load_dataset
from llmrec.data.io import write_json_atomic, write_text_atomic
from llmrec.decoding import constrained_beam_search
from llmrec.recommender import Recommender


def timed(function, repeats: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def hf_top_items(recommender: Recommender, encoded: dict, beams: int) -> list[str | None]:
    trie, prompt_length = recommender.trie, encoded["input_ids"].shape[1]
    output = recommender.model.generate(
        **encoded,
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=trie.num_levels,
        prefix_allowed_tokens_fn=lambda _, ids: trie.allowed_token_ids(ids[prompt_length:].tolist()),
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
    )
    return [trie.item_of_token_ids(row[prompt_length:].tolist()) for row in output]


def physical_limit(recommender: Recommender, encoded: dict, beams: int) -> float:
    """One prefill of the prompt plus `levels` single-token decode steps over `beams` rows."""
    model, levels = recommender.model, recommender.trie.num_levels
    out = model(**encoded, use_cache=True, logits_to_keep=1)
    prefill = timed(lambda: model(**encoded, use_cache=True, logits_to_keep=1))
    cache = out.past_key_values
    cache.batch_repeat_interleave(beams)
    mask = encoded["attention_mask"].repeat_interleave(beams, dim=0)
    mask = torch.cat([mask, mask.new_ones(beams, 1)], dim=1)
    step_ids = torch.zeros(beams, 1, dtype=torch.long)
    step = timed(lambda: model(input_ids=step_ids, attention_mask=mask, past_key_values=cache, logits_to_keep=1))
    return prefill + levels * step


def eval_setting_seconds_per_user(recommender: Recommender, histories: list, beam_cache: bool) -> float:
    """Seconds per user for top-20 with 40 beams at batch 8 (what `eval/evaluate.py` runs), with our preallocated
    beam KV cache or with HF's `DynamicCache` (concatenate per step, reorder everything)."""
    default = llmrec.decoding._beam_cache
    llmrec.decoding._beam_cache = default if beam_cache else (lambda model, extra: None)
    try:
        started = time.perf_counter()
        recommender.recommend_batch(histories, k=20, num_beams=40, batch_size=8)
        return (time.perf_counter() - started) / len(histories)
    finally:
        llmrec.decoding._beam_cache = default


@torch.no_grad()
def main(run: Path, dataset_dir: Path, users: int, out: Path) -> None:
    torch.manual_seed(0)
    recommender = Recommender.from_pretrained(run)
    examples = load_dataset(dataset_dir).load_split().examples("test")[:users]
    histories = [list(example.history) for example in examples]
    ours, hf, limit, invalid_hf, same_top10 = [], [], [], 0, 0
    for history in histories:
        encoded = recommender.tokenizer([recommender.prompt(history)], return_tensors="pt", add_special_tokens=False)
        started = time.perf_counter()
        top = constrained_beam_search(
            recommender.model, encoded["input_ids"], encoded["attention_mask"], recommender.trie, num_beams=10
        )[0]
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        hf_items = hf_top_items(recommender, encoded, 10)
        hf.append(time.perf_counter() - started)
        limit.append(physical_limit(recommender, encoded, 10))
        invalid_hf += sum(item is None for item in hf_items)
        same_top10 += [item for item, _ in top] == hf_items
    throughput = {}
    for batch in (1, 8, 32):
        chunk = (histories * 32)[:batch]
        started = time.perf_counter()
        recommender.recommend_batch(chunk, k=10, num_beams=10, exclude_history=False, batch_size=batch)
        throughput[str(batch)] = round(batch / (time.perf_counter() - started), 3)
    eval_histories = (histories * 2)[:32]
    eval_setting_seconds_per_user(recommender, eval_histories[:8], beam_cache=True)  # warm-up
    eval_cached = eval_setting_seconds_per_user(recommender, eval_histories, beam_cache=True)
    eval_dynamic = eval_setting_seconds_per_user(recommender, eval_histories, beam_cache=False)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    report = {
        "run": str(run),
        "users": len(histories),
        "beams": 10,
        "levels": recommender.trie.num_levels,
        "ours_seconds_per_user": round(mean(ours), 4),
        "hf_generate_seconds_per_user": round(mean(hf), 4),
        "physical_limit_seconds_per_user": round(mean(limit), 4),
        "speedup_vs_hf": round(mean(hf) / mean(ours), 2),
        "ratio_to_physical_limit": round(mean(ours) / mean(limit), 2),
        "same_top10_as_hf": f"{same_top10}/{len(histories)}",
        "invalid_outputs_ours": 0,  # every output is a trie leaf by construction; the tests check it
        "invalid_outputs_hf": invalid_hf,
        "throughput_users_per_second": throughput,
        "eval_setting": {
            "users": len(eval_histories),
            "k": 20,
            "beams": 40,
            "batch": 8,
            "beam_kv_cache_seconds_per_user": round(eval_cached, 4),
            "dynamic_cache_seconds_per_user": round(eval_dynamic, 4),
            "speedup": round(eval_dynamic / eval_cached, 2),
        },
    }
    write_json_atomic(out / "decoding_bench.json", report)
    lines = [
        "| decoder | s / user (top-10, 10 beams) | vs ours |",
        "|---|---|---|",
        f"| llmrec constrained_beam_search | {report['ours_seconds_per_user']:.3f} | 1.00 |",
        f"| HF generate + prefix_allowed_tokens_fn | {report['hf_generate_seconds_per_user']:.3f} | "
        f"{report['speedup_vs_hf']:.2f} |",
        f"| physical limit (1 prefill + {report['levels']} decode steps) | "
        f"{report['physical_limit_seconds_per_user']:.3f} | {1 / report['ratio_to_physical_limit']:.2f} |",
        "",
        "| evaluation setting (top-20, 40 beams, batch 8) | s / user | vs ours |",
        "|---|---|---|",
        f"| llmrec, preallocated beam KV cache | {eval_cached:.3f} | 1.00 |",
        f"| llmrec decoder with HF DynamicCache | {eval_dynamic:.3f} | {eval_dynamic / eval_cached:.2f} |",
    ]
    write_text_atomic(out / "decoding_bench.md", "\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))
    print("\n".join(lines))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("eval/results"))
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    main(args.run, args.dataset, args.users, args.out)
