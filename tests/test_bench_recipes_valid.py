"""bench_recipes_valid: recipes scored on validation in the folders bench_quality tests, compared per user."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eval.metrics import ndcg_gains
from tests.conftest import load_script

bench = load_script("bench_recipes_valid")
bench_quality = sys.modules[bench.llmrec_model.__module__]  # the copy bench_recipes_valid imported

METRICS = dict.fromkeys(bench.SHOWN, 0.1)


def test_valid_rows_train_the_runs_bench_quality_scores_on_test(tmp_path, monkeypatch):
    """The run folder and overrides are bench_quality's, so the recipe chosen here is the run scored on test; the
    validation result is cached under its own `_valid` name and scored on the validation split."""
    recipe = tmp_path / "sft_x.yaml"
    recipe.write_text("index_path: data/ml-100k/sid_index_cf.json\nmax_steps: 10\n")
    dataset = SimpleNamespace(name="tiny", path=Path("/data/tiny"), meta={"files": {}})
    trained, scored = [], []

    def train(config, out, overrides):
        trained.append((out, overrides))
        out.mkdir(parents=True)
        (out / "training_log.json").write_text(json.dumps({"train_seconds": 120.0, "timed_from_step": 0}))
        return out

    def evaluate(run, dataset, split, raw_path, num_beams=None):
        scored.append((split, raw_path.name))
        return {**METRICS, "user_ids": ["u1"], "target_ranks": [1]}

    monkeypatch.setattr(bench_quality, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench_quality, "trained_run", train)
    monkeypatch.setattr(bench_quality, "evaluate_run_cached", evaluate)
    monkeypatch.setattr(bench_quality, "save_metrics", lambda row, path: None)
    model = bench.llmrec_model(recipe, [43], dataset, tmp_path / "runs", None, split="valid")
    assert trained[0][0] == tmp_path / "runs" / "tiny" / "sft_x-seed43"
    overrides = trained[0][1]
    assert overrides[overrides.index("--seed") + 1] == "43"
    assert overrides[overrides.index("--index_path") + 1] == "/data/tiny/sid_index_cf.json"
    assert scored == [("valid", "llmrec_sft_x-seed43_valid.json")]
    assert model["name"].startswith("llmrec `sft_x`") and model["train_cpu_minutes"] == 2.0
    bench.llmrec_model(recipe, [43], dataset, tmp_path / "runs2", None)  # the test split keeps its plain name
    assert scored[-1] == ("test", "llmrec_sft_x-seed43.json")


def row(ranks: list[int], seed: int) -> dict:
    return {**METRICS, "seed": seed, "user_ids": ["u1", "u2", "u3", "u4"], "target_ranks": ranks}


def model(name: str, rows: list[dict]) -> dict:
    summary = {n: {"mean": 0.1, "std": 0.0} for n in bench.SHOWN}
    return {"name": name, "per_seed": rows, "summary": summary, "train_cpu_minutes": 60.0}


def test_every_recipe_is_compared_with_the_first_user_by_user():
    first = model("llmrec `a`", [row([1, 30, 2, 5], 42), row([3, 30, 2, 7], 43)])
    second = model("llmrec `b`", [row([1, 1, 4, 30], 44)])
    models = [first, second]
    bench.versus(first, [second], "ndcg@10_vs_first")
    reference = np.mean([ndcg_gains(np.array(r["target_ranks"]), 10) for r in first["per_seed"]], axis=0)
    ours = ndcg_gains(np.array([1, 1, 4, 30]), 10)
    assert second["ndcg@10_vs_first"]["diff"] == pytest.approx(float(np.mean(ours - reference)))
    assert "ndcg@10_vs_first" not in first
    result = {"dataset": "d", "n_items": 9, "models": models, "popularity_valid": {**METRICS, "n_users": 4}}
    table = bench.markdown(result)
    assert "validation split, 4 users" in table and "minus `llmrec `a``'s per user" in table
    assert "| llmrec `a` | 42,43 | 0.1000 ± 0.0000 |" in table and "| most-popular | - |" in table
    diff = second["ndcg@10_vs_first"]
    assert f"| 60.0 | {diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] |" in table


def test_a_tagged_screen_writes_its_own_table():
    assert bench.result_name("ml-100k", None) == "recipes_valid_ml-100k"
    assert bench.result_name("ml-100k", "select43") == "recipes_valid_ml-100k_select43"
    with pytest.raises(ValueError, match="--tag '../x'"):
        bench.result_name("ml-100k", "../x")
