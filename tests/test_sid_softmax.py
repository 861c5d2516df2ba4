"""SID softmax: the restricted loss equals the full-head loss restricted to the output vocabulary (values and
gradients, through PEFT's trainable SID rows), decoding normalises the same way, and a trained run keeps it."""

import json
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from llmrec.decoding import constrained_beam_search
from llmrec.model import add_sid_tokens
from llmrec.recommender import Recommender
from llmrec.sid import SemanticIdIndex
from llmrec.sid_softmax import OutputVocabulary, head_rows, output_vocabulary, restricted_log_softmax
from llmrec.training import SidSFTTrainer
from llmrec.trie import SidTrie
from tests.conftest import make_tiny_model, make_tiny_tokenizer
from tests.test_decoding import assert_scores_close, brute_force, encode, randomize_embeddings, tiny_sid_model
from tests.test_recommender import train_tiny_run

INDEX = SemanticIdIndex({f"item{n}": (n // 4, n % 4) for n in range(12)}, (4, 4))


def peft_model_with_sid_rows(tie: bool = True):
    """Tiny Llama + SID tokens + LoRA + trainable SID rows (as `run_sft` builds it), SID rows moved off their init."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), tie=tie)
    sid_ids = add_sid_tokens(tokenizer, model, INDEX)
    randomize_embeddings(model, seed=3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    config.trainable_token_indices = {"embed_tokens": sid_ids}
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name:
                param.add_(torch.randn_like(param))  # trained rows now differ from the base matrix's
    return model, tokenizer, sid_ids


def test_restricted_log_softmax_normalises_over_the_given_tokens_only():
    logits = torch.randn(2, 3, 10)
    ids = torch.tensor([1, 4, 7])
    restricted = restricted_log_softmax(logits, ids)
    assert torch.allclose(restricted[..., ids], torch.log_softmax(logits[..., ids], -1))
    assert torch.allclose(restricted[..., ids].exp().sum(-1), torch.ones(2, 3))
    others = torch.tensor([i for i in range(10) if i not in ids.tolist()])
    assert torch.isneginf(restricted[..., others]).all()
    assert torch.equal(restricted_log_softmax(logits, None), torch.log_softmax(logits, -1))


def test_head_rows_are_the_effective_head_rows_with_the_trained_sid_rows():
    model, tokenizer, sid_ids = peft_model_with_sid_rows()
    vocabulary = OutputVocabulary(output_vocabulary(tokenizer, INDEX), len(tokenizer))
    hidden = torch.randn(5, model.config.hidden_size)
    full = model.get_output_embeddings()(hidden)  # (5, V): PEFT's own forward through the wrapper
    assert torch.allclose(hidden @ head_rows(model, vocabulary).T, full[:, vocabulary.token_ids], atol=1e-5)
    plain = make_tiny_model(40, tie=False)
    assert torch.equal(head_rows(plain, OutputVocabulary([3, 5], 40)), plain.lm_head.weight[[3, 5]])


def test_head_rows_refuses_heads_it_cannot_restrict():
    model = make_tiny_model(40, tie=False)
    model.lm_head = torch.nn.Linear(16, 40, bias=True)
    with pytest.raises(ValueError, match="bias-free nn.Linear"):
        head_rows(model, OutputVocabulary([1], 40))
    model = make_tiny_model(40)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        head_rows(model, OutputVocabulary([1], 40))


def test_output_vocabulary_is_sid_tokens_eos_and_completion_tokens():
    _, tokenizer, sid_ids = peft_model_with_sid_rows()
    newline = tokenizer.convert_tokens_to_ids("\n")
    assert output_vocabulary(tokenizer, INDEX, [newline]) == sorted({*sid_ids, tokenizer.eos_token_id, newline})
    with pytest.raises(ValueError, match="not in the tokenizer"):
        output_vocabulary(make_tiny_tokenizer(), INDEX)


def test_label_outside_the_vocabulary_is_a_clear_error():
    vocabulary = OutputVocabulary([2, 5, 9], vocab_size=12)
    assert vocabulary.targets(torch.tensor([[5, -100, 9, 2]])).tolist() == [[1, -100, 2, 0]]
    with pytest.raises(ValueError, match="label token 3 .*not in the run's output vocabulary"):
        vocabulary.targets(torch.tensor([[5, 3]]))
    with pytest.raises(ValueError, match="must be in 0..11"):
        OutputVocabulary([2, 12], vocab_size=12)


def test_restricted_loss_and_gradients_equal_the_full_head_restricted_to_the_vocabulary():
    model, tokenizer, sid_ids = peft_model_with_sid_rows()
    vocabulary = OutputVocabulary(output_vocabulary(tokenizer, INDEX), len(tokenizer))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, len(tokenizer), (3, 9), generator=generator)
    labels = torch.full_like(input_ids, -100)
    answers = torch.tensor(sid_ids)[torch.randint(0, len(sid_ids), (3, 9), generator=generator)]
    labels[0, 5:], labels[1, 3:6], labels[2, 8] = answers[0, 5:], answers[1, 3:6], tokenizer.eos_token_id
    input_ids = torch.where(labels == -100, input_ids, labels)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    trainer = SimpleNamespace(args=SimpleNamespace(average_tokens_across_devices=False), output_vocabulary=vocabulary)
    ours = SidSFTTrainer.compute_loss(trainer, model, dict(inputs))
    ours_grads = torch.autograd.grad(ours, [p for p in model.parameters() if p.requires_grad])

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]  # (B, L-1, V)
    log_probs = restricted_log_softmax(logits, vocabulary.token_ids)
    targets = labels[:, 1:]
    kept = targets != -100
    reference = -log_probs[kept].gather(-1, targets[kept][:, None]).mean()
    reference_grads = torch.autograd.grad(reference, [p for p in model.parameters() if p.requires_grad])
    assert torch.allclose(ours, reference, atol=1e-5)
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
    assert any(float(g.abs().max()) > 0 for g in ours_grads)


def test_decoder_scores_are_sid_log_probs_under_the_restricted_softmax():
    tokenizer, model, trie = tiny_sid_model(INDEX, seed=2)
    ids = torch.tensor(output_vocabulary(tokenizer, INDEX))
    prompt = tokenizer(["the user has interacted with a b"], return_tensors="pt")
    input_ids, attention_mask = prompt["input_ids"], prompt["attention_mask"]
    found = dict(constrained_beam_search(model, input_ids, attention_mask, trie, 12, output_token_ids=ids)[0])
    full = dict(constrained_beam_search(model, input_ids, attention_mask, trie, 12)[0])
    expected = brute_force(model, input_ids[0].tolist(), trie, INDEX, output_token_ids=ids)
    for item_id in INDEX.items:
        assert found[item_id] == pytest.approx(expected[item_id], abs=1e-4)
        assert found[item_id] > full[item_id]  # the same logits normalised over fewer tokens
    assert sum(torch.tensor(list(found.values())).exp()) <= 1 + 1e-5


@pytest.mark.parametrize("tie", [True, False])
def test_restricted_decoder_scores_through_peft_sid_rows_batched_and_padded(tie):
    """With LoRA and PEFT's trained SID rows, left-padded in a batch, every item's score is its exact log-probability
    under the restricted softmax."""
    model, tokenizer, _ = peft_model_with_sid_rows(tie=tie)
    model.eval()
    tokenizer.padding_side = "left"
    trie = SidTrie(INDEX, tokenizer)
    ids = torch.tensor(output_vocabulary(tokenizer, INDEX))
    prompts = ["the user has interacted with a b", "a"]
    found = constrained_beam_search(model, *encode(tokenizer, prompts), trie, 12, output_token_ids=ids)
    for row, prompt in enumerate(prompts):
        expected = brute_force(model, tokenizer(prompt)["input_ids"], trie, INDEX, output_token_ids=ids)
        assert {item for item, _ in found[row]} == set(INDEX.items)
        assert_scores_close(found[row], expected)


@pytest.fixture(scope="module")
def sid_softmax_run(tmp_path_factory):
    return train_tiny_run(
        tmp_path_factory.mktemp("sidsoftmax"), tasks="sequence=0", eval_task="sequence", sid_softmax=True
    )


def test_trained_run_saves_its_output_vocabulary_and_decodes_with_it(sid_softmax_run):
    config = json.loads((sid_softmax_run / "run_config.json").read_text())
    assert config["script_args"]["sid_softmax"] is True
    recommender = Recommender.from_pretrained(sid_softmax_run)
    tokenizer = recommender.tokenizer
    sid_ids = set(tokenizer.convert_tokens_to_ids(recommender.index.all_tokens()))
    vocabulary = set(config["output_token_ids"])
    assert sid_ids | {tokenizer.eos_token_id} <= vocabulary  # plus the chat template's end-of-turn tokens
    assert tokenizer.convert_tokens_to_ids("interacted") not in vocabulary  # prompt words are never answers
    assert torch.equal(recommender.output_token_ids, torch.tensor(config["output_token_ids"]))
    history = list(recommender.index.items)[:2]
    recommendations = recommender.recommend(history, k=3)
    assert len(recommendations) == 3 and not {r.item_id for r in recommendations} & set(history)
    restricted = {r.item_id: r.score for r in recommendations}
    recommender.output_token_ids = None  # the same logits normalised over the whole vocabulary: lower log-probs
    full = {r.item_id: r.score for r in recommender.recommend(history, k=3, candidates=list(restricted))}
    assert full.keys() == restricted.keys() and all(full[i] < restricted[i] for i in full)


def test_a_run_whose_output_vocabulary_does_not_fit_its_tokenizer_is_refused(sid_softmax_run, tmp_path):
    import shutil

    from llmrec.data.io import DataError

    broken = tmp_path / "run"
    shutil.copytree(sid_softmax_run, broken)
    config = json.loads((broken / "run_config.json").read_text())
    config["output_token_ids"].append(10_000)
    (broken / "run_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="output_token_ids reach token 10000"):
        Recommender.from_pretrained(broken)


def test_grpo_refuses_reasoning_mode_on_a_sid_softmax_run(sid_softmax_run, tmp_path):
    """Direct-mode GRPO takes a sid_softmax run (tests/test_grpo.py); free-text rationales cannot be scored by it."""
    from llmrec.grpo import GRPOScriptArguments, make_trainer
    from tests.test_grpo import config

    with pytest.raises(ValueError, match="trained with sid_softmax: true"):
        make_trainer(GRPOScriptArguments(sft_run=str(sid_softmax_run), mode="reason"), config(tmp_path / "grpo"))
