"""LoRA SFT of a causal LM on the semantic-ID alignment tasks (TRL SFTTrainer); writes a self-contained run.

    accelerate launch scripts/sft.py --config scripts/configs/sft_ml100k.yaml
    python scripts/sft.py --config scripts/configs/sft_ml100k.yaml --max_steps 20 --output_dir runs/try
    python scripts/sft.py --config scripts/configs/sft_ml100k.yaml --resume   # continue a killed run

Arguments: `SFTScriptArguments` (llmrec.config), TRL's `SFTConfig` (training) and `ModelConfig` (model, LoRA);
YAML values are overridden by the command line.
"""

import logging

from trl import ModelConfig, SFTConfig, TrlParser

from llmrec.config import SFTScriptArguments
from llmrec.training import run_sft


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    out = run_sft(script_args, training_args, model_args)
    print(f"run saved to {out}")


def make_parser() -> TrlParser:
    return TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    main(*make_parser().parse_args_and_config())
