import pytest
import torch

from llmrec.model import DEFAULT_MODEL, add_sid_tokens, resolve_model_path, truncate_layers
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
