"""Load a trained run folder (see `llmrec.training`) back into a model, tokenizer and index, checking that they
belong together."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmrec.data.io import DataError, sha256_file
from llmrec.model import resolve_model_path, truncate_layers
from llmrec.sid import SemanticIdIndex, load_index

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    index: SemanticIdIndex
    config: dict
    path: Path


def load_run(
    run_dir: str | Path, merge: bool = False, dtype: torch.dtype = torch.float32, trainable: bool = False
) -> LoadedRun:
    """Base model + LoRA adapter (+ SID token rows) + tokenizer + index from `run_dir`; `merge` folds LoRA in,
    `trainable` keeps the adapter trainable (to continue training it, e.g. GRPO after SFT)."""
    if merge and trainable:
        raise ValueError("merge=True folds the adapter into the base weights; it cannot also stay trainable.")
    run_dir = Path(run_dir)
    config_path = run_dir / "run_config.json"
    if not config_path.is_file():
        raise DataError(
            f"{config_path} not found; {run_dir} is not a finished llmrec run (train it with scripts/sft.py)."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    index_path = run_dir / "sid_index.json"
    if not index_path.is_file() or sha256_file(index_path) != config["index_sha256"]:
        raise DataError(
            f"{index_path} is missing or differs from the index this run was trained with "
            f"(sha256 {config['index_sha256'][:12]}); restore the run's own sid_index.json."
        )
    index = load_index(index_path)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    missing = [token for token in index.all_tokens() if token not in tokenizer.get_vocab()]
    if missing:
        raise DataError(f"{run_dir}: the tokenizer lacks {len(missing)} SID tokens (e.g. {missing[:3]}); wrong run?")
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(config["base_model"]), dtype=dtype)
    keep_layers = config["script_args"].get("keep_layers")
    if keep_layers:
        truncate_layers(base, keep_layers)
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = PeftModel.from_pretrained(base, run_dir, is_trainable=trainable)
    if merge:
        model = model.merge_and_unload()
    if not trainable:
        model.eval()
    return LoadedRun(model, tokenizer, index, config, run_dir)
