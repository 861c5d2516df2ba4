"""GRPO on a tiny SFT run: prompts, always-valid ranked rollouts, a training step that moves only the adapter,
the SFT reference, the saved run, and every documented error."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from llmrec.data.io import DataError
from llmrec.data.prepare import prepare
from llmrec.grpo import GRPOScriptArguments, group_starts, grpo_rows, make_trainer, run_grpo
from llmrec.recommender import Recommender
from tests.conftest import make_raw
from tests.test_recommender import train_tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, one_torch_thread):
    return train_tiny_run(tmp_path_factory.mktemp("grpo"), tasks="sequence=0", eval_task="sequence", chat=False)


def config(out, **overrides) -> GRPOConfig:
    values = dict(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        beta=0.04,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_steps=100,
        seed=0,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def test_rows_are_the_recommender_prompts_of_training_positions(sft_run):
    recommender = Recommender.from_pretrained(sft_run)
    sequences = {"u1": ("a", "b", "c", "a", "d"), "u2": ("e", "f")}
    rows = grpo_rows(recommender, sequences, max_prompts=0, seed=0, mode="direct")
    # u1 position 3 repeats "a": a history item can never be recommended, so that prompt is dropped.
    assert [(r["user_id"], r["target_item_id"]) for r in rows] == [("u1", "b"), ("u1", "c"), ("u1", "d"), ("u2", "f")]
    assert rows[2]["prompt"] == recommender.prompt(["a", "b", "c", "a"]) and rows[2]["answer_prefix"] == ""
    assert rows[2]["seen"] == ["a", "b", "c", "a"]
    reason = grpo_rows(recommender, sequences, max_prompts=0, seed=0, mode="reason")
    assert [r["prompt"] + r["answer_prefix"] for r in reason] == [r["prompt"] for r in rows]
    assert len(grpo_rows(recommender, sequences, max_prompts=2, seed=0, mode="direct")) == 2
    with pytest.raises(DataError, match="nothing to train GRPO on"):
        grpo_rows(recommender, {"u": ("a",)}, max_prompts=0, seed=0, mode="direct")


def test_group_starts():
    assert group_starts(["p", "p", "q", "q"], 2) == [0, 2]
    with pytest.raises(ValueError, match="multiple of num_generations"):
        group_starts(["p", "p", "q"], 2)
    with pytest.raises(ValueError, match="mixes prompts"):
        group_starts(["p", "q", "q", "q"], 2)


@pytest.mark.parametrize(("mode", "rollout"), [("direct", "beam"), ("direct", "sample"), ("reason", "beam")])
def test_rollouts_are_valid_ranked_catalog_items(sft_run, tmp_path, mode, rollout):
    args = GRPOScriptArguments(sft_run=str(sft_run), mode=mode, rollout=rollout, max_prompts=0, max_think_tokens=3)
    trainer, _, _ = make_trainer(args, config(tmp_path / "out"))
    trie, tokenizer = trainer.rollout_func.trie, trainer.processing_class
    rows = [row for row in trainer.train_dataset for _ in range(2)]  # every prompt, G = 2 copies
    for _ in range(3 if rollout == "sample" else 1):
        trainer.rollout_rows = rows
        out = trainer.rollout_func([row["prompt"] for row in rows], trainer)
        assert len(out["completion_ids"]) == len(rows) and out["group_rank"] == [1, 2] * (len(rows) // 2)
        for i, row in enumerate(rows):
            ids = out["completion_ids"][i]
            sid_ids = ids[-trie.num_levels :]
            item_id = trie.item_of_token_ids(sid_ids)
            assert item_id is not None and item_id == out["item_id"][i], (i, ids)
            assert item_id not in row["seen"]
            assert out["prompt_ids"][i] == tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            if mode == "reason":
                mask = out["env_mask"][i]
                assert len(mask) == len(ids) and mask[-trie.num_levels :] == [1] * trie.num_levels
                prefix = tokenizer(row["answer_prefix"], add_special_tokens=False)["input_ids"]
                assert ids[-trie.num_levels - len(prefix) : -trie.num_levels] == prefix  # forced, masked out
                assert sum(mask) < len(mask)
        if rollout == "beam" and mode == "direct":
            assert all(out["item_id"][i] != out["item_id"][i + 1] for i in range(0, len(rows), 2))


def test_step_moves_only_the_adapter_and_starts_at_the_sft_reference(sft_run, tmp_path):
    args = GRPOScriptArguments(sft_run=str(sft_run), max_prompts=0)
    trainer, _, _ = make_trainer(args, config(tmp_path / "out", max_steps=3))
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ref_deltas = [n for n in before if "trainable_tokens_delta.ref" in n]
    assert ref_deltas and all(torch.equal(before[n], before[n.replace(".ref", ".default")]) for n in ref_deltas)

    # Log-probabilities through the SID rows: equal to a plain forward pass's log-softmax.
    ids = torch.tensor([trainer.rollout_func.sid_token_ids["a"] + trainer.rollout_func.sid_token_ids["b"]])
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, torch.ones_like(ids), logits_to_keep=2)
    with torch.no_grad():
        full = model(input_ids=ids).logits.log_softmax(-1)  # (1, L, V)
    expected = full[0, -3:-1].gather(-1, ids[0, -2:, None]).squeeze(-1)
    assert torch.allclose(logps[0], expected, atol=1e-5)

    trainer.train()
    after = dict(model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed and all(".default" in name for name in changed), sorted(changed)[:5]
    assert any("lora_" in name for name in changed)
    kl = [row["kl"] for row in trainer.state.log_history if "kl" in row]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # the reference is the SFT adapter, SID rows included


def test_run_saves_a_self_contained_run_that_recommends(sft_run, tmp_path):
    out = tmp_path / "grpo"
    args = GRPOScriptArguments(sft_run=str(sft_run), max_prompts=0)
    run_grpo(args, config(out))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "sid_index.json", "items.jsonl", "prompts"} <= names
    assert {"run_config.json", "training_log.json", "reward_curve.png"} <= names
    assert not (out / "ref").exists()  # the frozen reference copy is not saved
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["stage"] == "grpo" and saved["grpo"]["script_args"]["rollout"] == "beam"
    assert saved["script_args"]["eval_task"] == "sequence"
    recommender = Recommender.from_pretrained(out)
    recs = recommender.recommend(["a", "b"], k=3)
    assert len({r.item_id for r in recs}) == 3 and not {"a", "b"} & {r.item_id for r in recs}
    reasoned = recommender.recommend(["a", "b"], k=3, mode="reason", max_think_tokens=3)
    assert len(reasoned) == 3 and all(r.rationale is not None for r in reasoned)
    with pytest.raises(FileExistsError, match="--resume"):
        run_grpo(args, config(out))


@pytest.fixture(scope="module")
def sid_softmax_run(tmp_path_factory, one_torch_thread):
    return train_tiny_run(
        tmp_path_factory.mktemp("grpo-sm"), tasks="sequence=0", eval_task="sequence", chat=False, sid_softmax=True
    )


def test_sid_softmax_run_trains_with_log_probs_over_its_output_vocabulary(sid_softmax_run, tmp_path):
    """A run trained with sid_softmax: GRPO's log-probs, beam rollouts and sampled-rollout ranking are normalised
    over the run's output vocabulary, as decoding is; reasoning mode is refused."""
    recommender = Recommender.from_pretrained(sid_softmax_run)
    vocabulary = recommender.output_token_ids  # (V_out,)
    assert vocabulary is not None and len(vocabulary) < len(recommender.tokenizer)
    args = GRPOScriptArguments(sft_run=str(sid_softmax_run), max_prompts=0)
    trainer, _, _ = make_trainer(args, config(tmp_path / "out", max_steps=2))
    model = trainer.accelerator.unwrap_model(trainer.model)

    sid = trainer.rollout_func.sid_token_ids
    ids = torch.tensor([sid["a"] + sid["b"]])  # (1, 4)
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        model, ids, torch.ones_like(ids), logits_to_keep=2, compute_entropy=True
    )
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -3:-1]  # (2, V): the positions predicting b's two tokens
    restricted = logits[:, vocabulary].log_softmax(-1)  # (2, V_out)
    at = [vocabulary.tolist().index(t) for t in sid["b"]]
    assert torch.allclose(logps[0], restricted[torch.arange(2), at], atol=1e-5)
    full = logits.log_softmax(-1)[torch.arange(2), ids[0, -2:]]
    assert not torch.allclose(logps[0], full, atol=1e-3)  # the whole-vocabulary softmax gives other values
    assert torch.allclose(entropies[0], -(restricted.exp() * restricted).sum(-1), atol=1e-5)

    # Beam rollouts are the recommender's own top-G (history excluded), best first.
    rows = [row for row in trainer.train_dataset for _ in range(2)]
    trainer.rollout_rows = rows
    out = trainer.rollout_func([row["prompt"] for row in rows], trainer)
    for start in range(0, len(rows), 2):
        expected = recommender.recommend(rows[start]["seen"], k=2, num_beams=2)
        assert out["item_id"][start : start + 2] == [r.item_id for r in expected]
    sample = GRPOScriptArguments(sft_run=str(sid_softmax_run), max_prompts=0, rollout="sample")
    sampler, _, _ = make_trainer(sample, config(tmp_path / "sample"))
    sampler.rollout_rows = rows
    assert len(sampler.rollout_func([row["prompt"] for row in rows], sampler)["item_id"]) == len(rows)

    trainer.train()
    kl = [row["kl"] for row in trainer.state.log_history if "kl" in row]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and all(torch.isfinite(torch.tensor(kl)))
    with pytest.raises(ValueError, match="mode: reason needs free-text rationales"):
        make_trainer(dataclasses.replace(args, mode="reason"), config(tmp_path / "reason"))


def test_documented_errors(sft_run, tmp_path):
    with pytest.raises(ValueError, match="rollout must be one of"):
        GRPOScriptArguments(sft_run="x", rollout="greedy")
    with pytest.raises(ValueError, match="mode must be one of"):
        GRPOScriptArguments(sft_run="x", mode="cot")
    with pytest.raises(ValueError, match="mode: reason"):
        GRPOScriptArguments(sft_run="x", rewards="hit=1,format=1")
    with pytest.raises(ValueError, match="name from"):
        GRPOScriptArguments(sft_run="x", rewards="hit=1,ndcg=1")
    with pytest.raises(ValueError, match="mode must be 'direct' or 'reason'"):
        Recommender.from_pretrained(sft_run).recommend(["a"], k=2, mode="cot")
    # A dataset whose catalog is not the one the run's index was built from (one title differs).
    raw = make_raw()
    raw.items["a"] = dataclasses.replace(raw.items["a"], title="Another title")
    other = prepare(raw, tmp_path / "other").path
    with pytest.raises(ValueError, match="mask_truncated_completions"):
        make_trainer(GRPOScriptArguments(sft_run=str(sft_run)), config(tmp_path, mask_truncated_completions=True))
    with pytest.raises(DataError, match="is not the catalog"):
        make_trainer(GRPOScriptArguments(sft_run=str(sft_run), dataset_dir=str(other)), config(tmp_path / "o"))


def test_bench_grpo_trains_through_the_script_and_scores_both_runs(sft_run, tmp_path):
    import subprocess
    import sys

    import yaml

    config = tmp_path / "grpo.yaml"
    values = {
        "sft_run": str(sft_run), "max_prompts": 0, "output_dir": str(tmp_path / "grpo"), "max_steps": 2,
        "num_generations": 2, "per_device_train_batch_size": 4, "beta": 0.04, "learning_rate": 1e-2,
        "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "report_to": "none", "logging_steps": 1,
    }  # fmt: skip
    config.write_text(yaml.safe_dump(values))
    other = tmp_path / "grpo_hit.yaml"  # a second variant of the same SFT run: both are trained and scored
    other.write_text(yaml.safe_dump({**values, "output_dir": str(tmp_path / "grpo_hit"), "rewards": "hit=1"}))
    command = [sys.executable, str(REPO / "scripts" / "bench_grpo.py"), "--grpo-config", str(config), str(other)]
    command += ["--dataset", str(sft_run.parent / "data"), "--results", str(tmp_path / "results"), "--tag", "t"]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    result = json.loads((tmp_path / "results" / "grpo_tiny_t.json").read_text())
    assert [(r["run"], r["split"]) for r in result["rows"]] == [
        ("most-popular", "valid"), ("most-popular", "test"), ("SFT", "valid"), ("SFT", "test"),
        ("SFT + GRPO `grpo`", "valid"), ("SFT + GRPO `grpo`", "test"),
        ("SFT + GRPO `grpo_hit`", "valid"), ("SFT + GRPO `grpo_hit`", "test"),
    ]  # fmt: skip
    assert all(r["metrics"]["n_users"] == 4 for r in result["rows"])
    assert [run["rewards"] for run in result["grpo_runs"]] == ["hit=1,rank=1,prefix=0.5", "hit=1"]
    assert all(run["steps"] == 2 and run["train_cpu_minutes"] >= 0 for run in result["grpo_runs"])
    for row in result["rows"][4:]:  # GRPO rows: paired NDCG@10 change against SFT on the same users
        change, sft = row["ndcg@10_change"], result["rows"][2 + (row["split"] == "test")]["metrics"]
        assert change["low"] <= change["diff"] <= change["high"]
        assert change["diff"] == pytest.approx(row["metrics"]["ndcg@10"] - sft["ndcg@10"])
    table = (tmp_path / "results" / "grpo_tiny_t.md").read_text()
    assert "| SFT + GRPO `grpo_hit` | test |" in table and "| `grpo_hit` | 2 | " in table

    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump(values))
    failed = subprocess.run(
        [*command[:2], "--grpo-config", str(config), str(clash), *command[-6:]], cwd=REPO, capture_output=True
    )
    assert failed.returncode != 0 and b"share an output_dir" in failed.stderr
