import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrec.decoding import constrained_beam_search
from llmrec.model import add_sid_tokens
from llmrec.sid import SemanticIdIndex
from llmrec.sid_softmax import restricted_log_softmax
from llmrec.trie import SidTrie
from tests.conftest import make_tiny_model, make_tiny_tokenizer

PROMPTS = ["the user has interacted with a b c", "which item is next ?", "a"]


def randomize_embeddings(model, seed: int) -> None:
    """Spread the tiny model's logits: with the default 0.02 init every token is almost equally likely, so rankings
    would hinge on float noise. The embeddings are tied, so this sets the output matrix too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight.copy_(torch.randn(weight.shape, generator=generator))


def random_index(num_items: int, codebook_sizes: tuple[int, ...], seed: int) -> SemanticIdIndex:
    generator = torch.Generator().manual_seed(seed)
    sids = set()
    while len(sids) < num_items:
        sids.add(tuple(int(torch.randint(0, size, (1,), generator=generator)) for size in codebook_sizes))
    return SemanticIdIndex({f"item{n}": sid for n, sid in enumerate(sorted(sids))}, codebook_sizes)


def tiny_sid_model(index: SemanticIdIndex, seed: int):
    """Left-padding tokenizer, a tiny Llama in eval mode with `index`'s SID tokens and spread logits, and the trie."""
    tokenizer = make_tiny_tokenizer()
    tokenizer.padding_side = "left"
    model = make_tiny_model(len(tokenizer))
    add_sid_tokens(tokenizer, model, index)
    randomize_embeddings(model, seed=seed)
    model.eval()
    return tokenizer, model, SidTrie(index, tokenizer)


@pytest.fixture(scope="module")
def setup():
    """12 items, 3 levels, codebook 4; a tiny Llama with the SID tokens; left-padding tokenizer."""
    index = random_index(12, (4, 4, 4), seed=1)
    tokenizer, model, trie = tiny_sid_model(index, seed=1)
    return tokenizer, index, model, trie


def encode(tokenizer, prompts):
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def brute_force(
    model, prompt_ids: list[int], trie: SidTrie, index: SemanticIdIndex, output_token_ids=None
) -> dict[str, float]:
    """Exact log-probability of every trie item's SID after one unpadded prompt, by teacher forcing (softmax over
    `output_token_ids` only when given, as for a `sid_softmax` run)."""
    sids = torch.tensor([index.items[item_id] for item_id in trie.item_ids])  # (N, M)
    sid_token_ids = torch.stack([trie.token_ids[level][sids[:, level]] for level in range(trie.num_levels)], 1)
    prompt = torch.tensor(prompt_ids).expand(len(sids), -1)  # (N, L)
    logits = model(input_ids=torch.cat([prompt, sid_token_ids], 1)).logits  # (N, L + M, V)
    log_probs = restricted_log_softmax(logits[:, prompt.shape[1] - 1 : -1], output_token_ids)  # (N, M, V)
    scores = log_probs.gather(-1, sid_token_ids[..., None]).squeeze(-1).sum(-1)  # (N,)
    return dict(zip(trie.item_ids, scores.tolist(), strict=True))


def unpadded(input_ids, attention_mask, row: int) -> list[int]:
    return input_ids[row][attention_mask[row].bool()].tolist()


def assert_scores_close(result, expected: dict[str, float]) -> None:
    for item_id, score in result:
        assert score == pytest.approx(expected[item_id], abs=1e-4), item_id


def test_exhaustive_beams_return_the_brute_force_ranking(setup):
    tokenizer, index, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    results = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=12)
    top5 = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=12, top_k=5)
    for row, result in enumerate(results):
        expected = brute_force(model, unpadded(input_ids, attention_mask, row), trie, index)
        ranking = sorted(expected, key=expected.get, reverse=True)
        assert [item_id for item_id, _ in result] == ranking
        assert_scores_close(result, expected)
        assert top5[row] == result[:5]


def test_narrow_beams_return_distinct_items_with_exact_scores(setup):
    tokenizer, index, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    expected_rows = [brute_force(model, unpadded(input_ids, attention_mask, row), trie, index) for row in range(3)]
    for num_beams in (1, 2, 3):
        results = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=num_beams)
        for result, expected in zip(results, expected_rows, strict=True):
            assert len({item_id for item_id, _ in result}) == len(result) == num_beams
            assert [score for _, score in result] == sorted((score for _, score in result), reverse=True)
            assert_scores_close(result, expected)


@pytest.mark.parametrize("num_beams", [4, 7])
def test_matches_hf_generate_with_prefix_allowed_tokens_fn(setup, num_beams):
    tokenizer, index, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS[:2])
    exclude = [[], ["item3", "item7", "item8"]]
    prompt_len = input_ids.shape[1]
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=trie.num_levels,
        prefix_allowed_tokens_fn=lambda row, ids: trie.allowed_token_ids(ids[prompt_len:].tolist(), exclude[row]),
        output_scores=True,
        return_dict_in_generate=True,
        do_sample=False,
        length_penalty=0.0,  # sequences_scores = summed log-probs
        early_stopping=True,
        pad_token_id=tokenizer.pad_token_id,  # EOS (= pad here) is never an allowed token, so it cannot end a beam
    )
    hf_items = [trie.item_of_token_ids(ids[prompt_len:].tolist()) for ids in output.sequences]
    hf_scores = output.sequences_scores.view(2, num_beams).tolist()
    results = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=num_beams, exclude=exclude)
    for row, result in enumerate(results):
        assert [item_id for item_id, _ in result] == hf_items[row * num_beams : (row + 1) * num_beams]
        assert [score for _, score in result] == pytest.approx(hf_scores[row], abs=1e-4)


def test_batched_left_padded_equals_one_prompt_at_a_time(setup):
    tokenizer, _, model, trie = setup
    batched = constrained_beam_search(model, *encode(tokenizer, PROMPTS), trie, num_beams=4)
    for prompt, result in zip(PROMPTS, batched, strict=True):
        single = constrained_beam_search(model, *encode(tokenizer, [prompt]), trie, num_beams=4)[0]
        assert [item_id for item_id, _ in result] == [item_id for item_id, _ in single]
        assert [score for _, score in result] == pytest.approx([score for _, score in single], abs=1e-5)


def test_exclusion_is_per_user_and_exact(setup):
    tokenizer, index, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    full = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=12)
    exclude = [[item_id for item_id, _ in full[0][:4]], [], ["item0", "unknown-item"]]
    results = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=12, exclude=exclude)
    for result, full_result, excluded in zip(results, full, exclude, strict=True):
        assert result == [(item_id, score) for item_id, score in full_result if item_id not in excluded]
    everything = [list(index.items)] * 3
    assert constrained_beam_search(model, input_ids, attention_mask, trie, 3, exclude=everything) == [[], [], []]


@torch.no_grad()
def brute_force_renormalized(model, prompt_ids, trie, index, excluded=()) -> dict[str, float]:
    """Each non-excluded item's log-probability with every level normalised over the codes that continue its prefix
    towards a non-excluded item, by teacher forcing one item at a time (independent of the beam search's tensors)."""
    kept = {item_id: index.items[item_id] for item_id in trie.item_ids if item_id not in set(excluded)}
    scores = {}
    for item_id, sid in kept.items():
        tokens = [int(trie.token_ids[level][code]) for level, code in enumerate(sid)]
        logits = model(input_ids=torch.tensor([prompt_ids + tokens])).logits[0]  # (L + M, V)
        total = 0.0
        for level, code in enumerate(sid):
            log_probs = logits[len(prompt_ids) - 1 + level].log_softmax(-1)  # (V,)
            children = sorted({other[level] for other in kept.values() if other[:level] == sid[:level]})
            child_log_probs = log_probs[trie.token_ids[level][children]]
            total += float(log_probs[trie.token_ids[level][code]] - child_log_probs.logsumexp(0))
        scores[item_id] = total
    return scores


def test_renormalized_scores_are_probabilities_over_the_allowed_items(setup):
    tokenizer, index, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    exclude = [[], ["item0", "item5"], list(index.items)[:11]]  # the last prompt keeps one item: its score is 0
    plain = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=12, exclude=exclude)
    results = constrained_beam_search(
        model, input_ids, attention_mask, trie, num_beams=12, exclude=exclude, renormalize=True
    )
    for row, (result, excluded) in enumerate(zip(results, exclude, strict=True)):
        expected = brute_force_renormalized(model, unpadded(input_ids, attention_mask, row), trie, index, excluded)
        assert sorted(item_id for item_id, _ in result) == sorted(expected)
        assert [item_id for item_id, _ in result] == sorted(expected, key=expected.get, reverse=True)
        assert_scores_close(result, expected)
        assert sum(math.exp(score) for _, score in result) == pytest.approx(1.0, abs=1e-5)
        # Without renormalisation the model's mass on other tokens and on dead-end codes is lost: the sum is < 1.
        assert sum(math.exp(score) for _, score in plain[row]) < 0.99
    assert results[2] == [(list(index.items)[11], pytest.approx(0.0, abs=1e-6))]


def test_renormalized_narrow_beams_keep_exact_scores(setup):
    tokenizer, index, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    for num_beams in (1, 3):
        results = constrained_beam_search(
            model, input_ids, attention_mask, trie, num_beams=num_beams, renormalize=True
        )
        for row, result in enumerate(results):
            expected = brute_force_renormalized(model, unpadded(input_ids, attention_mask, row), trie, index)
            assert len({item_id for item_id, _ in result}) == len(result) == num_beams
            assert_scores_close(result, expected)


def test_sub_trie_restricts_candidates(setup):
    tokenizer, index, model, _ = setup
    candidates = ["item1", "item4", "item5", "item10"]
    trie = SidTrie(index, tokenizer, item_ids=candidates)
    input_ids, attention_mask = encode(tokenizer, PROMPTS[:1])
    result = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=6)[0]
    expected = brute_force(model, unpadded(input_ids, attention_mask, 0), trie, index)
    assert [item_id for item_id, _ in result] == sorted(candidates, key=expected.get, reverse=True)
    assert_scores_close(result, expected)


def test_more_beams_than_items_never_leaves_the_trie(setup):
    tokenizer, index, model, _ = setup
    trie = SidTrie(index, tokenizer, item_ids=["item2", "item9"])
    result = constrained_beam_search(model, *encode(tokenizer, PROMPTS[:1]), trie, num_beams=5)[0]
    assert sorted(item_id for item_id, _ in result) == ["item2", "item9"]


def test_peft_model(setup):
    from peft import LoraConfig, get_peft_model

    tokenizer, index, model, trie = setup
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random B: non-zero
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    results = constrained_beam_search(peft_model, input_ids, attention_mask, trie, num_beams=12)
    base = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=12)
    assert results != base  # the adapter is active
    for row, result in enumerate(results):
        assert_scores_close(result, brute_force(peft_model, unpadded(input_ids, attention_mask, row), trie, index))


def test_errors(setup):
    tokenizer, _, model, trie = setup
    input_ids, attention_mask = encode(tokenizer, PROMPTS[:2])
    with pytest.raises(ValueError, match=r"top_k must be in 1..num_beams=3, got 4"):
        constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=3, top_k=4)
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 prompts"):
        constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=3, exclude=[[]])


# Property test: a fixed tiny model whose SID tokens are ids 16..27 (up to 3 levels x 4 codes), random catalogs.
VOCAB, FIRST_SID_TOKEN, PAD = 40, 16, 0
_MODEL = None


def property_model():
    global _MODEL
    if _MODEL is None:
        _MODEL = make_tiny_model(VOCAB).eval()
        randomize_embeddings(_MODEL, seed=2)
    return _MODEL


@st.composite
def catalogs_and_requests(draw):
    sizes = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    sid = st.tuples(*(st.integers(0, size - 1) for size in sizes))
    sids = draw(st.lists(sid, min_size=1, max_size=12, unique=True))
    index = SemanticIdIndex({f"i{n}": code for n, code in enumerate(sids)}, sizes)
    prompts = draw(
        st.lists(st.lists(st.integers(1, FIRST_SID_TOKEN - 1), min_size=1, max_size=6), min_size=1, max_size=3)
    )
    exclude = [draw(st.lists(st.sampled_from(list(index.items)), max_size=len(sids))) for _ in prompts]
    num_beams = draw(st.integers(1, 6))
    top_k = draw(st.integers(1, num_beams))
    return index, prompts, exclude, num_beams, top_k


@settings(max_examples=40, deadline=None)
@given(catalogs_and_requests())
def test_outputs_are_distinct_catalog_items_and_never_excluded(case):
    index, prompts, exclude, num_beams, top_k = case
    model = property_model()
    trie = SidTrie(index, {token: FIRST_SID_TOKEN + i for i, token in enumerate(index.all_tokens())})
    width = max(map(len, prompts))
    input_ids = torch.tensor([[PAD] * (width - len(prompt)) + prompt for prompt in prompts])  # (B, L) left-padded
    attention_mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts])
    results = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams, top_k, exclude)
    assert len(results) == len(prompts)
    for prompt, result, excluded in zip(prompts, results, exclude, strict=True):
        item_ids = [item_id for item_id, _ in result]
        allowed = set(index.items) - set(excluded)
        assert len(set(item_ids)) == len(item_ids) == min(top_k, len(allowed))
        assert set(item_ids) <= allowed
        expected = brute_force(model, prompt, trie, index)
        assert_scores_close(result, expected)
        if num_beams >= len(allowed):  # every prefix fits in the beams: the search is exhaustive
            best = sorted((expected[item_id] for item_id in allowed), reverse=True)[:top_k]
            assert [score for _, score in result] == pytest.approx(best, abs=1e-4)


def test_preallocated_beam_cache_matches_the_dynamic_cache(setup, monkeypatch):
    """The fast path (one preallocated KV buffer, suffix-only reorders) is taken for a plain Llama and returns the
    same items and scores as HF's `DynamicCache` path it replaces."""
    import llmrec.decoding as decoding

    tokenizer, _, model, trie = setup
    assert isinstance(decoding._beam_cache(model, extra=2).layers[0], decoding.BeamKVLayer)
    input_ids, attention_mask = encode(tokenizer, PROMPTS)
    fast = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=6)
    monkeypatch.setattr(decoding, "_beam_cache", lambda model, extra: None)
    slow = constrained_beam_search(model, input_ids, attention_mask, trie, num_beams=6)
    assert [[item for item, _ in row] for row in fast] == [[item for item, _ in row] for row in slow]
    for fast_row, slow_row in zip(fast, slow, strict=True):
        assert [score for _, score in fast_row] == pytest.approx([score for _, score in slow_row], abs=1e-5)


def test_sliding_window_models_keep_their_own_cache():
    from transformers import MistralConfig

    import llmrec.decoding as decoding

    config = MistralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=4,
    )
    assert decoding._beam_cache(torch.nn.Module(), extra=2) is None  # no config at all
    model = torch.nn.Module()
    model.config = config
    assert decoding._beam_cache(model, extra=2) is None
