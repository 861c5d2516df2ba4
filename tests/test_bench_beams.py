"""bench_beams: one cache file per beam width (the default one shared with the other benches), per-user deltas."""

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eval.metrics import ndcg_gains
from tests.conftest import load_script

bench = load_script("bench_beams")
bench_quality = sys.modules[bench.save_bench.__module__]


def test_the_default_width_shares_the_validation_cache_of_the_other_benches():
    run, raw = Path("runs/x/sft-seed44"), Path("raw")
    assert bench.raw_path(raw, run, 40, default=40) == raw / "llmrec_sft-seed44_valid.json"
    assert bench.raw_path(raw, run, 80, default=40) == raw / "llmrec_sft-seed44_valid_b80.json"


def test_every_width_is_scored_on_validation_and_compared_with_the_first(tmp_path, monkeypatch):
    ranks = {40: [1, 30, 2, 5], 80: [1, 1, 4, 30]}
    calls = []

    def evaluate(run, dataset, split, out, num_beams=None):
        calls.append((split, out.name, num_beams))
        metrics = dict.fromkeys(bench.SHOWN, num_beams / 1000)
        users = ["u1", "u2", "u3", "u4"]
        return {
            **metrics,
            "user_ids": users,
            "target_ranks": ranks[num_beams],
            "n_users": 4,
            "wall_time_s": num_beams / 10,
        }

    dataset = SimpleNamespace(name="tiny", items=[f"i{n}" for n in range(50)])
    monkeypatch.setattr(bench, "load_dataset", lambda path: dataset)
    monkeypatch.setattr(bench, "evaluate_run_cached", evaluate)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_quality, "RESULTS", tmp_path)
    bench.main(argparse.Namespace(run=Path("runs/r"), dataset=Path("d"), beams=[40, 80]))
    assert calls == [("valid", "llmrec_r_valid.json", 40), ("valid", "llmrec_r_valid_b80.json", 80)]
    result = json.loads((tmp_path / "beams_tiny.json").read_text())
    first, second = result["widths"]
    expected = np.mean(ndcg_gains(np.array(ranks[80]), 10) - ndcg_gains(np.array(ranks[40]), 10))
    assert second["ndcg@10_vs_first"]["diff"] == pytest.approx(float(expected))
    assert "ndcg@10_vs_first" not in first and first["seconds_per_user"] == pytest.approx(1.0)
    table = (tmp_path / "beams_tiny.md").read_text()
    assert "| 40 | 0.0400 |" in table and "| 80 | 0.0800 |" in table and "vs 40 beams" in table
