"""GRPO on top of an SFT run (TRL GRPOTrainer): constrained rollouts, ranking rewards, KL to the SFT adapter.

    accelerate launch scripts/grpo.py --config scripts/configs/grpo_ml100k.yaml
    python scripts/grpo.py --config scripts/configs/grpo_ml100k.yaml --max_steps 5 --output_dir runs/try-grpo
    python scripts/grpo.py --config scripts/configs/grpo_ml100k.yaml --resume   # continue a killed run

Arguments: `GRPOScriptArguments` (llmrec.grpo) and TRL's `GRPOConfig`; YAML values are overridden by the command
line. The result is a run folder that `llmrec evaluate` and `Recommender.from_pretrained` take like an SFT run.
"""

import logging

from trl import GRPOConfig, TrlParser

from llmrec.grpo import GRPOScriptArguments, run_grpo


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig) -> None:
    out = run_grpo(script_args, training_args)
    print(f"run saved to {out}")


def make_parser() -> TrlParser:
    return TrlParser((GRPOScriptArguments, GRPOConfig))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    main(*make_parser().parse_args_and_config())
