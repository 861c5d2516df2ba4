"""GRPO rewards from the ranked result of a rollout group: pure functions, and their TRL reward-function adapters.

A rollout group is the `G` completions of one prompt, ranked best first by the model's log-probability of the item
(beam order for constrained beam rollouts, sorted samples for constrained sampling; see `llmrec.grpo`). Each
completion names one catalog item (or none, for an unparseable reasoning-mode answer). The rewards:

- `hit_reward`: 1 when the completion is the held-out target item, else 0.
- `rank_reward`: NDCG-shaped by the completion's rank `r` (1-based) in its group. A hit earns its discounted gain
  `1 / log2(r + 1)` (what that ranked list scores in NDCG); a miss costs its share of the group's total discount,
  `-(1 / log2(r + 1)) / sum_{j=1..G} 1 / log2(j + 1)`, so a wrong item the model ranks first is penalised most
  (MiniOneRec's rank-aware idea: push probability off confident mistakes, not off every miss alike).
- `prefix_reward`: hierarchical partial credit, the fraction of the target's SID levels the completion matches as a
  prefix: `<a_3><b_1><c_7>` against target `<a_3><b_1><c_2>` earns 2/3 (OpenOneRec's partial-hit reward). Coarse
  levels group similar items, so a near miss teaches the right region of the catalog.
- `format_reward` (reasoning mode): 1 when the model itself wrote a non-empty `<think>...</think>` rationale and
  closed it within its token budget, else 0. The SID part is always valid: the decoder constrains it.

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)` and weighs the
functions with `GRPOConfig.reward_weights`. Our rollout adds the columns `item_id`, `group_rank` and `group_size`
(and `think_closed` in reasoning mode) next to the dataset's `target_item_id`; `make_reward_funcs` binds them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from llmrec.sid import SemanticIdIndex

REWARDS = ("hit", "rank", "prefix", "format")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_RATIONALE = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)


def hit_reward(item_id: str | None, target_item_id: str) -> float:
    """1.0 if the completion's item is the target, else 0.0.

    Examples:
        >>> hit_reward("i7", "i7"), hit_reward("i3", "i7"), hit_reward(None, "i7")
        (1.0, 0.0, 0.0)
    """
    return float(item_id is not None and item_id == target_item_id)


def rank_reward(is_hit: bool, rank: int, group_size: int) -> float:
    """NDCG-shaped reward of a completion ranked `rank` (1-based) among the `group_size` of its group.

    hit: `1 / log2(rank + 1)`; miss: `-(1 / log2(rank + 1)) / sum_{j=1..G} 1 / log2(j + 1)` (a group's misses cost
    at most 1 in total, the top-ranked miss the most).

    Examples:
        >>> rank_reward(True, 1, 4), round(rank_reward(True, 3, 4), 4)
        (1.0, 0.5)
        >>> round(rank_reward(False, 1, 4), 4), round(rank_reward(False, 4, 4), 4)
        (-0.3904, -0.1681)
    """
    if not 1 <= rank <= group_size:
        raise ValueError(f"rank must be in 1..group_size={group_size}, got {rank}.")
    gain = 1.0 / math.log2(rank + 1)
    if is_hit:
        return gain
    return -gain / sum(1.0 / math.log2(j + 1) for j in range(1, group_size + 1))


def prefix_reward(sid: Sequence[int] | None, target_sid: Sequence[int]) -> float:
    """Fraction of the target's SID levels matched as a prefix (0 for no item).

    Examples:
        >>> prefix_reward((3, 1, 7), (3, 1, 2)), prefix_reward((0, 1, 2), (3, 1, 2))
        (0.6666666666666666, 0.0)
    """
    if sid is None:
        return 0.0
    if len(sid) != len(target_sid):
        raise ValueError(f"SIDs of different lengths: {tuple(sid)} vs target {tuple(target_sid)}.")
    matched = 0
    for code, target_code in zip(sid, target_sid, strict=True):
        if code != target_code:
            break
        matched += 1
    return matched / len(target_sid)


def format_reward(completion: str, think_closed: bool) -> float:
    """1.0 if the completion opens with a non-empty `<think>...</think>` that the model closed itself, else 0.0.

    `think_closed` is False when the rationale ran out of tokens and the decoder had to close it.

    Examples:
        >>> format_reward("<think>likes office chairs</think><a_1><b_2>", True)
        1.0
        >>> format_reward("<think>chairs</think><a_1><b_2>", False), format_reward("<think> </think>", True)
        (0.0, 0.0)
    """
    match = _RATIONALE.match(completion)
    return float(think_closed and match is not None and bool(match.group(1).strip()))


def parse_reward_weights(text: str) -> dict[str, float]:
    """`"hit=1,rank=1,prefix=0.5"` -> `{"hit": 1.0, "rank": 1.0, "prefix": 0.5}`.

    Examples:
        >>> parse_reward_weights("hit=1, prefix=0.5")
        {'hit': 1.0, 'prefix': 0.5}
    """
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            weights[name.strip()] = math.nan
        if name.strip() not in REWARDS or not math.isfinite(weights[name.strip()]):
            raise ValueError(f"reward entry {part!r} must be name=weight with a name from {REWARDS} and a number.")
    if not weights:
        raise ValueError(f"no rewards given; use e.g. 'hit=1,rank=1,prefix=0.5' (names: {REWARDS}).")
    return weights


def make_reward_funcs(names: Sequence[str], index: SemanticIdIndex) -> list[Callable[..., list[float]]]:
    """TRL reward functions for `names` (named `<name>_reward`, the name TRL logs) that read the rollout's columns."""

    def hit(completions, item_id, target_item_id, **_) -> list[float]:
        return [hit_reward(i, t) for i, t in zip(item_id, target_item_id, strict=True)]

    def rank(completions, item_id, target_item_id, group_rank, group_size, **_) -> list[float]:
        return [
            rank_reward(hit_reward(i, t) == 1.0, r, g)
            for i, t, r, g in zip(item_id, target_item_id, group_rank, group_size, strict=True)
        ]

    def prefix(completions, item_id, target_item_id, **_) -> list[float]:
        return [
            prefix_reward(index.items[i] if i is not None else None, index.items[t])
            for i, t in zip(item_id, target_item_id, strict=True)
        ]

    def format_(completions, think_closed=None, **_) -> list[float]:
        if think_closed is None:
            raise ValueError("the format reward needs reasoning-mode rollouts (mode: reason); drop it in direct mode.")
        return [format_reward(c, closed) for c, closed in zip(completions, think_closed, strict=True)]

    funcs = {"hit": hit, "rank": rank, "prefix": prefix, "format": format_}
    unknown = [name for name in names if name not in funcs]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; choose from {REWARDS}.")
    chosen = []
    for name in names:
        func = funcs[name]
        func.__name__ = f"{name}_reward"
        chosen.append(func)
    return chosen
