"""LoRA SFT of a causal LM on the alignment tasks, with TRL's `SFTTrainer`; writes a self-contained run folder.

A run folder (`SFTConfig.output_dir`) holds everything inference needs and how it was made:

    adapter_config.json, adapter_model.safetensors   PEFT LoRA adapter (+ trained SID token rows)
    tokenizer files                                   base tokenizer + SID tokens
    sid_index.json, items.jsonl                       copies of the index and the catalog it was built from
    prompts/*.yaml                                    the templates used
    prompt_data/{train,valid,test}.jsonl, prompts.json  the rendered prompts (config, counts, checksums)
    run_config.json                                   all arguments, base model, input checksums, versions
    training_log.json, loss_curve.png                 losses per logging step, padding fraction, timings
    checkpoint-N/                                     Trainer checkpoints (for --resume)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset as HFDataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from llmrec.config import SFTScriptArguments, parse_task_mix
from llmrec.data.dataset import load_dataset
from llmrec.data.io import DataError, sha256_file, write_json_atomic
from llmrec.model import DEFAULT_MODEL, add_sid_tokens, bf16_projections, load_base_model, text_init_sid_rows
from llmrec.prompting import PromptConfig, build_prompt_datasets, item_text
from llmrec.sid import load_index
from llmrec.sid_softmax import OutputVocabulary, head_rows, output_vocabulary
from llmrec.version import __version__

logger = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUN_CONFIG = "run_config.json"


class SidSFTTrainer(SFTTrainer):
    """`SFTTrainer` with a completion-only loss computed on completion positions only, and compact checkpoints.

    Loss: TRL 1.16's fused LM head reads `lm_head.weight`/`.bias` directly, which fails on PEFT's
    `TrainableTokensWrapper` (the tied LM head when SID rows are trainable: no `bias`, and `.weight` is the base
    matrix without the trained rows). We call the model's own forward, which goes through the wrapper, with
    `logits_to_keep` = the sequence positions that predict a completion token: the LM head then projects a few
    positions per row instead of all of them, which saves most of the (B, L, V) logits memory and time. TRL's
    entropy/accuracy metrics are not logged on this path.

    `output_vocabulary` (set for `sid_softmax` runs, see `llmrec.sid_softmax`): the kept positions are projected
    onto that vocabulary's LM-head rows only and the softmax runs over it, instead of over the whole vocabulary.

    Checkpoints: PEFT saves the full (V, D) embedding and LM-head matrices whenever the vocabulary was resized
    (about 230 MB for SmolLM2); the trained SID rows are already in the adapter, so they are left out.
    """

    output_vocabulary: OutputVocabulary | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]  # (B, L), -100 outside completions
        targets = labels[:, 1:]  # (B, L-1): token predicted at each position
        positions = torch.nonzero((targets != -100).any(dim=0)).flatten()  # (P,)
        vocabulary = getattr(self, "output_vocabulary", None)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            use_cache=False,
            # sid_softmax: the head below projects the kept positions itself, onto the vocabulary's rows only
            logits_to_keep=positions if vocabulary is None else 1,
            output_hidden_states=vocabulary is not None,
        )
        if vocabulary is None:
            logits = outputs.logits  # (B, P, V)
            kept_targets = targets[:, positions]  # (B, P): token ids
        else:
            hidden = outputs.hidden_states[-1][:, positions]  # (B, P, D): final (normed) hidden states
            logits = hidden @ head_rows(model, vocabulary).T  # (B, P, V_out)
            kept_targets = vocabulary.targets(targets[:, positions], getattr(self, "processing_class", None))
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), kept_targets.flatten(), ignore_index=-100, reduction="sum"
        )
        count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages the gradients
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, save_embedding_layers=False)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / "training_args.bin")


CLOCK_FILE = "train_clock.json"


class TrainingClock(TrainerCallback):
    """Training time summed over every segment of a run that was killed and resumed.

    The Trainer's own `train_runtime` covers the last `train()` call only, so a resumed run would under-report its
    cost. At each checkpoint this writes `train_clock.json` into the checkpoint folder: wall seconds and process CPU
    seconds (all threads) spent training so far; a resumed run starts from the values of the checkpoint it resumes.
    A checkpoint without the file (the run was killed between the checkpoint and the file, or it predates the file)
    leaves the earlier time unknown: `timed_from_step` then says where the count starts.
    """

    def __init__(self, resume_from: str | None = None) -> None:
        self.wall_before = self.cpu_before = 0.0
        self.timed_from_step = 0
        if resume_from is not None:
            path = Path(resume_from) / CLOCK_FILE
            if path.is_file():
                saved = json.loads(path.read_text(encoding="utf-8"))
                self.wall_before, self.cpu_before = saved["train_seconds"], saved["train_cpu_seconds"]
                self.timed_from_step = saved["timed_from_step"]
            else:
                self.timed_from_step = int(Path(resume_from).name.split("-")[-1])
                logger.warning(
                    "%s has no %s: the training time before step %d is unknown; train_seconds will count from there.",
                    resume_from,
                    CLOCK_FILE,
                    self.timed_from_step,
                )
        self.wall_start = time.perf_counter()
        self.cpu_start = time.process_time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def totals(self) -> dict[str, float | int]:
        """Seconds spent training up to now, over every segment since `timed_from_step`."""
        return {
            "train_seconds": round(self.wall_before + time.perf_counter() - self.wall_start, 1),
            "train_cpu_seconds": round(self.cpu_before + time.process_time() - self.cpu_start, 1),
            "timed_from_step": self.timed_from_step,
        }

    def log_fields(self, global_step: int) -> dict[str, float | int]:
        """`totals()` plus `seconds_per_step` over the timed steps, for a run's `training_log.json`."""
        totals = self.totals()
        timed_steps = max(global_step - self.timed_from_step, 1)
        return {**totals, "seconds_per_step": round(totals["train_seconds"] / timed_steps, 3)}

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json_atomic(folder / CLOCK_FILE, self.totals())


def completion_tokens(trainer: SFTTrainer) -> set[int]:
    """Every token id the loss is computed on in the trainer's (tokenized) train and eval datasets."""
    found: set[int] = set()
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        if dataset is not None:
            for labels in dataset["labels"]:
                found.update(labels)
    found.discard(-100)
    return found


def read_prompt_rows(path: Path) -> HFDataset:
    """Prompt-completion rows for TRL (the bookkeeping columns task/user_id/target_item_id are dropped)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return HFDataset.from_list([{"prompt": row["prompt"], "completion": row["completion"]} for row in rows])


def epoch_batch_tokens(trainer: SFTTrainer) -> tuple[list[int], list[int]]:
    """Real (non-padding) and total token counts of every training micro-batch of one epoch, in the order the
    sampler makes them (same seed, so the batches training saw in its first epoch)."""
    real, total = [], []
    for batch in trainer.get_train_dataloader():
        mask = batch["attention_mask"]  # (B, L)
        real.append(int(mask.sum()))
        total.append(mask.numel())
    return real, total


def trained_token_counts(real: list[int], total: list[int], micro_batches: int) -> dict[str, float]:
    """Real tokens and padding fraction over `micro_batches` micro-batches of repeated epochs.

    Every epoch holds the same examples, so whole epochs count exactly; a partial epoch is counted as the first
    epoch's first batches (exact for a single epoch; later epochs shuffle differently, so close to exact).

        >>> trained_token_counts([10, 6], [12, 8], micro_batches=3)
        {'real_tokens': 26, 'padding_fraction': 0.1875}
    """
    if not real:
        return {"real_tokens": 0, "padding_fraction": 0.0}
    epochs, rest = divmod(micro_batches, len(real))
    real_tokens = epochs * sum(real) + sum(real[:rest])
    all_tokens = epochs * sum(total) + sum(total[:rest])
    return {"real_tokens": real_tokens, "padding_fraction": 1 - real_tokens / all_tokens if all_tokens else 0.0}


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(row["step"], row["loss"]) for row in history if "loss" in row]
    valid = [(row["step"], row["eval_loss"]) for row in history if "eval_loss" in row]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="validation loss (next item)")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy on completions", title="SFT loss")
    ax.grid(alpha=0.3)
    if train or valid:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest `checkpoint-N` whose `trainer_state.json` (the Trainer writes it last) is complete.

    A run killed while saving leaves a newer, partial checkpoint folder; resuming from it would fail.
    """
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    for step in reversed(steps):
        folder = out / f"checkpoint-{step}"
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            logger.warning("Skipping %s: incomplete (the run was probably killed while saving it).", folder)
            continue
        return str(folder)
    return None


def check_output_dir(out: Path, resume: bool) -> str | None:
    """The checkpoint to resume from, or `None`; refuses to silently train over an existing run."""
    last = last_complete_checkpoint(out) if out.is_dir() else None
    if resume:
        if last is None:
            raise DataError(f"--resume: no checkpoint-N folder in {out}; start without --resume.")
        return last
    if out.is_dir() and (last is not None or (out / "adapter_config.json").is_file()):
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another output_dir.")
    return None


def prepare_run_folder(args: SFTScriptArguments, out: Path, resuming: bool) -> Path:
    """Copy the index and templates into the run, render the prompt datasets (kept when resuming)."""
    dataset = load_dataset(args.dataset_dir)
    index = load_index(args.index_path, dataset.items)
    prompt_config = PromptConfig(
        tasks=parse_task_mix(args.tasks),
        max_history=args.max_history,
        chat=args.chat,
        seed=args.prompts_seed,
        eval_task=args.eval_task,
        item_separator=args.item_separator,
        sequence_context=args.sequence_context,
        sequence_shifts=args.sequence_shifts,
    )
    out.mkdir(parents=True, exist_ok=True)
    prompt_dir = out / "prompt_data"
    if resuming and (prompt_dir / "prompts.json").is_file():
        saved = json.loads((prompt_dir / "prompts.json").read_text())
        if saved["index_sha256"] != sha256_file(args.index_path):
            raise DataError(f"{args.index_path} differs from the index this run was started with; resume refused.")
    else:
        build_prompt_datasets(dataset, index, Path(args.index_path), prompt_config, prompt_dir, overwrite=True)
        shutil.copyfile(args.index_path, out / "sid_index.json")
        shutil.copyfile(Path(args.dataset_dir) / "items.jsonl", out / "items.jsonl")  # titles for the API
        templates = out / "prompts"
        templates.mkdir(exist_ok=True)
        for name in [f"{task}.yaml" for task in prompt_config.tasks] + ["system.yaml"]:
            source = Path(prompt_config.templates_dir) / name
            if source.is_file():
                shutil.copyfile(source, templates / name)
    return prompt_dir


def run_sft(args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> Path:
    """Train and save one run; returns the run folder. Only the main process writes files."""
    out = Path(training_args.output_dir)
    resume_from = check_output_dir(out, args.resume)
    model_name = model_args.model_name_or_path or DEFAULT_MODEL
    # Only the main process writes the run folder; the other ranks wait for it, then read it.
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            prepare_run_folder(args, out, resuming=resume_from is not None)
    prompt_dir = out / "prompt_data"
    index = load_index(out / "sid_index.json")

    model, tokenizer = load_base_model(model_name, keep_layers=args.keep_layers)
    if args.base_dtype == "bfloat16":
        converted = bf16_projections(model, LORA_TARGETS)
        if converted == 0:
            raise ValueError(
                f"base_dtype bfloat16: {model_name} has no decoder projections named {LORA_TARGETS}; "
                "use base_dtype float32 for this model."
            )
        logger.info("base_dtype bfloat16: %d projection layers hold bf16 weights (activations stay fp32)", converted)
    new_token_ids = add_sid_tokens(tokenizer, model, index)
    if args.sid_init == "text":
        items = load_dataset(args.dataset_dir).items
        texts = {item_id: item_text(items[item_id]) for item_id in index.items}
        logger.info(
            "sid_init text: %d SID rows start from their items' text",
            text_init_sid_rows(tokenizer, model, index, texts),
        )
    model_args.use_peft = True
    model_args.lora_target_modules = model_args.lora_target_modules or LORA_TARGETS
    peft_config = get_peft_config(model_args)
    if args.train_new_tokens:
        # Train only the SID rows of the (tied) embedding matrix, not all 49k rows: a few hundred thousand
        # parameters instead of tens of millions with modules_to_save, and the rest of the vocabulary is untouched.
        peft_config.trainable_token_indices = {"embed_tokens": new_token_ids}

    train_rows, valid_rows = read_prompt_rows(prompt_dir / "train.jsonl"), read_prompt_rows(prompt_dir / "valid.jsonl")
    trainer = SidSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=valid_rows,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if args.sid_softmax:
        trainer.output_vocabulary = OutputVocabulary(
            output_vocabulary(tokenizer, index, completion_tokens(trainer)), len(tokenizer)
        )
        logger.info("sid_softmax: output vocabulary of %d tokens", len(trainer.output_vocabulary))
    clock = TrainingClock(resume_from)
    trainer.add_callback(clock)
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.is_world_process_zero():
        save_run(
            trainer,
            tokenizer,
            args,
            training_args,
            model_args,
            model_name,
            out,
            result.metrics,
            clock.log_fields(trainer.state.global_step),
        )
    return out


def save_run(
    trainer: SFTTrainer,
    tokenizer: PreTrainedTokenizerBase,
    args: SFTScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    model_name: str,
    out: Path,
    metrics: dict,
    clock: dict[str, float | int],
) -> None:
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    history = trainer.state.log_history
    micro_batches = trainer.state.global_step * training_args.gradient_accumulation_steps
    counts = trained_token_counts(*epoch_batch_tokens(trainer), micro_batches)
    seconds = clock["train_seconds"]
    log = {
        "metrics": metrics,
        **clock,  # train_seconds / train_cpu_seconds: summed over resumed segments, from step timed_from_step
        "padding_fraction": round(counts["padding_fraction"], 4),
        "tokens_per_second": round(counts["real_tokens"] / seconds, 1)
        if clock["timed_from_step"] == 0 and seconds > 0
        else None,  # None: the time is partial (resumed without a clock file) or too short to time (0.0 s)
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "log_history": history,
    }
    write_json_atomic(out / "training_log.json", log)
    plot_losses(history, out / "loss_curve.png")
    write_json_atomic(
        out / RUN_CONFIG,
        {
            "llmrec_version": __version__,
            "base_model": model_name,
            "script_args": asdict(args),
            "model_args": {key: value for key, value in asdict(model_args).items() if not key.startswith("_")},
            "training_args": training_args.to_dict(),
            "index_sha256": sha256_file(out / "sid_index.json"),
            # sid_softmax runs: the tokens their next-token distribution is normalised over (decoding does the same)
            "output_token_ids": trainer.output_vocabulary.token_ids.tolist() if trainer.output_vocabulary else None,
            "dataset_files_sha256": json.loads((out / "prompt_data" / "prompts.json").read_text())[
                "dataset_files_sha256"
            ],
            "torch": torch.__version__,
        },
    )
    logger.info("Run saved to %s (padding fraction %.3f)", out, log["padding_fraction"])
