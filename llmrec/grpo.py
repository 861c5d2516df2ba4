"""GRPO on top of an SFT run (TRL `GRPOTrainer`): constrained rollouts, ranking rewards, KL to the SFT adapter.

- Prompts: next-item prompts cut from the *training* sequences (every position with at least one item before it,
  `max_prompts` sampled), rendered exactly as the run's recommender renders them, so GRPO trains the inference
  prompt. Targets already in the history are dropped: rollouts exclude the history, as evaluation does.
- Rollouts (`SidRollout`, TRL's `rollout_func`): the `G = num_generations` completions of a prompt are always real
  catalog items, ranked best first. `rollout: beam` takes the top-G distinct items of `constrained_beam_search`
  (MiniOneRec's rollouts: every completion differs, so the group spans the model's own top of the ranking);
  `rollout: sample` draws G SIDs token by token inside the trie (HF `generate` with `prefix_allowed_tokens_fn`) and
  ranks them by log-probability. In `mode: reason` each completion is a sampled `<think>` rationale followed by the
  best SID after it; the tokens the decoder forces (`<think>`, a missing `</think>`, the answer prefix) are masked
  out of the loss with TRL's `env_mask`.
- Rewards (`llmrec.rewards`): hit, rank-aware, prefix and format, weighted by `rewards: hit=1,rank=1,...`.
- Reference: with `beta > 0` TRL keeps a frozen copy of the SFT adapter as the reference policy ("ref" adapter);
  `SidGRPOTrainer` completes that copy with the trained SID embedding rows, which TRL's copy misses.
- Log-probabilities: TRL computes them with a fused LM head that reads `lm_head.weight` and `lm_head.bias`; PEFT's
  wrapper of the tied head (the trainable SID rows) has no `bias`, so that path fails. `SidGRPOTrainer` computes them
  through the model's own forward, projecting only the completion positions (`logits_to_keep`).
- SFT runs trained with `sid_softmax: true` are normalised over their output vocabulary (SID tokens + EOS, see
  `llmrec.sid_softmax`), and so are GRPO's policy and reference log-probs, the beam rollouts and the ranking of
  sampled rollouts: GRPO optimises the distribution that decoding ranks with. Reasoning mode needs the whole
  vocabulary for its rationales, so it is refused for such runs.

The output is a self-contained run folder like an SFT run (adapter, tokenizer, index, items, prompts,
`run_config.json` with a `grpo` section), so `Recommender.from_pretrained` and `llmrec evaluate` take it as is.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset as HFDataset
from trl import GRPOConfig, GRPOTrainer

from llmrec.data.dataset import load_dataset
from llmrec.data.io import DataError, sha256_file, write_json_atomic
from llmrec.decoding import constrained_beam_search
from llmrec.reasoning import generate_rationales, left_pad, think_token_ids
from llmrec.recommender import Recommender
from llmrec.rewards import make_reward_funcs, parse_reward_weights
from llmrec.sid_softmax import OutputVocabulary, restricted_log_softmax
from llmrec.training import RUN_CONFIG, TrainingClock, check_output_dir
from llmrec.trie import SidTrie
from llmrec.version import __version__

logger = logging.getLogger(__name__)

ROLLOUTS = ("beam", "sample")
MODES = ("direct", "reason")


@dataclass
class GRPOScriptArguments:
    """
    > Parameters of an llmrec GRPO run that TRL's `GRPOConfig` lacks

    Args:
        sft_run (`str`): the SFT run folder to start from (its adapter, tokenizer, index and prompts).
        dataset_dir (`str`, *optional*): prepared dataset folder; defaults to the SFT run's.
        rewards (`str`, *optional*, defaults to `"hit=1,rank=1,prefix=0.5"`): reward weights, `name=weight`
            comma-separated, names from `llmrec.rewards.REWARDS`.
        rollout (`str`, *optional*, defaults to `"beam"`): `beam` (top-G distinct items) or `sample`.
        mode (`str`, *optional*, defaults to `"direct"`): `direct` (SID only) or `reason` (`<think>` first).
        max_prompts (`int`, *optional*, defaults to `2000`): training prompts sampled (0 = all positions).
        prompts_seed (`int`, *optional*, defaults to `42`): seed of that sample.
        max_think_tokens (`int`, *optional*, defaults to `32`): rationale budget in reasoning mode.
        resume (`bool`, *optional*, defaults to `False`): continue from the last checkpoint in `output_dir`.
    """

    sft_run: str = field(metadata={"help": "SFT run folder to start from"})
    dataset_dir: str | None = field(default=None, metadata={"help": "prepared dataset (default: the SFT run's)"})
    rewards: str = field(default="hit=1,rank=1,prefix=0.5", metadata={"help": "reward weights, name=weight"})
    rollout: str = field(default="beam", metadata={"help": "beam or sample"})
    mode: str = field(default="direct", metadata={"help": "direct or reason"})
    max_prompts: int = field(default=2000, metadata={"help": "training prompts sampled (0 = all)"})
    prompts_seed: int = field(default=42, metadata={"help": "seed of the prompt sample"})
    max_think_tokens: int = field(default=32, metadata={"help": "rationale token budget (reason mode)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})

    def __post_init__(self) -> None:
        weights = parse_reward_weights(self.rewards)
        if self.rollout not in ROLLOUTS:
            raise ValueError(f"rollout must be one of {ROLLOUTS}, got {self.rollout!r}.")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if "format" in weights and self.mode != "reason":
            raise ValueError("the format reward scores <think> rationales: use it with mode: reason, or drop it.")
        if self.max_prompts < 0 or self.max_think_tokens < 1:
            raise ValueError(f"max_prompts must be >= 0 and max_think_tokens >= 1, got {self}.")


def grpo_rows(
    recommender: Recommender, sequences: dict[str, tuple[str, ...]], max_prompts: int, seed: int, mode: str
) -> list[dict]:
    """Next-item prompts from the training sequences, rendered as the run's recommender renders them.

    Row columns: `prompt` (what TRL tokenizes; in direct mode it already ends with the answer prefix),
    `answer_prefix` (reason mode: what follows `</think>` before the SID), `target_item_id`, `seen` (items before
    the target, excluded from rollouts) and `user_id`.
    """
    positions = [
        (user_id, train, t)
        for user_id, train in sequences.items()
        for t in range(1, len(train))
        if train[t] not in train[:t]  # a repeat cannot be hit: rollouts exclude the history
    ]
    if not positions:
        raise DataError("no training position with a history and a new target item: nothing to train GRPO on.")
    if max_prompts and len(positions) > max_prompts:
        positions = random.Random(seed).sample(positions, max_prompts)
    rows = []
    for user_id, train, t in positions:
        prompt, answer_prefix = recommender.prompt_parts(list(train[:t]))
        rows.append(
            {
                "prompt": prompt + answer_prefix if mode == "direct" else prompt,
                "answer_prefix": "" if mode == "direct" else answer_prefix,
                "target_item_id": train[t],
                "seen": list(train[:t]),
                "user_id": user_id,
            }
        )
    return rows


def group_starts(prompts: list, group_size: int) -> list[int]:
    """Start index of each rollout group, checking that the batch holds whole groups of identical prompts.

    Examples:
        >>> group_starts(["p", "p", "q", "q"], 2)
        [0, 2]
    """
    if len(prompts) % group_size:
        raise ValueError(
            f"{len(prompts)} prompts on this process is not a multiple of num_generations={group_size}: rollout "
            "groups must not straddle processes. Make per_device_train_batch_size * steps_per_generation a "
            "multiple of num_generations."
        )
    starts = list(range(0, len(prompts), group_size))
    for start in starts:
        if any(p != prompts[start] for p in prompts[start : start + group_size]):
            raise ValueError(f"rollout group at {start} mixes prompts; expected {group_size} copies of one prompt.")
    return starts


class SidRollout:
    """TRL `rollout_func`: G ranked, always-valid completions per prompt (see the module docstring)."""

    def __init__(
        self,
        tokenizer,
        trie: SidTrie,
        sid_token_ids: dict[str, list[int]],
        args: GRPOScriptArguments,
        output_token_ids: torch.LongTensor | None = None,
    ):
        self.tokenizer, self.trie, self.sid_token_ids, self.args = tokenizer, trie, sid_token_ids, args
        self.output_token_ids = output_token_ids  # (V_out,): a sid_softmax run's output vocabulary, else None
        self.banned_token_ids = torch.cat(trie.token_ids).tolist()  # every SID token: never in a rationale

    def __call__(self, prompts: list[str], trainer: SidGRPOTrainer) -> dict:
        rows = trainer.rollout_rows
        if len(rows) != len(prompts):
            raise RuntimeError(f"rollout got {len(prompts)} prompts for {len(rows)} rows; TRL's batching changed?")
        size = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        starts = group_starts(prompts, size)
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()  # no LoRA dropout in rollouts
        heads = [rows[s] for s in starts]
        prompt_ids = self.tokenizer([row["prompt"] for row in heads], add_special_tokens=False)["input_ids"]
        try:
            if self.args.mode == "reason":
                groups = self.reason(model, heads, prompt_ids, size, trainer.temperature)
            elif self.args.rollout == "beam":
                groups = self.beam(model, heads, prompt_ids, size)
            else:
                groups = self.sample(model, heads, prompt_ids, size, trainer.temperature)
        finally:
            model.train(was_training)
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "item_id": [], "group_rank": []}
        reason = self.args.mode == "reason"
        if reason:
            out.update(env_mask=[], think_closed=[])
        for ids, group in zip(prompt_ids, groups, strict=True):
            for rank, completion in enumerate(group, start=1):
                out["prompt_ids"].append(ids)
                out["completion_ids"].append(completion["completion_ids"])
                out["item_id"].append(completion["item_id"])
                out["group_rank"].append(rank)
                if reason:
                    out["env_mask"].append(completion["env_mask"])
                    out["think_closed"].append(completion["think_closed"])
        out["group_size"] = [size] * len(out["item_id"])
        out["logprobs"] = None  # TRL recomputes them with the policy
        return out

    def _exclude(self, rows: list[dict]) -> list[set[str]]:
        return [set(row["seen"]) for row in rows]

    def _check_full(self, found: list[list], size: int) -> None:
        if any(len(items) < size for items in found):
            raise ValueError(
                f"fewer than num_generations={size} items reachable for a prompt (catalog minus history); "
                "lower num_generations."
            )

    def beam(self, model, rows: list[dict], prompt_ids: list[list[int]], size: int) -> list[list[dict]]:
        input_ids, attention_mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)  # (B, L)
        found = constrained_beam_search(
            model,
            input_ids,
            attention_mask,
            self.trie,
            size,
            exclude=self._exclude(rows),
            output_token_ids=self.output_token_ids,
        )
        self._check_full(found, size)
        return [[self._direct(item_id) for item_id, _ in items] for items in found]

    def sample(
        self, model, rows: list[dict], prompt_ids: list[list[int]], size: int, temperature: float
    ) -> list[list[dict]]:
        repeated = [ids for ids in prompt_ids for _ in range(size)]
        input_ids, attention_mask = left_pad(repeated, self.tokenizer.pad_token_id)  # (B * G, L)
        exclude = [seen for seen in self._exclude(rows) for _ in range(size)]
        width = input_ids.shape[1]

        def allowed(row: int, ids: torch.LongTensor) -> list[int]:
            return self.trie.allowed_token_ids(ids[width:].tolist(), exclude=exclude[row])

        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.trie.num_levels,
            prefix_allowed_tokens_fn=allowed,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        sids = output.sequences[:, width:]  # (B * G, M)
        # (B * G, M, V): log-probs of the unprocessed logits, normalised as decoding normalises them
        raw = restricted_log_softmax(torch.stack(output.logits, dim=1), self.output_token_ids)
        scores = raw.gather(-1, sids[..., None]).squeeze(-1).sum(-1).tolist()  # (B * G,)
        groups = []
        for start in range(0, len(scores), size):
            members = sorted(range(start, start + size), key=lambda i: -scores[i])
            groups.append([self._direct(self.trie.item_of_token_ids(sids[i].tolist())) for i in members])
        return groups

    def reason(
        self, model, rows: list[dict], prompt_ids: list[list[int]], size: int, temperature: float
    ) -> list[list[dict]]:
        open_ids, close_ids = think_token_ids(self.tokenizer)
        prefixes = self.tokenizer([row["answer_prefix"] for row in rows], add_special_tokens=False)["input_ids"]
        rationales = generate_rationales(
            model,
            self.tokenizer,
            prompt_ids,
            size,
            self.args.max_think_tokens,
            self.banned_token_ids,
            do_sample=True,
            temperature=temperature,
        )
        groups = []
        for ids, prefix, seen, group in zip(prompt_ids, prefixes, self._exclude(rows), rationales, strict=True):
            forced = [r.forced_close(close_ids) for r in group]
            inputs = [ids + open_ids + r.token_ids + f + prefix for r, f in zip(group, forced, strict=True)]
            input_ids, attention_mask = left_pad(inputs, self.tokenizer.pad_token_id)
            found = constrained_beam_search(
                model, input_ids, attention_mask, self.trie, num_beams=4, top_k=1, exclude=[seen] * size
            )
            self._check_full(found, 1)
            completions = []
            for r, f, items in zip(group, forced, found, strict=True):
                item_id, score = items[0]
                sid = self.sid_token_ids[item_id]
                completions.append(
                    {
                        "completion_ids": open_ids + r.token_ids + f + prefix + sid,
                        "env_mask": [0] * len(open_ids)
                        + [1] * len(r.token_ids)
                        + [0] * (len(f) + len(prefix))
                        + [1] * len(sid),  # fmt: skip
                        "item_id": item_id,
                        "think_closed": r.closed,
                        "score": score,
                    }
                )
            groups.append(sorted(completions, key=lambda c: -c["score"]))
        return groups

    def _direct(self, item_id: str) -> dict:
        return {"completion_ids": list(self.sid_token_ids[item_id]), "item_id": item_id}


class SidGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` for SID runs: rollouts see their dataset rows, log-probs go through PEFT's SID rows, and the
    reference adapter holds the SFT SID rows too (see the module docstring)."""

    def __init__(self, *args, output_token_ids: torch.LongTensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rollout_rows: list[dict] = []
        # A sid_softmax run: log-probs are normalised over these tokens (see the module docstring).
        self.output_vocabulary = (
            OutputVocabulary(output_token_ids.tolist(), len(self.processing_class))
            if output_token_ids is not None
            else None
        )
        model = self.accelerator.unwrap_model(self.model)
        if "ref" in getattr(model, "peft_config", {}):
            # TRL copies parameters named `.default.`; PEFT's trainable-token deltas end in `.default`.
            default = re.compile(r"\.default(?=\.|$)")
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, param in params.items():
                    ref_name = default.sub(".ref", name)
                    if ref_name != name and ref_name in params:
                        params[ref_name].copy_(param)

    def _generate_and_score_completions(self, inputs):
        self.rollout_rows = inputs  # the rollout needs each prompt's history and answer prefix
        return super()._generate_and_score_completions(inputs)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        if compute_aux_loss:
            raise ValueError("llmrec's GRPO has no MoE router auxiliary loss; set router_aux_loss_coef: 0.")
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]  # (B, L)
            with self.accelerator.autocast():
                logits = model(
                    input_ids=ids,
                    attention_mask=attention_mask[start : start + batch_size],
                    use_cache=False,
                    logits_to_keep=logits_to_keep + 1,
                ).logits[:, :-1]  # (B, C, V): the positions predicting the C completion tokens
            targets = ids[:, -logits_to_keep:]  # (B, C)
            scaled = logits.float() / self.temperature  # (B, C, V)
            if self.output_vocabulary is not None:
                scaled = scaled[..., self.output_vocabulary.token_ids.to(scaled.device)]  # (B, C, V_out)
                # Positions in the output vocabulary. Rollouts complete with SID tokens only, so a token outside it
                # is right padding, which the completion mask drops: any position will do.
                targets = self.output_vocabulary.position.to(targets.device)[targets].clamp(min=0)
            log_probs = scaled.log_softmax(-1)
            all_logps.append(log_probs.gather(-1, targets[..., None]).squeeze(-1))  # (B, C)
            if compute_entropy:
                all_entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Only the trained adapter, without the frozen "ref" copy or the full resized embedding matrices.
        output_dir = output_dir or self.args.output_dir
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir, selected_adapters=["default"], save_embedding_layers=False)
        self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / "training_args.bin")


def make_trainer(args: GRPOScriptArguments, training_args: GRPOConfig) -> tuple[SidGRPOTrainer, dict, int]:
    """The trainer for `args.sft_run`, with its rollout and rewards; also returns the SFT run config and the number
    of training prompts."""
    if training_args.mask_truncated_completions:
        raise ValueError(
            "mask_truncated_completions: true would mask every rollout: a SID completion never ends with EOS (TRL "
            "counts it as truncated). Set it to false."
        )
    sft = Path(args.sft_run)
    recommender = Recommender.from_pretrained(sft, trainable=True)  # the SFT adapter, kept trainable
    if recommender.output_token_ids is not None and args.mode == "reason":
        raise ValueError(
            f"{sft} was trained with sid_softmax: true, so its next-token distribution covers SID tokens and EOS "
            "only; mode: reason needs free-text rationales. Use mode: direct, or start from an SFT run trained "
            "without sid_softmax."
        )
    tokenizer, index = recommender.tokenizer, recommender.index
    dataset_dir = Path(args.dataset_dir or recommender.config["script_args"]["dataset_dir"])
    dataset = load_dataset(dataset_dir)
    if dataset.meta["files"]["items.jsonl"] != index.catalog_sha256:
        raise DataError(
            f"{dataset_dir / 'items.jsonl'} is not the catalog {sft / 'sid_index.json'} was built from; pass the "
            "dataset the SFT run was trained on with --dataset_dir."
        )
    sequences = {user.user_id: user.train for user in dataset.load_split().users}
    rows = grpo_rows(recommender, sequences, args.max_prompts, args.prompts_seed, args.mode)
    weights = parse_reward_weights(args.rewards)
    training_args.reward_weights = list(weights.values())
    sid_token_ids = {item: tokenizer.convert_tokens_to_ids(index.sid_tokens(sid)) for item, sid in index.items.items()}
    trainer = SidGRPOTrainer(
        model=recommender.model,
        reward_funcs=make_reward_funcs(list(weights), index),
        args=training_args,
        train_dataset=HFDataset.from_list(rows),
        processing_class=tokenizer,
        rollout_func=SidRollout(tokenizer, recommender.trie, sid_token_ids, args, recommender.output_token_ids),
        output_token_ids=recommender.output_token_ids,
    )
    return trainer, recommender.config, len(rows)


def run_grpo(args: GRPOScriptArguments, training_args: GRPOConfig) -> Path:
    """Train GRPO from `args.sft_run` and save a self-contained run folder; returns it."""
    out = Path(training_args.output_dir)
    resume_from = check_output_dir(out, args.resume)
    trainer, sft_config, num_prompts = make_trainer(args, training_args)
    clock = TrainingClock(resume_from)
    trainer.add_callback(clock)
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.is_world_process_zero():
        sft = Path(args.sft_run)
        save_grpo_run(
            trainer,
            sft_config,
            args,
            training_args,
            sft,
            out,
            result.metrics,
            clock.log_fields(trainer.state.global_step),
            num_prompts,
        )
    return out


def plot_rewards(history: list[dict], path: Path) -> None:
    """Mean reward per logged step, total and per reward function, and the KL to the SFT reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in history if "reward" in row]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    per_function = sorted({key for row in rows for key in row if key.startswith("rewards/") and key.endswith("/mean")})
    for key in ["reward", *per_function]:
        left.plot([row["step"] for row in rows], [row[key] for row in rows], label=key.replace("rewards/", ""))
    left.set(xlabel="optimizer step", ylabel="mean reward of the rollouts", title="GRPO rewards")
    right.plot([row["step"] for row in rows], [row.get("kl", float("nan")) for row in rows])
    right.set(xlabel="optimizer step", ylabel="KL to the SFT adapter", title="KL")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if rows:
        left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_grpo_run(
    trainer: SidGRPOTrainer,
    sft_config: dict,
    args: GRPOScriptArguments,
    training_args: GRPOConfig,
    sft: Path,
    out: Path,
    metrics: dict,
    clock: dict[str, float | int],
    num_prompts: int,
) -> None:
    trainer._save(str(out))
    for name in ("sid_index.json", "items.jsonl"):
        shutil.copyfile(sft / name, out / name)
    shutil.copytree(sft / "prompts", out / "prompts", dirs_exist_ok=True)
    history = trainer.state.log_history
    write_json_atomic(
        out / "training_log.json",
        {
            "metrics": metrics,
            **clock,  # summed over resumed segments, from step timed_from_step; seconds_per_step
            "log_history": history,
        },
    )
    plot_rewards(history, out / "reward_curve.png")
    config = dict(sft_config)
    config.update(
        llmrec_version=__version__,
        stage="grpo",
        sft_run=str(sft),
        sft_adapter_sha256=sha256_file(sft / "adapter_model.safetensors"),
        grpo={
            "script_args": asdict(args),
            "training_args": training_args.to_dict(),
            "num_prompts": num_prompts,
            "train_seconds": clock["train_seconds"],
        },
    )
    write_json_atomic(out / RUN_CONFIG, config)
    logger.info("GRPO run saved to %s (%s)", out, json.dumps({k: v for k, v in metrics.items() if "loss" in k}))
