"""Every shipped recipe in scripts/configs parses with its script's parser: a misspelt or removed option fails here,
not an hour into a run. Two recipes never share an output folder, so running one cannot overwrite another's run."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import SCRIPTS, load_script

SFT_RECIPES = sorted((SCRIPTS / "configs").glob("sft_*.yaml"))
GRPO_RECIPES = sorted((SCRIPTS / "configs").glob("grpo_*.yaml"))


def test_there_are_recipes_to_check():
    assert len(SFT_RECIPES) >= 5 and len(GRPO_RECIPES) >= 2


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=lambda path: path.name)
def test_sft_recipe_parses(recipe: Path):
    script_args, training_args, model_args = (
        load_script("sft").make_parser().parse_args_and_config(["--config", str(recipe)])
    )
    values = yaml.safe_load(recipe.read_text())
    assert training_args.output_dir == values["output_dir"] and training_args.seed == values.get("seed", 42)
    assert script_args.dataset_dir == values["dataset_dir"] and model_args.lora_r == values["lora_r"]


@pytest.mark.parametrize("recipe", GRPO_RECIPES, ids=lambda path: path.name)
def test_grpo_recipe_parses(recipe: Path):
    import torch

    args = ["--config", str(recipe)]
    if "gpu" in recipe.stem and not torch.cuda.is_available():
        args += ["--bf16", "false", "--use_cpu", "true"]  # TrainingArguments refuses bf16 without a GPU
    script_args, training_args = load_script("grpo").make_parser().parse_args_and_config(args)
    values = yaml.safe_load(recipe.read_text())
    assert str(script_args.sft_run) == values["sft_run"] and training_args.output_dir == values["output_dir"]


def test_recipes_write_to_their_own_folders():
    outputs = [yaml.safe_load(path.read_text())["output_dir"] for path in SFT_RECIPES + GRPO_RECIPES]
    assert len(outputs) == len(set(outputs)), sorted(outputs)


def test_a_misspelt_option_is_refused(tmp_path):
    values = yaml.safe_load((SCRIPTS / "configs" / "sft_ml100k_cf.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**values, "base_dtyp": "bfloat16"}))
    with pytest.raises(ValueError, match="base_dtyp"):
        load_script("sft").make_parser().parse_args_and_config(["--config", str(bad)])
