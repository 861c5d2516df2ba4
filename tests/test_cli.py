import json
import subprocess
import sys

import pytest

from llmrec.cli import main, parse_columns
from llmrec.data import load_dataset


def _write_table(tmp_path):
    (tmp_path / "items.csv").write_text("iid,name,genre\n1,One,x\n2,Two,y\n3,Three,x\n4,Four,y\n", encoding="utf-8")
    rows = ["uid,iid,ts"] + [f"u{u},{i},{t}" for u in (1, 2) for t, i in enumerate((1, 2, 3, 4))]
    (tmp_path / "inter.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_prepare_csv_then_stats_and_evaluate(tmp_path, capsys):
    _write_table(tmp_path)
    out = tmp_path / "ds"
    argv = ["data", "prepare", "csv", "--interactions", str(tmp_path / "inter.csv"), "--items"]
    argv += [str(tmp_path / "items.csv"), "--columns", "user_id=uid,item_id=iid,timestamp=ts,title=name"]
    assert main([*argv, "--out", str(out)]) == 0
    dataset = load_dataset(out)
    assert dataset.meta["counts"] == {"users": 2, "items": 4, "interactions": 8}
    assert dataset.items["2"].fields == {"genre": "y"}
    assert "wrote" in capsys.readouterr().out

    assert main(["data", "stats", str(out)]) == 0
    assert "users                  2" in capsys.readouterr().out

    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--dataset", str(out), "--split", "valid", "--out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    # Both users: train 1 2, valid 3 -> popularity ranks 1 2 3 4, seen {1, 2} excluded -> 3 first.
    assert metrics["recall@5"] == 1.0 and metrics["mrr@10"] == 1.0 and metrics["split"] == "valid"


def test_existing_output_is_an_error_not_an_overwrite(tmp_path, capsys):
    _write_table(tmp_path)
    out = tmp_path / "ds"
    out.mkdir()
    argv = ["data", "prepare", "csv", "--interactions", str(tmp_path / "inter.csv"), "--items"]
    argv += [str(tmp_path / "items.csv"), "--columns", "item_id=iid,user_id=uid,title=name", "--out", str(out)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_bad_min_user_is_reported(tmp_path, capsys):
    _write_table(tmp_path)
    argv = ["data", "prepare", "csv", "--interactions", str(tmp_path / "inter.csv"), "--items"]
    argv += [str(tmp_path / "items.csv"), "--columns", "item_id=iid,user_id=uid,title=name"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--min-user", "2"]) == 2
    assert "min_user_interactions must be >= 3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sft_subcommand_forwards_to_the_trl_parser():
    result = subprocess.run([sys.executable, "-m", "llmrec", "sft", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert (
        "--dataset_dir" in result.stdout
        and "--lora_r" in result.stdout
        and "--train_sampling_strategy" in result.stdout
    )


def test_parse_columns():
    assert parse_columns("user_id=uid, item_id = iid") == {"user_id": "uid", "item_id": "iid"}
    with pytest.raises(Exception, match="llmrec_name=file_column"):
        parse_columns("user_id")


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "llmrec", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("data", "index", "sft", "evaluate", "demo"):
        assert command in result.stdout


@pytest.mark.integration
def test_demo_on_movielens_100k(tmp_path, capsys, caplog):
    """The README's main job with a 2-step SFT budget and 24 test users: real ml-100k, index, SmolLM2 SFT,
    constrained-decoder evaluation next to most-popular, example users; a second run reuses every stage."""
    workdir = tmp_path / "demo"
    args = ["demo", "--workdir", str(workdir), "--sft-steps", "2", "--eval-users", "24"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "users                943" in out and "items              1,682" in out
    assert "semantic-ID index: 1682 items, 3 levels x 256 codes" in out and "-> 0.00%" in out
    assert (workdir / "index" / "sid_index.quantizer.safetensors").is_file()
    assert "| llmrec (SmolLM2, demo budget) |" in out and "| most-popular |" in out
    assert out.count("held-out next item") == 3 and out.count("llmrec top-5") == 3
    assert "test split, 24 users" in out
    llmrec = json.loads((workdir / "eval" / "llmrec_test.json").read_text())
    assert llmrec["n_users"] == 24 and llmrec["invalid_rate"] == 0.0
    assert json.loads((workdir / "run" / "run_config.json").read_text())["script_args"]["eval_task"] == "sequence"
    # RecBole 1.2.1's Pop with history masked gives R@10 .0838 / N@10 .0446 on its own split (BENCHMARKS.md);
    # ours differs only in tie-breaks, so it must land close.
    from eval.evaluate import evaluate_popularity
    from llmrec.data.dataset import load_dataset

    metrics = evaluate_popularity(load_dataset(workdir / "data" / "ml-100k"), "test")
    assert metrics["n_users"] == 943
    assert 0.07 < metrics["recall@10"] < 0.10 and 0.035 < metrics["ndcg@10"] < 0.055
    # A second run reuses every stage: no training, no re-evaluation.
    adapter = (workdir / "run" / "adapter_model.safetensors").read_bytes()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "Reusing the trained run" in caplog.text and "llmrec_test.json" in caplog.text
    assert (workdir / "run" / "adapter_model.safetensors").read_bytes() == adapter
    # A different budget retrains, keeping the old run aside.
    assert main(["demo", "--workdir", str(workdir), "--sft-steps", "1", "--eval-users", "8"]) == 0
    assert len(list(workdir.glob("run.stale-*"))) == 1
