"""SID softmax: the next-token distribution normalised over the run's output vocabulary, not the whole vocabulary.

A run trained with `sid_softmax: true` scores each completion position against its *output vocabulary* only: every
SID token of the index plus the few other tokens its training completions contain (EOS; the chat template's end of
turn). Why: on SID answers the LM head's projection onto SmolLM2's 49k-token vocabulary, and the softmax over it,
are a large share of a training step, although the loss only ranks the target token against the others; projecting
the kept positions onto the ~770 rows of the output vocabulary instead makes a step cheaper (measured in
`eval/results/sft_bench.md`). Such a model is calibrated among those tokens only, so decoding normalises the same
way (`restricted_log_softmax`); the scores of a run trained with the full softmax are unchanged.

Supported LM heads: one linear map of the final hidden state (Llama, Qwen, Mistral, SmolLM, ...), tied or not,
with PEFT's trainable SID rows; heads with a bias, LoRA on the head, or logit scaling / soft-capping are refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from llmrec.sid import SemanticIdIndex

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def output_vocabulary(tokenizer, index: SemanticIdIndex, completion_tokens: Iterable[int] = ()) -> list[int]:
    """Sorted token ids of a `sid_softmax` run's output vocabulary: the index's SID tokens, EOS, and
    `completion_tokens` (every token the training completions contain, e.g. an end-of-turn newline)."""
    sid_ids = tokenizer.convert_tokens_to_ids(index.all_tokens())
    unknown = [token for token, i in zip(index.all_tokens(), sid_ids, strict=True) if i == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"SID token(s) {unknown[:3]} are not in the tokenizer; add them first (add_sid_tokens).")
    ids = set(sid_ids) | set(completion_tokens)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class OutputVocabulary:
    """Token ids of an output vocabulary and the map from full-vocabulary label ids to their positions in it."""

    def __init__(self, token_ids: list[int], vocab_size: int) -> None:
        if not token_ids or max(token_ids) >= vocab_size or min(token_ids) < 0:
            raise ValueError(f"output vocabulary ids must be in 0..{vocab_size - 1}, got {len(token_ids)} ids.")
        self.token_ids = torch.tensor(token_ids, dtype=torch.long)  # (V_out,)
        self.position = torch.full((vocab_size,), -1, dtype=torch.long)  # (V,): -1 outside
        self.position[self.token_ids] = torch.arange(len(token_ids))

    def __len__(self) -> int:
        return len(self.token_ids)

    def targets(self, labels: torch.LongTensor, tokenizer=None) -> torch.LongTensor:
        """`labels` (any shape, -100 = ignored) as positions in the vocabulary; a label outside it is an error."""
        kept = labels != -100
        positions = torch.full_like(labels, -100)
        positions[kept] = self.position.to(labels.device)[labels[kept]]
        outside = kept & (positions == -1)
        if outside.any():
            token = int(labels[outside][0])
            text = repr(tokenizer.convert_ids_to_tokens(token)) if tokenizer is not None else ""
            raise ValueError(
                f"label token {token} {text} is not in the run's output vocabulary (SID tokens, EOS and the training "
                "completions' tokens): sid_softmax cannot score it. Train without sid_softmax, or keep the data "
                "the vocabulary was built from."
            )
        return positions


def head_rows(model: torch.nn.Module, vocabulary: OutputVocabulary) -> torch.Tensor:
    """The rows of `model`'s effective LM-head matrix for `vocabulary`'s tokens, `(V_out, D)`: differentiable through
    PEFT's trainable SID rows (`trainable_token_indices`), so training through them updates those rows like the full
    head."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    config = model.config
    for name in LOGIT_TRANSFORMS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise ValueError(f"sid_softmax needs a plain linear LM head; this model's config sets {name}.")
    head = model.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)  # PEFT TrainableTokensWrapper (the tied head with SID rows)
    linear = adapter.get_base_layer() if adapter is not None else head
    if type(linear) is not torch.nn.Linear or linear.bias is not None:
        raise ValueError(
            f"sid_softmax needs a bias-free nn.Linear LM head (optionally with PEFT trainable tokens), got "
            f"{type(linear).__name__}; LoRA on lm_head is not supported."
        )
    weight = linear.weight  # (V, D)
    rows = weight[vocabulary.token_ids.to(weight.device)]  # (V_out, D)
    if adapter is not None and not adapter.disable_adapters and not adapter.merged:
        for name in adapter.active_adapters:
            trained = torch.as_tensor(adapter.token_indices[name])  # (T,)
            at = vocabulary.position[trained].to(weight.device)  # (T,): row in `rows`, -1 outside the vocabulary
            kept = at >= 0
            rows = rows.index_copy(0, at[kept], adapter.trainable_tokens_delta[name][kept].to(rows))
    return rows


def restricted_log_softmax(logits: torch.Tensor, token_ids: torch.LongTensor | None) -> torch.Tensor:
    """Log-softmax of `logits` `(..., V)` over `token_ids` only (`-inf` elsewhere); over all of V when `None`."""
    logits = logits.float()
    if token_ids is None:
        return torch.log_softmax(logits, dim=-1)
    token_ids = token_ids.to(logits.device)
    out = torch.full_like(logits, -torch.inf)
    out[..., token_ids] = torch.log_softmax(logits[..., token_ids], dim=-1)
    return out
