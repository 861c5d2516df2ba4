"""bench_beams: one cache file per arm (the default width's shared with the other benches), per-user deltas."""

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
    assert bench.raw_path(raw, run, 40, 40, renormalize=True) == raw / "llmrec_sft-seed44_valid_renorm.json"
    assert bench.raw_path(raw, run, 20, 40, renormalize=True) == raw / "llmrec_sft-seed44_valid_b20_renorm.json"


def test_arms_are_widths_with_an_optional_renormalize_suffix():
    assert bench.parse_arm("40") == (40, False) and bench.parse_arm("80r") == (80, True)
    for bad in ("r", "0", "40x", "-4", "4.5r"):
        with pytest.raises(argparse.ArgumentTypeError, match="a beam width"):
            bench.parse_arm(bad)


def test_every_width_is_scored_on_validation_and_compared_with_the_first(tmp_path, monkeypatch):
    ranks = {(40, False): [1, 30, 2, 5], (80, False): [1, 1, 4, 30], (40, True): [2, 3, 1, 5]}
    calls = []

    def evaluate(run, dataset, split, out, num_beams=None, renormalize=False):
        calls.append((split, out.name, num_beams, renormalize))
        metrics = dict.fromkeys(bench.SHOWN, num_beams / 1000 + renormalize / 10000)
        users = ["u1", "u2", "u3", "u4"]
        return {
            **metrics,
            "user_ids": users,
            "target_ranks": ranks[num_beams, renormalize],
            "n_users": 4,
            "wall_time_s": num_beams / 10,
        }

    dataset = SimpleNamespace(name="tiny", items=[f"i{n}" for n in range(50)])
    monkeypatch.setattr(bench, "load_dataset", lambda path: dataset)
    monkeypatch.setattr(bench, "evaluate_run_cached", evaluate)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_quality, "RESULTS", tmp_path)
    arms = [(40, False), (80, False), (40, True)]
    bench.main(argparse.Namespace(run=Path("runs/r"), dataset=Path("d"), beams=arms, tag=None))
    assert calls == [
        ("valid", "llmrec_r_valid.json", 40, False),
        ("valid", "llmrec_r_valid_b80.json", 80, False),
        ("valid", "llmrec_r_valid_renorm.json", 40, True),
    ]
    result = json.loads((tmp_path / "beams_tiny.json").read_text())
    first, second, third = result["widths"]
    for row, arm in ((second, (80, False)), (third, (40, True))):
        expected = np.mean(ndcg_gains(np.array(ranks[arm]), 10) - ndcg_gains(np.array(ranks[40, False]), 10))
        assert row["ndcg@10_vs_first"]["diff"] == pytest.approx(float(expected))
    assert "ndcg@10_vs_first" not in first and first["seconds_per_user"] == pytest.approx(1.0)
    assert third["renormalize"] is True and first["renormalize"] is False
    table = (tmp_path / "beams_tiny.md").read_text()
    assert "| 40 | 0.0400 |" in table and "| 80 | 0.0800 |" in table and "vs 40 beams" in table
    assert "| 40, renormalized | 0.0401 |" in table
    # A tagged run writes its own table and leaves the untagged one alone.
    bench.main(argparse.Namespace(run=Path("runs/r"), dataset=Path("d"), beams=[(40, True), (40, False)], tag="t"))
    assert "vs 40, renormalized beams" in (tmp_path / "beams_tiny_t.md").read_text()
    assert (tmp_path / "beams_tiny.md").read_text() == table
