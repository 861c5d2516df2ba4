"""Shared fixtures: a tiny in-memory catalog and interaction log, and a prepared folder made from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from llmrec.data.importers.common import RawData
from llmrec.data.prepare import prepare
from llmrec.schemas import Interaction, Item


def make_raw() -> RawData:
    """6 items, 4 users. Item "f" has no interaction. Sequences by time:
    u1: a b c d e   u2: b c a   u3: c a b d   u4: a b e
    """
    items = {i: Item(i, f"Title {i.upper()}", {"genres": "G1" if i in "abc" else "G2"}) for i in "abcdef"}
    sequences = {"u1": "abcde", "u2": "bca", "u3": "cabd", "u4": "abe"}
    rows = [Interaction(u, i, 100 * n) for u, seq in sequences.items() for n, i in enumerate(seq)]
    return RawData("tiny", "fixture", items, rows, [])


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """Import `scripts/<name>.py`, which is not a package module, with scripts/ on sys.path while it loads so its
    sibling imports (`from bench_quality import ...`) resolve as when it runs."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: intra-op threads only add OpenMP contention (100x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_raw() -> RawData:
    return make_raw()


@pytest.fixture
def tiny_dataset(tmp_path):
    return prepare(make_raw(), tmp_path / "tiny")


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer(words: list[str] | None = None):
    """A word-level fast tokenizer with a ChatML-like template: offline, built in-process."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    words = words or "the user has interacted with these items which item is next answer title of a b c d e f".split()
    vocab = {token: i for i, token in enumerate(specials + sorted(set(words)) + list(":.,?\n"))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(vocab_size: int, tie: bool = True, layers: int = 2):
    """STYLE.md's tiny Llama: hidden 16, 2 layers, 2 heads, intermediate 32; seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)
