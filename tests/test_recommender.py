"""The inference API on a tiny trained run: valid items, exclusion, batching, and every documented error."""

import json
import re
import shutil

import numpy as np
import pytest
from trl import ModelConfig, SFTConfig

from llmrec.config import SFTScriptArguments
from llmrec.data.io import DataError
from llmrec.data.prepare import prepare
from llmrec.recommender import Recommender
from llmrec.sid import SemanticIdIndex, save_index
from llmrec.training import run_sft
from tests.conftest import make_raw, make_tiny_model, make_tiny_tokenizer


def train_tiny_run(root, **script_args):
    """A 2-step tiny-model run on the 6-item dataset (SIDs (n // 3, n % 3) on 4 x 4 codebooks)."""
    dataset = prepare(make_raw(), root / "data")
    index = SemanticIdIndex({i: (n // 3, n % 3) for n, i in enumerate(dataset.items)}, (4, 4))
    index.catalog_sha256 = dataset.meta["files"]["items.jsonl"]
    save_index(index, root / "sid.json")
    tokenizer = make_tiny_tokenizer()
    make_tiny_model(len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    out = root / "run"
    run_sft(
        SFTScriptArguments(dataset_dir=str(root / "data"), index_path=str(root / "sid.json"), **script_args),
        SFTConfig(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            report_to="none",
            use_cpu=True,
            bf16=False,
            eval_strategy="no",
            save_steps=100,
            max_length=256,
        ),  # fmt: skip
        ModelConfig(model_name_or_path=str(root / "model"), lora_r=4, lora_alpha=8),
    )
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("rec"))


@pytest.fixture(
    scope="module", params=[(True, ", "), (False, ", "), (False, "")], ids=["chat", "plain", "plain-no-separator"]
)
def sequence_run_dir(tmp_path_factory, request):
    chat, separator = request.param
    return train_tiny_run(
        tmp_path_factory.mktemp("seq"),
        tasks="sequence=0,item2sid=0",
        eval_task="sequence",
        chat=chat,
        item_separator=separator,
    )


def test_sequence_context_rows_start_with_the_inference_prompt_of_their_first_trained_item(tmp_path_factory):
    """A `sequence_context` training row's prompt is the recommender's prompt for the context items, and TRL's
    prompt + completion tokens split there: the loss falls on exactly the trained SIDs, and the decoder sees what
    training saw. With `sequence_shifts` the shifted cut's windows (u1: (| a b), (b | c)) hold to the same."""
    run = train_tiny_run(
        tmp_path_factory.mktemp("ctx"),
        tasks="sequence=0",
        eval_task="sequence",
        chat=False,
        max_history=2,
        sequence_context=1,
        sequence_shifts=2,
    )
    recommender = Recommender.from_pretrained(run)
    tokenizer, item_of = recommender.tokenizer, recommender.index.item_of()
    rows = [json.loads(line) for line in (run / "prompt_data" / "train.jsonl").read_text().splitlines()]
    with_context = [row for row in rows if row["prompt"].endswith(recommender.separator)]
    assert len(with_context) == 2  # u1's windows (a | b c) and, shifted by one item, (b | c)
    for row in with_context:
        sids = re.findall(r"(?:<[a-z]_\d+>){2}", row["prompt"])
        context = [item_of[recommender.index.parse(sid)] for sid in sids]
        assert len(context) == 1
        # same answer prefix as inference (the instruction is the row's paraphrase; inference takes the first)
        assert row["prompt"].split("Answer: ")[1] == recommender.prompt(context).split("Answer: ")[1]
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
    script_args = json.loads((run / "run_config.json").read_text())["script_args"]
    assert script_args["sequence_context"] == 1 and script_args["sequence_shifts"] == 2
    assert json.loads((run / "prompt_data" / "prompts.json").read_text())["counts"]["train"] == 5  # u1 3, u3 2


def test_recommend_returns_valid_distinct_items_outside_the_history(run_dir):
    recommender = Recommender.from_pretrained(run_dir)
    recs = recommender.recommend(["a", "b"], k=4)
    assert len(recs) == 4 and len({r.item_id for r in recs}) == 4
    assert {r.item_id for r in recs} <= set("cdef")
    assert all(r.sid == recommender.index.format(recommender.index.items[r.item_id]) for r in recs)
    assert all(r.title == f"Title {r.item_id.upper()}" for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    with_history = recommender.recommend(["a", "b"], k=6, exclude_history=False)
    assert {r.item_id for r in with_history} == set("abcdef")


def test_candidates_restrict_results(run_dir):
    recommender = Recommender.from_pretrained(run_dir)
    recs = recommender.recommend(["a"], k=2, candidates=["a", "c", "e"])
    assert {r.item_id for r in recs} == {"c", "e"}  # a is in the history
    with pytest.raises(ValueError, match=r"k must be in 1..3"):
        recommender.recommend(["a"], k=4, candidates=["a", "c", "e"])
    with pytest.raises(DataError, match="unknown candidate"):
        recommender.recommend(["a"], k=1, candidates=["q"])


def test_renormalized_scores_are_probabilities_over_the_unseen_catalog(run_dir):
    recommender = Recommender.from_pretrained(run_dir)
    recs = recommender.recommend(["a", "b"], k=4, renormalize=True)
    assert {r.item_id for r in recs} == set("cdef")
    assert sum(np.exp(r.score) for r in recs) == pytest.approx(1.0, abs=1e-5)
    plain = recommender.recommend(["a", "b"], k=4)
    assert sum(np.exp(r.score) for r in plain) < 0.99


def test_batch_equals_single(run_dir):
    recommender = Recommender.from_pretrained(run_dir)
    histories = [["a"], ["b", "c", "d"], ["e", "a"]]
    batched = recommender.recommend_batch(histories, k=3)
    for history, recs in zip(histories, batched, strict=True):
        single = recommender.recommend(history, k=3)
        assert [r.item_id for r in recs] == [r.item_id for r in single]
        assert [r.score for r in recs] == pytest.approx([r.score for r in single], abs=1e-4)


def test_prompt_matches_training_format(run_dir):
    recommender = Recommender.from_pretrained(run_dir)
    prompt = recommender.prompt(["a", "b"])
    assert prompt.endswith("<|im_start|>assistant\n") and "<a_0><b_0>, <a_0><b_1>" in prompt


def test_sequence_run_continues_the_history_exactly_as_trained(sequence_run_dir):
    """The inference prompt of a `sequence` run + the target's SID is token for token the start of the validation
    row the model was scored on (TRL's prompt + completion), so the decoder sees what training saw."""
    recommender = Recommender.from_pretrained(sequence_run_dir)
    tokenizer = recommender.tokenizer
    rows = [json.loads(line) for line in (sequence_run_dir / "prompt_data" / "valid.jsonl").read_text().splitlines()]
    assert rows and all(row["task"] == "sequence" for row in rows)
    for row in rows:
        sids = row["completion"][0]["content"] if recommender.chat else row["completion"]
        tokens = re.findall(r"<[a-z]_\d+>", sids)
        levels = recommender.index.num_levels
        item_sids = ["".join(tokens[i : i + levels]) for i in range(0, len(tokens), levels)]
        assert sids == recommender.separator.join(item_sids)  # the saved separator is the one training used
        history_sids, target_sid = item_sids[:-1], item_sids[-1]
        item_of = recommender.index.item_of()
        history = [item_of[recommender.index.parse(sid)] for sid in history_sids]
        if recommender.chat:
            full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        else:
            full = row["prompt"] + row["completion"]
        prompt = recommender.prompt(history)
        assert full.startswith(prompt + target_sid)
        prompt_ids = tokenizer(prompt + target_sid, add_special_tokens=False)["input_ids"]
        assert tokenizer(full, add_special_tokens=False)["input_ids"][: len(prompt_ids)] == prompt_ids
    recs = recommender.recommend(history, k=3)
    assert len({r.item_id for r in recs}) == 3 and not {r.item_id for r in recs} & set(history)


def test_documented_errors(run_dir, tmp_path):
    recommender = Recommender.from_pretrained(run_dir)
    with pytest.raises(DataError, match=r"unknown item id\(s\) \['zz'\]"):
        recommender.recommend(["a", "zz"], k=2)
    assert len(recommender.recommend(["a", "zz"], k=2, skip_unknown=True)) == 2
    with pytest.raises(ValueError, match="empty history"):
        recommender.recommend([], k=2)
    with pytest.raises(ValueError, match=r"k must be in 1..6 \(the catalog"):
        recommender.recommend(["a"], k=7)
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "items.jsonl").write_text((broken / "items.jsonl").read_text().replace("Title A", "Title Z"))
    with pytest.raises(DataError, match="not the catalog"):
        Recommender.from_pretrained(broken)
    shutil.copyfile(run_dir / "items.jsonl", broken / "items.jsonl")
    (broken / "sid_index.json").write_text((broken / "sid_index.json").read_text().replace('"a": [', '"a":  ['))
    with pytest.raises(DataError, match="differs from the index this run was trained with"):
        Recommender.from_pretrained(broken)


def test_cli_recommend(run_dir, capsys):
    from llmrec.cli import main

    assert main(["recommend", "--run", str(run_dir), "--history", "a", "b", "--k", "3", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and {r["item_id"] for r in recs} <= set("cdef")
    argv = ["recommend", "--run", str(run_dir), "--history", "a", "b", "--k", "4", "--renormalize", "--json"]
    assert main(argv) == 0
    renormalized = json.loads(capsys.readouterr().out)
    assert sum(np.exp(r["score"]) for r in renormalized) == pytest.approx(1.0, abs=1e-5)
    assert main(["recommend", "--run", str(run_dir), "--history", "a", "--k", "2"]) == 0
    assert "Title A" in capsys.readouterr().out
    assert main(["recommend", "--run", str(run_dir), "--history", "a", "--k", "2", "--mode", "reason", "--json"]) == 0
    reasoned = json.loads(capsys.readouterr().out)
    assert len(reasoned) == 2 and all(isinstance(r["rationale"], str) for r in reasoned)
    assert main(["recommend", "--run", str(run_dir), "--history", "nope", "--k", "2"]) == 2
    assert "unknown item id" in capsys.readouterr().err


def test_evaluate_run_on_the_test_split(run_dir):
    from eval.evaluate import evaluate_run
    from llmrec.data.dataset import load_dataset

    dataset = load_dataset(run_dir.parent / "data")
    metrics = evaluate_run(run_dir, dataset, "test", k=3)
    assert metrics["n_users"] == 4 and metrics["invalid_rate"] == 0.0
    assert 0.0 <= metrics["recall@5"] <= 1.0 and metrics["config"]["num_beams"] == 6
    # Per-user ranks (for paired comparisons) agree with the aggregate metrics.
    ranks = np.array(metrics["target_ranks"])
    assert metrics["user_ids"] == [u.user_id for u in dataset.load_split().users]
    assert ((ranks >= 1) & (ranks <= 5)).mean() == pytest.approx(metrics["recall@5"])
    other = prepare(make_raw(), run_dir.parent / "other-data")
    other.meta["files"]["items.jsonl"] = "0" * 64
    with pytest.raises(DataError, match="another catalog"):
        evaluate_run(run_dir, other, "test", k=3)


def test_cli_evaluate_run(run_dir, tmp_path, capsys):
    from llmrec.cli import main

    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--run", str(run_dir), "--dataset", str(run_dir.parent / "data"), "--max-users", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["model"] == "llmrec" and metrics["n_users"] == 2 and metrics["invalid_rate"] == 0.0
    assert metrics["config"]["renormalize"] is False
    assert main([*argv, "--renormalize", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["renormalize"] is True
