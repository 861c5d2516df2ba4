"""bench_cf_window: spread over quantizer seeds per arm, the table built from it, and where each arm's index lives."""

from pathlib import Path

import pytest

from tests.conftest import load_script

bench = load_script("bench_cf_window")


def row(window: int, seed: int, markov: float, modalities=("text", "cf"), cf_weight: float = 1.0) -> dict:
    return {
        "arm": bench.arm_name(modalities, window, cf_weight),
        "modalities": list(modalities),
        "window": window,
        "cf_weight": cf_weight,
        "seed": seed,
        "index": f"w{window}_s{seed}.json",
        "built_seconds": 1.0,
        "next_same_first_code": 0.08,
        "chance": 0.01,
        "markov_hit@10": markov,
        "popular_hit@10": 0.2,
    }


def test_summary_is_mean_std_and_range_over_each_arms_seeds():
    rows = [row(0, 1, 0.40), row(0, 2, 0.50), row(3, 1, 0.45), row(3, 2, 0.45), row(3, 3, 0.48)]
    arms = bench.summarise(rows)
    assert [entry["arm"] for entry in arms] == ["text+cf w0 x1", "text+cf w3 x1"] and arms[1]["seeds"] == [1, 2, 3]
    assert arms[0]["markov_hit@10"] == {"mean": 0.45, "std": 0.05, "min": 0.40, "max": 0.50}
    assert arms[1]["markov_hit@10"]["mean"] == pytest.approx(0.46) and arms[1]["chance"]["std"] == 0.0


def test_arms_that_differ_only_in_weight_or_modalities_are_kept_apart():
    rows = [row(0, 1, 0.40), row(0, 1, 0.60, cf_weight=2.0), row(0, 2, 0.50, cf_weight=2.0), row(0, 1, 0.7, ("cf",))]
    arms = bench.summarise(rows)
    assert [entry["arm"] for entry in arms] == ["text+cf w0 x1", "text+cf w0 x2", "cf w0 x1"]
    assert arms[1]["markov_hit@10"]["mean"] == pytest.approx(0.55) and arms[2]["seeds"] == [1]


def test_table_has_one_row_per_arm_and_one_line_per_index():
    rows = [row(0, 1, 0.40), row(0, 2, 0.50), row(3, 1, 0.45)]
    table = bench.markdown({"dataset": "d", "indices": rows, "arms": bench.summarise(rows)})
    first_row = (
        "| text+cf w0 x1 | 2 | 0.0800 ± 0.0000 [0.080-0.080] | 0.0100 ± 0.0000 [0.010-0.010] "
        "| 0.4500 ± 0.0500 [0.400-0.500] |"
    )
    assert first_row in table
    assert "| text+cf w3 x1 | 1 |" in table and "- text+cf w3 x1, seed 1: markov@10 0.4500" in table
    assert "`d`" in table


def test_default_fusion_keeps_the_first_benchs_file_names_and_other_arms_get_their_own():
    work = Path("w")
    assert bench.index_file(work, ("text", "cf"), 3, 1.0, 42) == work / "w3_s42.json"
    assert bench.index_file(work, ("text", "cf"), 0, 2.0, 42) == work / "text+cf_w0_x2_s42.json"
    assert bench.index_file(work, ("cf",), 0, 1.0, 1) == work / "cf_w0_x1_s1.json"
    assert bench.index_file(work, ("text", "cf"), 0, 0.5, 1) != bench.index_file(work, ("text", "cf"), 0, 2.0, 1)
