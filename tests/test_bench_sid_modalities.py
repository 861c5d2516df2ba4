"""bench_sid_modalities' arm parsing and table."""

import argparse
from pathlib import Path

import pytest

from tests.conftest import load_script

bench = load_script("bench_sid_modalities")


def test_arms_are_name_equals_index():
    assert bench.parse_arm("text+cf=data/x/cf.json") == ("text+cf", Path("data/x/cf.json"))
    for bad in ("data/x/cf.json", "=data/x.json", "text="):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=INDEX"):
            bench.parse_arm(bad)


def test_table_has_one_row_per_arm_and_most_popular():
    metrics = {"recall@10": 0.1, "ndcg@10": 0.05, "recall@20": 0.2, "ndcg@20": 0.07, "coverage@10": 0.3}
    sequence = {"next_same_first_code": 0.2, "chance": 0.01, "markov_hit@10": 0.3, "popular_hit@10": 0.1}
    arm = {"arm": "text+cf", "modalities": ["text", "cf"], "sequence": sequence, "train_minutes": 15.0}
    result = {
        "dataset": "d",
        "config": "c.yaml",
        "max_steps": 240,
        "arms": [{**arm, "final_train_loss": 2.5, "valid": metrics}],
        "popularity_valid": {**metrics, "n_users": 9},
        "note": "quiet machine",
    }
    table = bench.markdown(result)
    assert "| text+cf | text,cf | 0.200 | 0.010 | 0.300 | 0.100 | 15.0 | 2.500 | 0.1000 | 0.0500 |" in table
    assert "| most-popular |" in table and table.rstrip().endswith("quiet machine") and "240 steps" in table
