"""What a real run would refuse is found before tokenizing, at `--dry-run` as in the run: one line,
exit code 2, and nothing left behind (no tokenized data, no `output_dir`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sft.cli import main
from sft.recipe import build_run_config
from sft.training.run import train
from tests.conftest import recipe_dict

MISTAKES = {
    "an eval strategy without an eval set": (
        {"eval_strategy": "steps", "eval_steps": 1},
        "training.eval_strategy: eval_strategy 'steps' needs an eval set (expected data.eval",
    ),
    "warmup_stable_decay without num_decay_steps": (
        {"lr_scheduler_type": "warmup_stable_decay"},
        "training.lr_scheduler_kwargs: warmup_stable_decay cannot be built from these settings: ",
    ),
    "a scheduler kwarg it does not take": (
        {"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"num_decay_steps": 3}},
        "unexpected keyword argument 'num_decay_steps'",
    ),
}


def write_recipe(tmp_path: Path, model_dir: Path, data: Path, **training) -> tuple[Path, Path]:
    output = tmp_path / "out"
    raw = recipe_dict(model_dir, data, output, **training)
    raw["data"]["cache_dir"] = str(tmp_path / "tokenized")
    raw["model"]["from_scratch"] = True  # the failed run of the issue left output_dir/base behind
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    return recipe, output


@pytest.mark.parametrize("name", sorted(MISTAKES))
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_a_mistake_a_run_would_refuse_is_one_line_before_tokenizing(
    qwen2_dir, chat_file, tmp_path, capsys, name, dry_run
):
    training, message = MISTAKES[name]
    recipe, output = write_recipe(tmp_path, qwen2_dir, chat_file, **training)
    assert main(["train", str(recipe), *(["--dry-run"] if dry_run else [])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the data summary: nothing was tokenized
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "tokenized").exists() and not output.exists()


def test_a_run_that_fails_to_start_leaves_no_files_behind(qwen2_dir, chat_file, tmp_path):
    """A failure past the checks (here peft's, for a module the model lacks) removes what the run wrote
    (`base/` of a from-scratch model) and keeps the tokenized data."""
    recipe, output = write_recipe(tmp_path, qwen2_dir, chat_file)
    raw = yaml.safe_load(recipe.read_text())
    raw["lora"] = {"r": 4, "alpha": 8, "target_modules": ["no_such_proj"]}
    with pytest.raises(ValueError, match="no_such_proj"):
        train(build_run_config(raw))
    assert not output.exists()
    assert any((tmp_path / "tokenized").iterdir())
