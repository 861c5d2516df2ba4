"""SFT on a tiny in-process Llama: what trains, what is saved, reload parity, resume after a kill, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import ModelConfig, SFTConfig

from llmrec.config import SFTScriptArguments, parse_task_mix
from llmrec.data.io import DataError
from llmrec.data.prepare import prepare
from llmrec.model import bf16_projections
from llmrec.run import load_run
from llmrec.sid import SemanticIdIndex, save_index
from llmrec.training import run_sft
from tests.conftest import make_raw, make_tiny_model, make_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny dataset, 2-level index and a tiny Llama saved as an HF folder (the 'base model')."""
    root = tmp_path_factory.mktemp("sft")
    dataset = prepare(make_raw(), root / "data")
    save_index(SemanticIdIndex({i: (n // 3, n % 3) for n, i in enumerate(dataset.items)}, (4, 4)), root / "sid.json")
    tokenizer = make_tiny_tokenizer()
    make_tiny_model(len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def arguments(root: Path, out: Path, max_steps: int = 4, **overrides):
    script = SFTScriptArguments(dataset_dir=str(root / "data"), index_path=str(root / "sid.json"))
    training = dict(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=2,
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        max_length=256,
        seed=0,
    )
    training.update(overrides)
    return script, SFTConfig(**training), ModelConfig(model_name_or_path=str(root / "model"), lora_r=4, lora_alpha=8)


def adapter_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter_model.safetensors"))


def test_training_changes_lora_and_sid_rows_only_and_saves_a_self_contained_run(workspace):
    out = workspace / "run"
    script, training, model_args = arguments(workspace, out, max_steps=8, eval_strategy="steps", eval_steps=4)
    run_sft(script, training, model_args)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "sid_index.json", "prompts"} <= names
    assert {"prompt_data", "run_config.json", "training_log.json", "loss_curve.png"} <= names
    assert (out / "prompts" / "seqrec.yaml").is_file() and (out / "prompt_data" / "valid.jsonl").is_file()
    log = json.loads((out / "training_log.json").read_text())
    assert any("eval_loss" in row for row in log["log_history"]) and 0 <= log["padding_fraction"] < 1
    # Throughput counts every trained batch, also when the run spans several epochs of its few examples.
    rows = len((out / "prompt_data" / "train.jsonl").read_text().splitlines())
    assert training.max_steps * training.per_device_train_batch_size > rows and log["tokens_per_second"] > 0

    original = AutoModelForCausalLM.from_pretrained(workspace / "model")
    run = load_run(out)
    base_model = run.model.get_base_model()
    state = adapter_state(out)
    lora = {k: v for k, v in state.items() if "lora_B" in k}
    assert lora and all(float(v.abs().max()) > 0 for v in lora.values())  # B starts at zero: it moved
    deltas = [v for k, v in state.items() if k.endswith("trainable_tokens_delta")]
    assert deltas and all(float(d.abs().max()) > 0 for d in deltas)
    # Base weights are untouched: every non-adapter linear weight equals the original model's.
    for name, module in original.named_modules():
        if name.endswith(("q_proj", "v_proj", "down_proj")):
            peft_module = base_model.get_submodule(name)
            assert torch.equal(peft_module.base_layer.weight, module.weight), name
    # Old vocabulary rows are untouched; the SID rows moved away from their initialisation.
    old_size = original.get_input_embeddings().weight.shape[0]
    merged = load_run(out, merge=True).model.get_input_embeddings().weight
    assert torch.equal(merged[:old_size], original.get_input_embeddings().weight)


def test_sid_init_text_is_the_rows_training_starts_from(workspace):
    """With a zero learning rate the saved SID rows are the starting rows: those of `text_init_sid_rows` over the
    catalog's item text, not the mean init."""
    from transformers import AutoTokenizer

    from llmrec.data.dataset import load_dataset
    from llmrec.model import add_sid_tokens, text_init_sid_rows
    from llmrec.prompting import item_text
    from llmrec.sid import load_index

    out = workspace / "run-text-init"
    script, training, model_args = arguments(workspace, out, max_steps=2, learning_rate=0.0)
    script.sid_init = "text"
    run_sft(script, training, model_args)
    assert json.loads((out / "run_config.json").read_text())["script_args"]["sid_init"] == "text"
    (saved,) = [v for k, v in adapter_state(out).items() if k.endswith("trainable_tokens_delta")]

    tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
    model = AutoModelForCausalLM.from_pretrained(workspace / "model")
    index = load_index(workspace / "sid.json")
    new_ids = add_sid_tokens(tokenizer, model, index)
    mean_rows = model.get_input_embeddings().weight[new_ids].detach().clone()
    items = load_dataset(workspace / "data").items
    text_init_sid_rows(tokenizer, model, index, {i: item_text(items[i]) for i in index.items})
    assert torch.allclose(saved, model.get_input_embeddings().weight[new_ids].detach())
    assert not torch.allclose(saved, mean_rows)


def test_reload_reproduces_logits(workspace):
    out = workspace / "run-logits"
    script, training, model_args = arguments(workspace, out, max_steps=2)
    run_sft(script, training, model_args)
    first, second = load_run(out), load_run(out)
    ids = first.tokenizer(["the user has interacted with <a_1><b_2> <a_0><b_1>"], return_tensors="pt")
    with torch.no_grad():
        a, b = first.model(**ids).logits, second.model(**ids).logits
        merged = load_run(out, merge=True).model(**ids).logits
    assert torch.equal(a, b)
    assert torch.allclose(a, merged, atol=1e-5)


def test_existing_run_and_resume_errors(workspace):
    out = workspace / "run-errors"
    script, training, model_args = arguments(workspace, out, max_steps=2)
    script.resume = True
    with pytest.raises(DataError, match="no checkpoint-N folder"):
        run_sft(script, training, model_args)
    script.resume = False
    run_sft(script, training, model_args)
    with pytest.raises(FileExistsError, match="pass --resume"):
        run_sft(script, training, model_args)


def test_bad_script_arguments():
    with pytest.raises(ValueError, match="task=max_rows"):
        SFTScriptArguments(dataset_dir="d", index_path="i", tasks="seqrec=all")
    with pytest.raises(ValueError, match="keep_layers must be >= 1"):
        SFTScriptArguments(dataset_dir="d", index_path="i", keep_layers=0)
    with pytest.raises(ValueError, match="base_dtype must be one of"):
        SFTScriptArguments(dataset_dir="d", index_path="i", base_dtype="float16")
    with pytest.raises(ValueError, match="sid_init must be one of"):
        SFTScriptArguments(dataset_dir="d", index_path="i", sid_init="random")
    with pytest.raises(ValueError, match="sid_init text needs train_new_tokens true"):
        SFTScriptArguments(dataset_dir="d", index_path="i", sid_init="text", train_new_tokens=False)
    assert parse_task_mix("seqrec=0,fusion=10") == {"seqrec": 0, "fusion": 10}


def test_bf16_base_trains_fp32_adapters_close_to_the_fp32_run(workspace):
    """`base_dtype: bfloat16` runs the frozen projections in bf16 while LoRA and the SID rows train (and are saved)
    in fp32; its losses follow the fp32 run's closely but not exactly (the projections really ran in bf16)."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = workspace / f"run-{dtype}"
        script, training, model_args = arguments(workspace, out, max_steps=4, learning_rate=1e-2)
        script.base_dtype = dtype
        script.sid_softmax = True
        run_sft(script, training, model_args)
        log = json.loads((out / "training_log.json").read_text())
        losses[dtype] = [row["loss"] for row in log["log_history"] if "loss" in row]
        assert json.loads((out / "run_config.json").read_text())["script_args"]["base_dtype"] == dtype
    state = adapter_state(workspace / "run-bfloat16")
    trained = {k: v for k, v in state.items() if "lora_" in k or k.endswith("trainable_tokens_delta")}
    assert trained and all(v.dtype == torch.float32 for v in trained.values())
    assert all(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k or "delta" in k)
    fp32, bf16 = torch.tensor(losses["float32"]), torch.tensor(losses["bfloat16"])
    assert not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, rtol=0.05), (losses["float32"], losses["bfloat16"])
    run = load_run(workspace / "run-bfloat16")  # served on the fp32 base
    ids = run.tokenizer(["the user has interacted with <a_1><b_2>"], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(run.model(**ids).logits).all()


def test_bf16_projections_keep_activations_fp32_and_the_logits_close(workspace):
    fp32 = AutoModelForCausalLM.from_pretrained(workspace / "model")
    mixed = AutoModelForCausalLM.from_pretrained(workspace / "model")
    layers = len(mixed.model.layers)
    assert bf16_projections(mixed, ["q_proj", "down_proj"]) == 2 * layers
    assert mixed.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert mixed.model.layers[0].self_attn.k_proj.weight.dtype == torch.float32  # not named: untouched
    assert mixed.get_input_embeddings().weight.dtype == torch.float32
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        hidden = mixed.model.layers[0].self_attn.q_proj(torch.randn(2, fp32.config.hidden_size))
        a, b = fp32(ids).logits, mixed(ids).logits
    assert hidden.dtype == torch.float32 and b.dtype == torch.float32
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05 * float(a.abs().max()))


def test_missing_index_is_a_clear_error(workspace, tmp_path):
    script, training, model_args = arguments(workspace, tmp_path / "run")
    script.index_path = str(tmp_path / "nope.json")
    with pytest.raises(DataError, match="llmrec index build"):
        run_sft(script, training, model_args)


def _sft_command(root: Path, out: Path, max_steps: int) -> list[str]:
    return [
        sys.executable, str(ROOT / "scripts" / "sft.py"),
        "--dataset_dir", str(root / "data"), "--index_path", str(root / "sid.json"),
        "--model_name_or_path", str(root / "model"), "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0",
        "--output_dir", str(out), "--max_steps", str(max_steps), "--per_device_train_batch_size", "2",
        "--learning_rate", "0.05", "--lr_scheduler_type", "constant", "--save_steps", "2", "--logging_steps", "1",
        "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--max_length", "256", "--seed", "0",
    ]  # fmt: skip


def test_resume_after_kill_matches_an_uninterrupted_run(workspace, tmp_path):
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        _sft_command(workspace, killed, 100_000), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not (killed / "checkpoint-4").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*"))
    assert checkpoints, "the run was killed before its first checkpoint"
    target = checkpoints[-1] + 2
    subprocess.run([*_sft_command(workspace, killed, target), "--resume", "true"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    straight = tmp_path / "straight"
    subprocess.run(_sft_command(workspace, straight, target), env=env, check=True, capture_output=True)
    resumed_state, straight_state = adapter_state(killed), adapter_state(straight)
    assert resumed_state.keys() == straight_state.keys()
    for key in straight_state:
        assert torch.allclose(resumed_state[key], straight_state[key], atol=1e-6), key
    log = json.loads((killed / "training_log.json").read_text())
    assert max(row["step"] for row in log["log_history"] if "loss" in row) == target
    # The training time of the killed segment is carried over, not lost with the process.
    before = json.loads((killed / f"checkpoint-{checkpoints[-1]}" / "train_clock.json").read_text())
    assert before["timed_from_step"] == 0 and before["train_seconds"] > 0
    assert log["timed_from_step"] == 0 and log["train_seconds"] > before["train_seconds"]
    assert log["train_cpu_seconds"] > before["train_cpu_seconds"]


def test_completion_position_loss_equals_the_full_logits_loss():
    """The loss on `logits_to_keep` positions equals the model's own loss over all logits (labels -100 elsewhere)."""
    from types import SimpleNamespace

    from llmrec.training import SidSFTTrainer

    model = make_tiny_model(40)
    input_ids = torch.randint(0, 40, (3, 9))
    labels = torch.full_like(input_ids, -100)
    labels[0, 6:] = input_ids[0, 6:]  # completions at different positions per row
    labels[1, 3:5] = input_ids[1, 3:5]
    labels[2, 8] = input_ids[2, 8]
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    fake_trainer = SimpleNamespace(args=SimpleNamespace(average_tokens_across_devices=False))
    ours = SidSFTTrainer.compute_loss(fake_trainer, model, dict(inputs))
    reference = model(**inputs).loss
    assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.integration
def test_two_process_data_parallel_matches_one_process_with_the_same_effective_batch(workspace, tmp_path):
    """torchrun --nproc_per_node 2 (gloo DDP on CPU) with batch 2 per rank vs one process with batch 4."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "ddp"

    def command(out: Path, batch: int) -> list[str]:
        argv = _sft_command(workspace, out, 4)
        argv[argv.index("--per_device_train_batch_size") + 1] = str(batch)
        # SGD: updates proportional to gradients. Adam's first steps move every weight by about +-lr whatever the
        # gradient's size, so float noise in near-zero gradients would flip whole updates.
        return [*argv[1:], "--train_sampling_strategy", "sequential", "--optim", "sgd", "--learning_rate", "0.5"]

    subprocess.run([sys.executable, *command(single, 4)], env=env, check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    result = subprocess.run([*torchrun, *command(double, 2)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = adapter_state(single), adapter_state(double)
    assert one.keys() == two.keys()
    # Float summation order differs between one and two processes; after 4 steps at lr 0.5 that leaves ~1e-4.
    # Without gradient sync each rank would follow its own half-batch and differ by ~1e-2 or more.
    for key in one:
        assert torch.allclose(one[key], two[key], atol=2e-3), key
    histories = [json.loads((out / "training_log.json").read_text())["log_history"] for out in (single, double)]
    losses = [[row["loss"] for row in history if "loss" in row] for history in histories]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-3)
    lora_b = [key for key in one if "lora_B" in key]
    assert any(float(one[key].abs().max()) > 0 for key in lora_b)  # training did move the weights


def test_training_clock_adds_the_time_saved_in_the_resumed_checkpoint(tmp_path, caplog):
    from types import SimpleNamespace

    from llmrec.training import TrainingClock

    timed = tmp_path / "checkpoint-40"
    timed.mkdir()
    saved = {"train_seconds": 1000.0, "train_cpu_seconds": 1900.0, "timed_from_step": 0}
    (timed / "train_clock.json").write_text(json.dumps(saved))
    clock = TrainingClock(str(timed))
    clock.on_train_begin(None, None, None)
    totals = clock.totals()
    assert 1000.0 <= totals["train_seconds"] < 1010.0 and 1900.0 <= totals["train_cpu_seconds"] < 1910.0
    assert totals["timed_from_step"] == 0

    # At the next checkpoint the running total is written into that checkpoint's folder.
    (tmp_path / "checkpoint-60").mkdir()
    state = SimpleNamespace(global_step=60, is_world_process_zero=True)
    clock.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert json.loads((tmp_path / "checkpoint-60" / "train_clock.json").read_text())["train_seconds"] >= 1000.0

    # A checkpoint without the file: the count starts at its step, and the log says so.
    untimed = tmp_path / "checkpoint-20"
    untimed.mkdir()
    with caplog.at_level("WARNING", logger="llmrec.training"):
        clock = TrainingClock(str(untimed))
    assert clock.totals()["timed_from_step"] == 20 and clock.totals()["train_seconds"] < 10.0
    assert "before step 20 is unknown" in caplog.text


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill(tmp_path):
    from llmrec.training import last_complete_checkpoint

    for step, state in ((2, "{}"), (4, "{}"), (6, None), (8, '{"truncated": ')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-notes").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "missing") is None
