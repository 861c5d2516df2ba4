"""bench_cf_window: spread over quantizer seeds per window, and the table built from it."""

import pytest

from tests.conftest import load_script

bench = load_script("bench_cf_window")


def row(window: int, seed: int, markov: float) -> dict:
    return {
        "window": window,
        "seed": seed,
        "index": f"w{window}_s{seed}.json",
        "built_seconds": 1.0,
        "next_same_first_code": 0.08,
        "chance": 0.01,
        "markov_hit@10": markov,
        "popular_hit@10": 0.2,
    }


def test_summary_is_mean_std_and_range_over_each_windows_seeds():
    rows = [row(0, 1, 0.40), row(0, 2, 0.50), row(3, 1, 0.45), row(3, 2, 0.45), row(3, 3, 0.48)]
    windows = bench.summarise(rows)
    assert [entry["window"] for entry in windows] == [0, 3] and windows[1]["seeds"] == [1, 2, 3]
    assert windows[0]["markov_hit@10"] == {"mean": 0.45, "std": 0.05, "min": 0.40, "max": 0.50}
    assert windows[1]["markov_hit@10"]["mean"] == pytest.approx(0.46) and windows[1]["chance"]["std"] == 0.0


def test_table_has_one_row_per_window_and_one_line_per_index():
    rows = [row(0, 1, 0.40), row(0, 2, 0.50), row(3, 1, 0.45)]
    table = bench.markdown({"dataset": "d", "indices": rows, "windows": bench.summarise(rows)})
    first_row = (
        "| 0 | 2 | 0.0800 ± 0.0000 [0.080-0.080] | 0.0100 ± 0.0000 [0.010-0.010] | 0.4500 ± 0.0500 [0.400-0.500] |"
    )
    assert first_row in table
    assert "| 3 | 1 |" in table and "- window 3, seed 1: markov@10 0.4500" in table and "`d`" in table
