import itertools

import pytest
import torch

from llmrec.sid import SemanticIdIndex
from llmrec.trie import SidTrie
from tests.conftest import make_tiny_tokenizer

# Hand-made 3-level index, codebooks (3, 2, 4):
#   (0, 0, 1) x   (0, 0, 3) y   (0, 1, 0) z   (2, 1, 2) w   (2, 1, 3) v
INDEX = SemanticIdIndex({"x": (0, 0, 1), "y": (0, 0, 3), "z": (0, 1, 0), "w": (2, 1, 2), "v": (2, 1, 3)}, (3, 2, 4))
# Token ids 100.. in `all_tokens` order: level a -> 100..102, level b -> 103..104, level c -> 105..108.
TOKEN_IDS = {token: 100 + i for i, token in enumerate(INDEX.all_tokens())}
A, B, C = 100, 103, 105  # first token id of each level


def all_prefixes(trie, exclude=()):
    """Every token prefix the trie allows, found by walking `allowed_token_ids`."""
    found, frontier = [], [[]]
    while frontier:
        prefix = frontier.pop()
        found.append(tuple(prefix))
        frontier.extend(prefix + [token] for token in trie.allowed_token_ids(prefix, exclude=exclude))
    return found


def test_allowed_token_ids_at_each_level():
    trie = SidTrie(INDEX, TOKEN_IDS)
    assert trie.allowed_token_ids([]) == [A + 0, A + 2]
    assert trie.allowed_token_ids([A + 0]) == [B + 0, B + 1]
    assert trie.allowed_token_ids([A + 2]) == [B + 1]
    assert trie.allowed_token_ids([A + 0, B + 0]) == [C + 1, C + 3]
    assert trie.allowed_token_ids([A + 0, B + 1]) == [C + 0]
    assert trie.allowed_token_ids([A + 2, B + 1]) == [C + 2, C + 3]
    assert trie.allowed_token_ids([A + 0, B + 0, C + 1]) == []  # complete SID
    assert trie.allowed_token_ids([A + 1]) == []  # no item starts with code 1
    assert trie.allowed_token_ids([B + 0]) == []  # a level-b token at level a
    assert trie.item_of_token_ids([A + 2, B + 1, C + 3]) == "v"
    assert trie.item_of_token_ids([A + 2, B + 1]) is None
    assert trie.item_of_token_ids([A + 2, B + 1, C + 0]) is None


def test_tensors_match_the_per_sequence_walk():
    trie = SidTrie(INDEX, TOKEN_IDS)
    assert [child.shape for child in trie.children] == [(1, 3), (2, 2), (3, 4)]
    assert [counts.tolist() for counts in trie.leaf_counts] == [[5], [3, 2], [2, 1, 2], [1] * 5]
    assert [ids.tolist() for ids in trie.token_ids] == [[100, 101, 102], [103, 104], [105, 106, 107, 108]]
    for item_id, sid in INDEX.items.items():
        leaf = trie.paths[trie.item_ids.index(item_id), -1]
        assert trie.item_of_leaf(leaf) == item_id
        node = 0
        for level, code in enumerate(sid):
            node = int(trie.children[level][node, code])
        assert trie.item_of_leaf(node) == item_id


def test_allowed_batches_nodes():
    trie = SidTrie(INDEX, TOKEN_IDS)
    nodes = torch.tensor([[0, 1], [1, 0]])  # (B, K) level-1 nodes: 0 is prefix (0,), 1 is prefix (2,)
    child, allowed = trie.allowed(1, nodes)
    assert child.shape == allowed.shape == (2, 2, 2)
    assert allowed.tolist() == [[[True, True], [False, True]], [[False, True], [True, True]]]
    assert child[0, 1].tolist() == [-1, 2]


def test_tokenizer_and_mapping_agree():
    from llmrec.model import add_sid_tokens
    from tests.conftest import make_tiny_model

    tokenizer = make_tiny_tokenizer()
    add_sid_tokens(tokenizer, make_tiny_model(len(tokenizer)), INDEX)
    from_tokenizer = SidTrie(INDEX, tokenizer)
    ids = tokenizer.convert_tokens_to_ids(INDEX.sid_tokens((2, 1, 3)))
    assert from_tokenizer.item_of_token_ids(ids) == "v"
    assert from_tokenizer.allowed_token_ids(ids[:2]) == tokenizer.convert_tokens_to_ids(["<c_2>", "<c_3>"])


def test_sub_trie_keeps_only_the_given_items():
    trie = SidTrie(INDEX, TOKEN_IDS, item_ids=["z", "v"])
    assert trie.item_ids == ["z", "v"] and len(trie) == 2
    assert trie.allowed_token_ids([]) == [A + 0, A + 2]
    assert trie.allowed_token_ids([A + 0]) == [B + 1]  # x and y (b = 0) are gone
    assert trie.allowed_token_ids([A + 2, B + 1]) == [C + 3]
    assert trie.item_of_token_ids([A + 0, B + 0, C + 1]) is None


def test_exclusion_removes_exactly_the_excluded_leaves_and_prunes_dead_ends():
    trie = SidTrie(INDEX, TOKEN_IDS)
    exclude = {"z", "x", "not-in-the-trie"}
    prefixes = all_prefixes(trie, exclude)
    leaves = {trie.item_of_token_ids(prefix) for prefix in prefixes if len(prefix) == 3}
    assert leaves == {"y", "w", "v"}
    # Every allowed prefix reaches a non-excluded item: (0, 1) held only z, so it is gone.
    for prefix in prefixes:
        assert any(trie.item_of_token_ids(p) in leaves for p in prefixes if p[: len(prefix)] == prefix)
    assert trie.allowed_token_ids([A + 0], exclude=exclude) == [B + 0]
    assert trie.allowed_token_ids([], exclude=exclude - {"not-in-the-trie"} | {"y"}) == [A + 2]
    assert trie.allowed_token_ids([], exclude=set(INDEX.items)) == []


def test_remaining_leaves_is_per_user():
    trie = SidTrie(INDEX, TOKEN_IDS)
    remaining = trie.remaining_leaves([["w", "v"], [], ["x", "x"]])  # duplicates count once
    assert remaining[0].tolist() == [[3], [5], [4]]
    assert remaining[1].tolist() == [[3, 0], [3, 2], [2, 2]]
    nodes = torch.zeros(3, 1, dtype=torch.long)
    _, allowed = trie.allowed(0, nodes, remaining)
    assert allowed[:, 0].tolist() == [[True, False, False], [True, False, True], [True, False, True]]


def test_every_sid_of_a_random_catalog_is_reachable():
    generator = torch.Generator().manual_seed(0)
    sids = {tuple(torch.randint(0, 4, (3,), generator=generator).tolist()) for _ in range(40)}
    index = SemanticIdIndex({f"i{n}": sid for n, sid in enumerate(sorted(sids))}, (4, 4, 4))
    trie = SidTrie(index, {token: i for i, token in enumerate(index.all_tokens())})
    complete = [prefix for prefix in all_prefixes(trie) if len(prefix) == 3]
    assert sorted(trie.item_of_token_ids(prefix) for prefix in complete) == sorted(index.items)
    # Prefixes the trie allows are exactly the prefixes of real SIDs.
    for length in (1, 2):
        expected = {sid[:length] for sid in sids}
        for prefix in itertools.product(range(4), repeat=length):
            token_ids = [4 * level + code for level, code in enumerate(prefix)]
            assert (trie._walk(token_ids) is not None) == (prefix in expected)


def test_errors():
    with pytest.raises(ValueError, match=r"SID token\(s\) have no LM token id .*add_sid_tokens"):
        SidTrie(INDEX, {"<a_0>": 1})
    with pytest.raises(ValueError, match=r"1 item_ids are not in the index \(e.g. \['nope'\]\)"):
        SidTrie(INDEX, TOKEN_IDS, item_ids=["x", "nope"])
    with pytest.raises(ValueError, match="item_ids is empty"):
        SidTrie(INDEX, TOKEN_IDS, item_ids=[])
    with pytest.raises(ValueError, match="share one LM token id"):
        SidTrie(INDEX, dict.fromkeys(TOKEN_IDS, 7))
