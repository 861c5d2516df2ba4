"""The inference API: `Recommender.from_pretrained(run_dir).recommend(history, k=10)`.

It renders the run's own next-item prompt (its `eval_task`: `seqrec` puts the history in the prompt, `sequence`
continues the history's SIDs in the answer; first paraphrase, same chat/plain format and history length as in
training) and returns the top-k catalog items found by `constrained_beam_search` over the run's SID trie, so every
recommendation is a real item.

Behaviour at the edges: an unknown item id in a history is an error naming it (or is dropped with a warning under
`skip_unknown=True`); an empty history is an error (a generative recommender needs at least one item to condition
on; serve cold-start users from a popularity list); `k` above the catalog size is an error; with
`exclude_history=True` (default) items of the history are never recommended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from llmrec.data.dataset import read_items
from llmrec.data.io import DataError, sha256_file
from llmrec.decoding import constrained_beam_search
from llmrec.prompting import PLAIN_FORMAT, load_templates
from llmrec.reasoning import generate_rationales, left_pad, think_token_ids
from llmrec.rewards import THINK_CLOSE
from llmrec.run import load_run
from llmrec.schemas import Item
from llmrec.trie import SidTrie

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float  # summed log-probability of the item's SID tokens
    sid: str
    rationale: str | None = None  # mode="reason": the model's <think> text before the SID


class Recommender:
    """A trained run, ready to recommend. Build it with `from_pretrained`."""

    def __init__(self, model, tokenizer, index, items: dict[str, Item], config: dict, templates_dir: Path) -> None:
        self.model, self.tokenizer, self.index, self.items, self.config = model, tokenizer, index, items, config
        script_args = config["script_args"]
        self.chat, self.max_history = script_args["chat"], script_args["max_history"]
        self.task = script_args.get("eval_task", "seqrec")
        self.separator = script_args.get("item_separator", ", ")  # runs made before the option used ", "
        self.max_think_tokens = config.get("grpo", {}).get("script_args", {}).get("max_think_tokens", 64)
        templates, self.system = load_templates(templates_dir, [self.task])
        self.template = templates[self.task].templates[0][0]
        self.trie = SidTrie(index, tokenizer)
        # sid_softmax runs: decode with the softmax over the vocabulary they were trained with
        output_ids = config.get("output_token_ids")
        if output_ids and not 0 <= min(output_ids) <= max(output_ids) < len(tokenizer):
            raise DataError(
                f"run_config.json's output_token_ids reach token {max(output_ids)}, but the run's tokenizer has "
                f"{len(tokenizer)} tokens: the config and tokenizer come from different runs."
            )
        self.output_token_ids = torch.tensor(output_ids, dtype=torch.long) if output_ids else None
        self.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, merge: bool = True, trainable: bool = False) -> Recommender:
        """Load adapter, tokenizer, index, catalog and templates from a run folder and check they belong together;
        `trainable` keeps the adapter unmerged and trainable (GRPO continues it)."""
        run = load_run(run_dir, merge=merge and not trainable, trainable=trainable)
        items_path = Path(run_dir) / "items.jsonl"
        if not items_path.is_file():
            raise DataError(f"{items_path} not found; the run folder is incomplete (re-run scripts/sft.py).")
        if sha256_file(items_path) != run.index.catalog_sha256:
            raise DataError(
                f"{items_path} is not the catalog {run.path / 'sid_index.json'} was built from (checksum differs); "
                "rebuild the index or restore the run's items.jsonl."
            )
        items = read_items(items_path)
        return cls(run.model, run.tokenizer, run.index, items, run.config, Path(run_dir) / "prompts")

    def prompt(self, history: list[str]) -> str:
        """The prompt text for one history (already checked), as the model saw it in training."""
        prompt, answer_prefix = self.prompt_parts(history)
        return prompt + answer_prefix

    def prompt_parts(self, history: list[str]) -> tuple[str, str]:
        """(prompt, answer prefix) for one history: the answer prefix is the start of the answer the model was trained
        to write before the next SID (for `sequence` runs the history's SIDs and the item separator; empty for
        `seqrec`)."""
        recent = self.separator.join(self.index.format(self.index.items[i]) for i in history[-self.max_history :])
        text = self.template.format(history=recent)
        if not self.chat:
            prompt = PLAIN_FORMAT.format(prompt=text)
        else:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": text}
            ]
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # `sequence` runs were trained with the history as the start of the answer: continue it.
        return prompt, recent + self.separator if self.task == "sequence" else ""

    def check_history(self, history: list[str], skip_unknown: bool) -> list[str]:
        unknown = [item_id for item_id in history if item_id not in self.index.items]
        if unknown and not skip_unknown:
            raise DataError(
                f"unknown item id(s) {unknown[:5]} in the history: not in this run's catalog. Fix the ids, or pass "
                "skip_unknown=True to drop them."
            )
        if unknown:
            logger.warning("Dropping %d unknown item id(s) from a history: %s", len(unknown), unknown[:5])
        known = [item_id for item_id in history if item_id in self.index.items]
        if not known:
            raise ValueError("empty history: llmrec conditions on at least one known item; use a popularity list.")
        return known

    def recommend_batch(
        self,
        histories: list[list[str]],
        k: int = 10,
        exclude_history: bool = True,
        num_beams: int | None = None,
        skip_unknown: bool = False,
        batch_size: int = 8,
        candidates: list[str] | None = None,
        mode: str = "direct",
        max_think_tokens: int | None = None,
        renormalize: bool = False,
    ) -> list[list[Recommendation]]:
        """Top-`k` items for each history (oldest item first); `num_beams` defaults to 2k.

        `renormalize=True` normalises each SID level's probabilities over the codes the trie allows after the prefix
        (`constrained_beam_search`), so a score is the item's probability given a valid, unseen SID.

        `candidates` restricts the results to those item ids (a sub-trie: the beams never leave it). `mode="reason"`
        lets the model write a `<think>` rationale (greedy, at most `max_think_tokens`: by default the budget of the
        run's GRPO training, else 64) before the constrained SID (see `llmrec.reasoning`); it is meant for runs
        trained with GRPO `mode: reason`.
        """
        if mode not in ("direct", "reason"):
            raise ValueError(f"mode must be 'direct' or 'reason', got {mode!r}.")
        trie = self.trie
        if candidates is not None:
            unknown = [item_id for item_id in candidates if item_id not in self.index.items]
            if unknown:
                raise DataError(f"unknown candidate item id(s) {unknown[:5]}: not in this run's catalog.")
            trie = SidTrie(self.index, self.tokenizer, item_ids=candidates)
        if not 1 <= k <= len(trie.item_ids):
            raise ValueError(f"k must be in 1..{len(trie.item_ids)} (the catalog or candidate count), got {k}.")
        num_beams = num_beams or 2 * k
        if num_beams < k:
            raise ValueError(f"num_beams ({num_beams}) must be >= k ({k}).")
        checked = [self.check_history(list(history), skip_unknown) for history in histories]
        results = []
        for start in range(0, len(checked), batch_size):
            chunk = checked[start : start + batch_size]
            if mode == "direct":
                encoded = self.tokenizer(
                    [self.prompt(h) for h in chunk], return_tensors="pt", padding=True, add_special_tokens=False
                )
                input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
                rationales = [None] * len(chunk)
            else:
                input_ids, attention_mask, rationales = self._reason(chunk, max_think_tokens or self.max_think_tokens)
            found = constrained_beam_search(
                self.model,
                input_ids,
                attention_mask,
                trie,
                num_beams=min(num_beams, len(trie.item_ids)),
                top_k=k,
                exclude=[set(h) for h in chunk] if exclude_history else None,
                output_token_ids=self.output_token_ids,
                renormalize=renormalize,
            )
            for pairs, rationale in zip(found, rationales, strict=True):
                results.append(
                    [
                        Recommendation(
                            item_id,
                            self.items[item_id].title,
                            score,
                            self.index.format(self.index.items[item_id]),
                            rationale,
                        )
                        for item_id, score in pairs
                    ]
                )
        return results

    def _reason(self, histories: list[list[str]], max_think_tokens: int):
        """Token ids of prompt + `<think>` rationale `</think>` + answer prefix per history, and the rationales."""
        parts = [self.prompt_parts(h) for h in histories]
        prompt_ids = self.tokenizer([p for p, _ in parts], add_special_tokens=False)["input_ids"]
        prefix_ids = self.tokenizer([a for _, a in parts], add_special_tokens=False)["input_ids"]
        open_ids, close_ids = think_token_ids(self.tokenizer)
        sid_token_ids = torch.cat(self.trie.token_ids).tolist()
        found = generate_rationales(
            self.model, self.tokenizer, prompt_ids, 1, max_think_tokens, sid_token_ids, do_sample=False
        )
        rows, texts = [], []
        for ids, prefix, (rationale,) in zip(prompt_ids, prefix_ids, found, strict=True):
            written = rationale.token_ids + rationale.forced_close(close_ids)
            rows.append(ids + open_ids + written + prefix)
            texts.append(self.tokenizer.decode(written, skip_special_tokens=True).replace(THINK_CLOSE, "").strip())
        input_ids, attention_mask = left_pad(rows, self.tokenizer.pad_token_id)
        return input_ids, attention_mask, texts

    def recommend(
        self, history: list[str], k: int = 10, exclude_history: bool = True, **kwargs
    ) -> list[Recommendation]:
        """Top-`k` items for one history (oldest item first); `mode="reason"` thinks first (see `recommend_batch`)."""
        return self.recommend_batch([history], k, exclude_history, **kwargs)[0]
