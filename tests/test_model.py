import pytest
import torch

from llmrec.model import DEFAULT_MODEL, add_sid_tokens, resolve_model_path, text_init_sid_rows, truncate_layers
from llmrec.sid import SemanticIdIndex
from tests.conftest import make_tiny_model, make_tiny_tokenizer


def test_add_sid_tokens_tokenizes_each_code_as_one_token_and_inits_rows_near_the_mean():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    old_size = len(tokenizer)
    old_rows = model.get_input_embeddings().weight.detach().clone()
    index = SemanticIdIndex({"x": (1, 2)}, (4, 3))
    token_ids = add_sid_tokens(tokenizer, model, index)
    assert len(token_ids) == 7 and token_ids == list(range(old_size, old_size + 7))
    assert tokenizer("<a_1><b_2>", add_special_tokens=False)["input_ids"] == [old_size + 1, old_size + 4 + 2]
    assert tokenizer.convert_ids_to_tokens([old_size + 1, old_size + 6]) == ["<a_1>", "<b_2>"]
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == old_size + 7
    assert torch.equal(weight[:old_size], old_rows)  # old rows untouched
    new = weight[old_size:]
    assert torch.allclose(new.mean(0), old_rows.mean(0), atol=0.1)
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()  # still tied
    assert add_sid_tokens(tokenizer, model, index) == token_ids  # idempotent


def test_add_sid_tokens_untied_output_rows_follow_the_output_matrix():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), tie=False)
    with torch.no_grad():
        model.get_output_embeddings().weight.add_(5.0)  # shift so the two matrices are clearly different
    old_size = len(tokenizer)
    add_sid_tokens(tokenizer, model, SemanticIdIndex({"x": (0,)}, (8,)))
    out_rows = model.get_output_embeddings().weight[old_size:]
    assert out_rows.shape[0] == 8 and float(out_rows.detach().mean()) > 4.0
    assert float(model.get_input_embeddings().weight[old_size:].detach().mean()) < 1.0


def test_text_init_points_each_code_at_its_items_words_with_an_ordinary_spread():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    old_size = len(tokenizer)
    # level a: code 0 holds the two "a b" items, code 1 the "e f" item; level b tells them apart; a_2, a_3 unused.
    index = SemanticIdIndex({"x": (0, 0), "y": (0, 1), "z": (1, 0)}, (4, 2))
    texts = {"x": "a b", "y": "a b the", "z": "e f"}
    add_sid_tokens(tokenizer, model, index)
    weight = model.get_input_embeddings().weight
    before = weight.detach().clone()
    assert text_init_sid_rows(tokenizer, model, index, texts) == 4  # a_0, a_1, b_0, b_1
    vocab = before[:old_size]
    vocab_mean, spread = vocab.mean(0), (vocab - vocab.mean(0)).norm(dim=1).mean()

    def text_vector(text):
        return vocab[tokenizer(text, add_special_tokens=False)["input_ids"]].mean(0)

    items = {item: text_vector(text) for item, text in texts.items()}
    center = torch.stack(list(items.values())).mean(0)

    def row(token):
        return weight[tokenizer.convert_tokens_to_ids(token)].detach() - vocab_mean

    expected_a0 = (items["x"] + items["y"]) / 2 - center  # mean deviation of a_0's items
    assert torch.allclose(row("<a_0>"), expected_a0 / expected_a0.norm() * spread, atol=1e-5)
    assert torch.allclose(row("<a_1>").norm(), spread, atol=1e-5)
    assert torch.nn.functional.cosine_similarity(row("<a_1>"), items["z"] - center, dim=0) > 0.99
    assert torch.nn.functional.cosine_similarity(row("<a_0>"), row("<a_1>"), dim=0) < 0  # opposite sides of center
    assert torch.equal(weight[:old_size], vocab)  # the vocabulary is untouched
    unused = tokenizer.convert_tokens_to_ids(["<a_2>", "<a_3>"])
    assert torch.equal(weight[unused], before[unused])  # codes no item uses keep their mean init
    with pytest.raises(ValueError, match=r"no text for 1 indexed item\(s\), e.g. \['z'\]"):
        text_init_sid_rows(tokenizer, model, index, {"x": "a", "y": "b"})


def test_text_init_also_sets_an_untied_output_matrix_from_its_own_rows():
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), tie=False)
    with torch.no_grad():
        model.get_output_embeddings().weight.add_(5.0)
    index = SemanticIdIndex({"x": (0,), "y": (1,)}, (2,))
    add_sid_tokens(tokenizer, model, index)
    text_init_sid_rows(tokenizer, model, index, {"x": "a b", "y": "e f"})
    ids = tokenizer.convert_tokens_to_ids(["<a_0>", "<a_1>"])
    out_rows, in_rows = model.get_output_embeddings().weight[ids].detach(), model.get_input_embeddings().weight[ids]
    assert float(out_rows.mean()) > 4.0 and float(in_rows.detach().mean().abs()) < 1.0
    assert torch.allclose(out_rows.sum(0) / 2, model.get_output_embeddings().weight[:-2].detach().mean(0), atol=1e-5)


def test_truncate_layers():
    model = make_tiny_model(20, layers=4)
    truncate_layers(model, 2)
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 20)
    with pytest.raises(ValueError, match=r"keep_layers must be in 1..2"):
        truncate_layers(model, 3)


def test_resolve_model_path_passes_other_names_through():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    assert DEFAULT_MODEL == "smollm2-135m-instruct"
