"""The command line takes `key=value` overrides anywhere: before or after flags."""

from __future__ import annotations

import pytest

from sft.cli import main
from sft.cli.main import parse_command_line
from tests.conftest import REPO

QUICKSTART = "recipes/quickstart/sort_digits.yaml"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", QUICKSTART, "--dry-run", "lora.r=16", "training.max_steps=3"],
        ["train", QUICKSTART, "lora.r=16", "--dry-run", "training.max_steps=3"],
        ["train", QUICKSTART, "lora.r=16", "training.max_steps=3", "--dry-run"],
        ["--debug", "train", "--dry-run", QUICKSTART, "lora.r=16", "training.max_steps=3"],
    ],
)
def test_overrides_are_taken_before_and_after_flags_in_order(argv):
    args = parse_command_line(argv)
    assert args.dry_run and args.overrides == ["lora.r=16", "training.max_steps=3"]


def test_plan_takes_overrides_after_its_options(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["plan", QUICKSTART, "--num-gpus", "2", "data.max_length=64", "--engine", "ddp"]) == 0
    assert "64" in capsys.readouterr().out


def test_dry_run_with_an_override_after_the_flag_applies_it(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    run = f"training.output_dir={tmp_path / 'run'}"  # not runs/quickstart, which `make quickstart` fills
    assert main(["train", QUICKSTART, "--dry-run", "lora.r=16", "training.max_steps=3", run]) == 0
    out = capsys.readouterr().out
    assert "r: 16" in out and "total steps: 3" in out


@pytest.mark.parametrize("stray", ["--no-such-flag", "stray_word"])
def test_anything_else_left_over_is_a_usage_error(stray, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_command_line(["train", QUICKSTART, "--dry-run", stray])
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {stray}" in capsys.readouterr().err


def test_commands_without_overrides_refuse_key_value_words(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_command_line(["report", "runs/x", "a.b=1"])
    assert exit_.value.code == 2 and "unrecognized arguments: a.b=1" in capsys.readouterr().err
