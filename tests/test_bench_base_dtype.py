"""bench_base_dtype's arm parsing and table."""

import argparse

import pytest

from tests.conftest import load_script

bench = load_script("bench_base_dtype")


def test_arms_are_dtype_colon_steps():
    assert bench.parse_arm("bfloat16:240") == ("bfloat16", 240)
    for bad in ("float16:240", "bfloat16", "bfloat16:0", "float32:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected DTYPE:STEPS"):
            bench.parse_arm(bad)


def test_table_reports_speed_up_over_the_first_arm():
    metrics = {"recall@10": 0.1, "ndcg@10": 0.05, "recall@20": 0.2, "ndcg@20": 0.07, "coverage@10": 0.3}
    arm = {"steps": 240, "train_minutes": 12.0, "final_train_loss": 2.5, "valid": metrics}
    result = {
        "dataset": "d",
        "config": "c.yaml",
        "cpu": "Some CPU",
        "arms": [
            {**arm, "base_dtype": "float32", "seconds_per_step": 3.0},
            {**arm, "base_dtype": "bfloat16", "seconds_per_step": 2.4},
        ],
        "popularity_valid": {**metrics, "n_users": 9},
        "note": None,
    }
    table = bench.markdown(result)
    assert "| float32 | 240 | 3.00 | 1.00x | 12.0 | 2.500 | 0.1000 | 0.0500 |" in table
    assert "| bfloat16 | 240 | 2.40 | 1.25x |" in table and "| most-popular |" in table and "Some CPU" in table
