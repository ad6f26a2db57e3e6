"""Recipes and the CLI: overrides, validation, one-line errors with exit code 2, --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sft.cli import main
from sft.errors import UserError
from sft.recipe import load_recipe
from tests.conftest import REPO, recipe_dict

pytestmark = pytest.mark.smoke  # in `make test-min`

QUICKSTART = REPO / "recipes" / "quickstart" / "sort_digits.yaml"


def write_recipe(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_recipe_sections_fill_the_config_and_overrides_win(qwen2_dir, chat_file, tmp_path):
    path = write_recipe(tmp_path, recipe_dict(qwen2_dir, chat_file, tmp_path / "out"))
    config = load_recipe(
        path, ["diffusion.weighting=cart", "training.learning_rate=3e-4", "data.max_length=64", "lora.r=8"]
    )
    assert config.training.weighting == "cart"
    assert config.training.learning_rate == 3e-4
    assert config.data.max_length == 64
    assert config.lora is not None and config.lora.r == 8 and config.lora.target_modules == "all-linear"
    assert config.training.output_dir == str(tmp_path / "out")


def test_no_lora_section_means_full_fine_tuning(qwen2_dir, chat_file, tmp_path):
    config = load_recipe(write_recipe(tmp_path, recipe_dict(qwen2_dir, chat_file, tmp_path)))
    assert config.lora is None


BAD_RECIPES = [
    (["training.learnig_rate=1e-4"], "training.learnig_rate", "did you mean 'learning_rate'"),
    (["diffusion.weigting=cart"], "diffusion.weigting", "did you mean 'weighting'"),
    (["diffusion.weighting=cosine"], "diffusion.weighting", "one of 'inv_t'"),
    (["data.max_length=long"], "data.max_length", "expected int"),
    (["model.famly=dream"], "model.famly", "did you mean 'family'"),
    (["modle.family=dream"], "modle.family", "did you mean 'model'"),
    (["data.train=/nope/train.jsonl"], "data.train", "file not found"),
    (["model.name_or_path=./missing-model"], "model.name_or_path", "not found"),
    (["training.max_length=64"], "training.max_length", "data.max_length"),
    (["training.t_min=0.1"], "training.t_min", "diffusion.t_min"),
    (["lora.rank=8"], "lora.rank", "one of r, alpha"),
    (["training.max_steps=ten"], "training.max_steps", "expected int"),
    (["noequals"], "noequals", "section.key=value"),
]


@pytest.mark.parametrize(("overrides", "key", "message"), BAD_RECIPES)
def test_recipe_mistakes_are_one_line_with_exit_code_2(
    qwen2_dir, chat_file, tmp_path, capsys, overrides, key, message
):
    path = write_recipe(tmp_path, recipe_dict(qwen2_dir, chat_file, tmp_path))
    assert main(["train", str(path), *overrides, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {path}") and key in err and message in err


def test_a_missing_recipe_file_and_bad_yaml_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)


def test_console_script_reports_typos_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sft.cli", "train", str(QUICKSTART), "training.lerning_rate=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {QUICKSTART}: training.lerning_rate: unknown key; did you mean 'learning_rate'? "
        "(expected a transformers TrainingArguments / trl SFTConfig field)"
    ]


def test_dry_run_prints_config_sizes_and_steps(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert (
        main(
            [
                "train",
                "recipes/quickstart/sort_digits.yaml",
                "training.num_train_epochs=2",
                "training.max_steps=-1",
                f"training.output_dir={tmp_path / 'run'}",  # not runs/quickstart: `make quickstart` fills it
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "weighting: inv_t" in out and "family: ar (shift=True)" in out
    assert "train examples: 20000" in out and "eval examples: 256" in out
    assert "steps per epoch: 313" in out and "total steps: 626" in out


def test_recipes_are_found_beside_the_package_in_a_checkout_never_installed(monkeypatch):
    import importlib.resources

    from sft.recipe import shipped_recipes

    def not_installed(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert shipped_recipes() == REPO / "recipes"
    assert (shipped_recipes() / "data").is_dir()
