"""bench_quality's bookkeeping: which cached SASRec results are reused, and the paired per-user comparison."""

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eval.metrics import ndcg_gains
from tests.conftest import load_script

bench_quality = load_script("bench_quality")

FILES = {"train.jsonl": "abc"}


def test_cached_sasrec_is_reused_only_for_the_same_split_and_budget():
    saved = {"dataset_sha256": FILES, "config": {"max_seconds": 600.0}}
    assert bench_quality.sasrec_cache_matches(saved, FILES, 600.0)
    assert not bench_quality.sasrec_cache_matches(saved, FILES, 240.0)  # another budget trains other epochs
    assert not bench_quality.sasrec_cache_matches(saved, {"train.jsonl": "xyz"}, 600.0)
    assert not bench_quality.sasrec_cache_matches({**saved, "config": {}}, FILES, 600.0)


def test_an_uncapped_sasrec_budget_is_cached_apart_from_the_default_budget():
    assert bench_quality.sasrec_budget("none") is None
    assert bench_quality.sasrec_budget("1800") == 1800.0
    for bad in ("0", "-5", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match="'none'"):
            bench_quality.sasrec_budget(bad)
    assert bench_quality.sasrec_result_name(42, 600.0) == "sasrec_seed42.json"  # the files already on disk
    assert bench_quality.sasrec_result_name(42, None) == "sasrec_seed42_uncapped.json"
    assert bench_quality.sasrec_result_name(43, 1800.0) == "sasrec_seed43_1800s.json"
    saved = {"dataset_sha256": FILES, "config": {"max_seconds": None}}
    assert bench_quality.sasrec_cache_matches(saved, FILES, None)
    assert not bench_quality.sasrec_cache_matches(saved, FILES, 600.0)


def test_the_sasrec_row_says_whether_the_budget_cut_a_seed_short():
    stopped = [{"train_time_s": 350.0}, {"train_time_s": 420.0}]
    cut = [{"train_time_s": 350.0}, {"train_time_s": 640.0}]  # the epoch that crosses the cap still ends
    assert bench_quality.sasrec_row_name(stopped, 600.0) == "SASRec (RecBole, early-stopped)"
    assert bench_quality.sasrec_row_name(cut, 600.0) == "SASRec (RecBole, cut at 600 s)"
    assert bench_quality.sasrec_row_name(cut, None) == "SASRec (RecBole, early-stopped)"


def seed_row(ranks: list[int], users=("u1", "u2", "u3", "u4")) -> dict:
    return {"user_ids": list(users), "target_ranks": ranks}


def test_llmrec_rows_are_compared_with_sasrec_user_by_user_over_seed_means():
    sasrec = [seed_row([1, 30, 2, 5]), seed_row([3, 30, 2, 7])]
    llmrec = [seed_row([1, 1, 4, 30])]
    models = [
        {"name": "most-popular", "per_seed": [seed_row([9, 9, 9, 9])]},
        {"name": "SASRec (RecBole)", "per_seed": sasrec},
        {"name": "llmrec `x`", "per_seed": llmrec},
        {"name": "llmrec `old`", "per_seed": [{"ndcg@10": 0.1}]},  # cached before per-user ranks: skipped
    ]
    bench_quality.versus_sasrec(models)
    reference = np.mean([ndcg_gains(np.array(row["target_ranks"]), 10) for row in sasrec], axis=0)
    ours = ndcg_gains(np.array(llmrec[0]["target_ranks"]), 10)
    assert models[2]["ndcg@10_vs_sasrec"]["diff"] == pytest.approx(float(np.mean(ours - reference)))
    assert "ndcg@10_vs_sasrec" not in models[0] and "ndcg@10_vs_sasrec" not in models[3]
    with pytest.raises(ValueError, match="different users"):
        bench_quality.mean_user_gains([seed_row([1, 2, 3, 4]), seed_row([1, 2, 3, 4], users=("a", "b", "c", "d"))])


def test_each_recipe_can_have_its_own_seeds():
    assert bench_quality.recipe_with_seeds("configs/a.yaml") == (Path("configs/a.yaml"), None)
    assert bench_quality.recipe_with_seeds("configs/a.yaml=42,43,44") == (Path("configs/a.yaml"), [42, 43, 44])
    assert bench_quality.recipe_with_seeds("configs/a.yaml=7") == (Path("configs/a.yaml"), [7])
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        bench_quality.recipe_with_seeds("configs/a.yaml=42;43")
    with pytest.raises(argparse.ArgumentTypeError, match="listed twice"):
        bench_quality.recipe_with_seeds("configs/a.yaml=42,42")


def test_a_run_with_partly_unknown_training_time_is_refused(tmp_path):
    (tmp_path / "training_log.json").write_text(json.dumps({"train_seconds": 50.0, "timed_from_step": 0}))
    assert bench_quality.run_train_seconds(tmp_path) == 50.0
    (tmp_path / "training_log.json").write_text(json.dumps({"train_seconds": 50.0}))  # logged before the clock
    assert bench_quality.run_train_seconds(tmp_path) == 50.0
    (tmp_path / "training_log.json").write_text(json.dumps({"train_seconds": 50.0, "timed_from_step": 300}))
    with pytest.raises(SystemExit, match="from step 300 only"):
        bench_quality.run_train_seconds(tmp_path)


def fake_dataset(files=FILES, users=3, items=50):
    split = SimpleNamespace(users=[object()] * users)
    return SimpleNamespace(meta={"files": files}, items=[f"i{n}" for n in range(items)], load_split=lambda: split)


def raw_result(**changes) -> dict:
    saved = {"dataset_sha256": FILES, "split": "test", "n_users": 3, "config": {"num_beams": 40}, "ndcg@10": 0.1}
    return {**saved, "train_seconds": 600.0, **changes}


def test_a_cached_result_stands_in_for_a_deleted_run_only_when_it_matches():
    dataset = fake_dataset()
    assert bench_quality.reusable_without_run(raw_result(), dataset, None)
    assert bench_quality.reusable_without_run(raw_result(config={"num_beams": 8}), dataset, 8)
    assert not bench_quality.reusable_without_run(raw_result(), dataset, 8)  # another beam width
    assert not bench_quality.reusable_without_run(raw_result(dataset_sha256={"train.jsonl": "x"}), dataset, None)
    assert not bench_quality.reusable_without_run(raw_result(split="valid"), dataset, None)
    assert not bench_quality.reusable_without_run(raw_result(n_users=2), dataset, None)  # a --max-users run
    without_time = raw_result()
    del without_time["train_seconds"]
    assert not bench_quality.reusable_without_run(without_time, dataset, None)


def test_llmrec_result_reuses_the_raw_file_of_a_deleted_run_and_else_trains(tmp_path, monkeypatch):
    dataset, raw, run = fake_dataset(), tmp_path / "raw.json", tmp_path / "run"
    trained = []

    def train(config, out, overrides):
        trained.append(out)
        out.mkdir()
        (out / "training_log.json").write_text(json.dumps({"train_seconds": 42.0, "timed_from_step": 0}))
        return out

    monkeypatch.setattr(bench_quality, "trained_run", train)
    monkeypatch.setattr(bench_quality, "evaluate_run_cached", lambda *args, **kwargs: raw_result(train_seconds=None))
    raw.write_text(json.dumps(raw_result()))
    assert bench_quality.llmrec_seed_result(Path("r.yaml"), run, [], dataset, raw, None)["train_seconds"] == 600.0
    assert trained == []  # the run folder is gone, its raw result matches: no retraining

    raw.write_text(json.dumps(raw_result(split="valid")))  # does not match: train and score again
    row = bench_quality.llmrec_seed_result(Path("r.yaml"), run, [], dataset, raw, None)
    assert trained == [run] and row["train_seconds"] == 42.0
    assert json.loads(raw.read_text())["train_seconds"] == 42.0  # saved for the day the run folder is gone


def test_a_recipe_trains_on_its_own_index_file_in_the_benchmarked_dataset():
    cf = {"index_path": "data/ml-100k/sid_index_cf.json"}
    assert bench_quality.recipe_index(cf, Path("/tmp/ml")) == Path("/tmp/ml/sid_index_cf.json")
    assert bench_quality.recipe_index({}, Path("/tmp/ml")) == Path("/tmp/ml/sid_index.json")


def test_save_bench_writes_json_and_table_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_quality, "RESULTS", tmp_path)
    bench_quality.save_bench("layers_x", {"arms": [1, 2]}, "| a |\n")
    assert json.loads((tmp_path / "layers_x.json").read_text()) == {"arms": [1, 2]}
    assert (tmp_path / "layers_x.md").read_text() == "| a |\n" and "| a |" in capsys.readouterr().out


def test_update_readme_replaces_only_the_results_block(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality_tiny.json").write_text(json.dumps({"dataset": "tiny"}), encoding="utf-8")
    (results / "quality_tiny.md").write_text("| model | ndcg@10 |\n", encoding="utf-8")
    monkeypatch.setattr(bench_quality, "RESULTS", results)
    readme = tmp_path / "README.md"
    start, end = bench_quality.README_START, bench_quality.README_END
    readme.write_text(f"# intro\n{start}\nstale table\n{end}\nreading kept\n", encoding="utf-8")
    bench_quality.update_readme(readme)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# intro\n{start}\n#### tiny\n\n| model | ndcg@10 |\n")
    assert "stale table" not in text and text.endswith(f"{end}\nreading kept\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", "results"]  # no temporary file left

    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="lacks the"):
        bench_quality.update_readme(readme)
    assert readme.read_text(encoding="utf-8") == "no markers\n"


def test_tag_argument_rejects_a_tag_that_is_not_a_plain_file_name_part_when_the_command_line_is_read():
    assert bench_quality.tag_argument("select-43_b") == "select-43_b"
    for bad in ("../x", "a b", "x/y"):
        with pytest.raises(argparse.ArgumentTypeError, match="letters, digits"):
            bench_quality.tag_argument(bad)
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", type=bench_quality.tag_argument)
    assert parser.parse_args(["--tag", "l2"]).tag == "l2"
