"""GRPO rewards on hand-made cases, and their TRL adapters reading the rollout columns."""

import math

import pytest

from llmrec.rewards import (
    format_reward,
    hit_reward,
    make_reward_funcs,
    parse_reward_weights,
    prefix_reward,
    rank_reward,
)
from llmrec.sid import SemanticIdIndex


def test_hit_reward():
    assert hit_reward("x", "x") == 1.0
    assert hit_reward("y", "x") == 0.0
    assert hit_reward(None, "x") == 0.0


def test_rank_reward_by_hand():
    # G = 3: discounts 1, 1/log2(3) = 0.6309, 1/log2(4) = 0.5; their sum 2.1309.
    assert rank_reward(True, 1, 3) == 1.0
    assert rank_reward(True, 2, 3) == pytest.approx(0.63093, abs=1e-5)
    assert rank_reward(False, 1, 3) == pytest.approx(-1 / 2.13093, abs=1e-5)
    assert rank_reward(False, 3, 3) == pytest.approx(-0.5 / 2.13093, abs=1e-5)
    # A group's misses cost 1 in total; a confident miss costs more than a low-ranked one.
    assert sum(rank_reward(False, r, 5) for r in range(1, 6)) == pytest.approx(-1.0)
    assert rank_reward(False, 1, 5) < rank_reward(False, 5, 5) < 0
    with pytest.raises(ValueError, match="rank must be in 1..group_size=3"):
        rank_reward(True, 4, 3)


def test_prefix_reward_by_hand():
    assert prefix_reward((1, 2, 3), (1, 2, 3)) == 1.0
    assert prefix_reward((1, 2, 0), (1, 2, 3)) == pytest.approx(2 / 3)
    assert prefix_reward((1, 0, 3), (1, 2, 3)) == pytest.approx(1 / 3)  # a prefix: level 3 matching alone counts 0
    assert prefix_reward((0, 2, 3), (1, 2, 3)) == 0.0
    assert prefix_reward(None, (1, 2, 3)) == 0.0
    with pytest.raises(ValueError, match="different lengths"):
        prefix_reward((1, 2), (1, 2, 3))


def test_format_reward_by_hand():
    assert format_reward("<think>the user likes pens</think><a_1><b_2>", True) == 1.0
    assert format_reward("  <think>\nlikes pens\n</think>\n<a_1>", True) == 1.0
    assert format_reward("<think>likes pens</think><a_1>", False) == 0.0  # closed by the decoder, not the model
    assert format_reward("<think>   </think><a_1>", True) == 0.0  # empty rationale
    assert format_reward("<a_1><think>x</think>", True) == 0.0  # rationale must come first
    assert format_reward("likes pens</think><a_1>", True) == 0.0


def test_parse_reward_weights():
    assert parse_reward_weights("hit=1,rank=0.5, prefix=0.25") == {"hit": 1.0, "rank": 0.5, "prefix": 0.25}
    for bad in ["hit", "hit=x", "ndcg=1", "hit=nan", ""]:
        with pytest.raises(ValueError):
            parse_reward_weights(bad)


def test_reward_funcs_read_rollout_columns():
    index = SemanticIdIndex({"x": (0, 1), "y": (0, 2), "z": (1, 0)}, (2, 3))
    hit, rank, prefix = make_reward_funcs(["hit", "rank", "prefix"], index)
    assert [f.__name__ for f in (hit, rank, prefix)] == ["hit_reward", "rank_reward", "prefix_reward"]
    columns = {
        "prompts": ["p"] * 3,
        "completions": ["<a_0><b_2>", "<a_0><b_1>", "<a_1><b_0>"],
        "completion_ids": [[1], [2], [3]],
        "item_id": ["y", "x", "z"],
        "target_item_id": ["x"] * 3,
        "group_rank": [1, 2, 3],
        "group_size": [3] * 3,
    }
    assert hit(**columns) == [0.0, 1.0, 0.0]
    discounts = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    total = sum(discounts)
    assert rank(**columns) == pytest.approx([-discounts[0] / total, discounts[1], -discounts[2] / total])
    assert prefix(**columns) == [0.5, 1.0, 0.0]
    (fmt,) = make_reward_funcs(["format"], index)
    with pytest.raises(ValueError, match="mode: reason"):
        fmt(**columns)
    assert fmt(completions=["<think>a</think><a_0><b_1>", "<a_0>"], think_closed=[True, True]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward_funcs(["ndcg"], index)
