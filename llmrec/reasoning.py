"""Reasoning mode: the model writes a short `<think>...</think>` rationale, then the constrained decoder picks a SID.

The rationale is free text from HF `generate` (stopped at `</think>` by a stopping criterion, SID tokens suppressed so
an item can only come from the trie); a rationale that runs out of tokens is closed by the decoder and marked
`closed=False` (the format reward pays only for rationales the model closed itself). The answer then continues
exactly as in direct mode: the run's answer prefix (the history SIDs for `sequence` runs) and one SID from
`constrained_beam_search`, scored on the token ids of prompt + rationale, so training and inference see the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from llmrec.rewards import THINK_CLOSE, THINK_OPEN


@dataclass(frozen=True)
class Rationale:
    token_ids: list[int]  # what the model wrote after `<think>`, including its own `</think>` when it closed it
    closed: bool  # the model wrote `</think>` itself within the token budget

    def forced_close(self, close_ids: list[int]) -> list[int]:
        """The `</think>` ids the decoder appends after this rationale: none when the model closed it itself."""
        return [] if self.closed else close_ids


def left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Token id lists -> left-padded `input_ids` and `attention_mask`, both `(B, L)`.

    Examples:
        >>> ids, mask = left_pad([[5, 6], [7]], pad_token_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def closes(tokenizer, token_ids: list[int], close_ids: list[int]) -> bool:
    """Whether `token_ids` end with `</think>`: its canonical token ids, or any tokens that decode to it."""
    if token_ids[-len(close_ids) :] == close_ids:
        return True
    return THINK_CLOSE in tokenizer.decode(token_ids[-len(close_ids) - 4 :])


class ThinkClosed(StoppingCriteria):
    """Stops a row once its generated tokens end with `</think>` (HF's `stop_strings` needs a BPE-style vocab)."""

    def __init__(self, tokenizer, close_ids: list[int], prompt_length: int) -> None:
        self.tokenizer, self.close_ids, self.prompt_length = tokenizer, close_ids, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        rows = input_ids[:, self.prompt_length :].tolist()  # (B, T) generated so far
        done = [bool(row) and closes(self.tokenizer, row, self.close_ids) for row in rows]
        return torch.tensor(done, device=input_ids.device)


def think_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of `<think>` and `</think>` (plain text for models without such special tokens)."""
    return (
        tokenizer(THINK_OPEN, add_special_tokens=False)["input_ids"],
        tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"],
    )


@torch.no_grad()
def generate_rationales(
    model: torch.nn.Module,
    tokenizer,
    prompt_ids: list[list[int]],
    num_per_prompt: int,
    max_think_tokens: int,
    banned_token_ids: list[int],
    do_sample: bool,
    temperature: float = 1.0,
) -> list[list[Rationale]]:
    """`num_per_prompt` rationales per prompt, each generated after `prompt + <think>`.

    An unclosed rationale (token budget spent, or EOS) is returned as written; the caller appends `</think>`.

    Args:
        prompt_ids (`list[list[int]]`): the prompts' token ids (everything before the answer).
        banned_token_ids (`list[int]`): never generated in a rationale (the SID tokens).
        do_sample (`bool`): sample (GRPO rollouts) or greedy (inference).
    """
    open_ids, close_ids = think_token_ids(tokenizer)
    rows = [ids + open_ids for ids in prompt_ids for _ in range(num_per_prompt)]
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)  # (B * G, L)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if do_sample else {}
    output = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=max_think_tokens,
        stopping_criteria=StoppingCriteriaList([ThinkClosed(tokenizer, close_ids, input_ids.shape[1])]),
        suppress_tokens=banned_token_ids or None,
        pad_token_id=tokenizer.pad_token_id,
        **({"do_sample": False} if not do_sample else sampling),
    )
    new_tokens = output[:, input_ids.shape[1] :].tolist()  # (B * G, T)
    stop_ids = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    rationales = []
    for tokens in new_tokens:
        kept: list[int] = []
        closed = False
        for token in tokens:
            if token in stop_ids:
                break
            kept.append(token)
            if closes(tokenizer, kept, close_ids):
                closed = True
                break
        rationales.append(Rationale(kept, closed))
    return [rationales[i : i + num_per_prompt] for i in range(0, len(rationales), num_per_prompt)]
