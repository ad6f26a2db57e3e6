"""Exact resume after SIGKILL (mid-run and mid-save) and skipping of non-finite steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM, TrainerCallback

from sft.cli import main
from sft.errors import UserError
from sft.recipe import build_run_config
from sft.training.checkpoints import complete_checkpoints, resume_point
from sft.training.run import build_trainer
from sft.training.trainer import TrainingDiverged
from tests.conftest import REPO, recipe_dict, tiny_qwen2_config


@pytest.fixture(scope="module")
def larger_model_dir(tmp_path_factory, tokenizer) -> Path:
    """~1.5M parameters: big enough that a checkpoint save takes a moment to write."""
    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = tiny_qwen2_config(tokenizer, hidden_size=256, intermediate_size=512, num_attention_heads=4)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_recipe(path: Path, model_dir: Path, data: Path, output_dir: Path) -> Path:
    raw = recipe_dict(
        model_dir,
        data,
        output_dir,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
    )
    path.write_text(yaml.safe_dump(raw))
    return path


def start(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sft.cli", "train", str(recipe)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "timed out"
    process.send_signal(signal.SIGKILL)
    process.wait()


def finish(recipe: Path) -> dict[str, torch.Tensor]:
    process = start(recipe)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return load_file(Path(yaml.safe_load(recipe.read_text())["training"]["output_dir"]) / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_sigkill_mid_run_and_mid_save_then_rerun_gives_the_uninterrupted_weights(
    larger_model_dir, chat_file, tmp_path
):
    reference = finish(write_recipe(tmp_path / "a.yaml", larger_model_dir, chat_file, tmp_path / "a"))

    mid_run = write_recipe(tmp_path / "b.yaml", larger_model_dir, chat_file, tmp_path / "b")
    process = start(mid_run)
    wait_until(lambda: any(p.name == "checkpoint-2" for p in complete_checkpoints(tmp_path / "b")), process)
    assert not (tmp_path / "b" / "model.safetensors").exists()  # killed before the end
    assert_same_weights(finish(mid_run), reference)

    mid_save = write_recipe(tmp_path / "c.yaml", larger_model_dir, chat_file, tmp_path / "c")
    process = start(mid_save)
    wait_until(lambda: (tmp_path / "c" / "checkpoint-4").is_dir(), process)
    assert [p.name for p in complete_checkpoints(tmp_path / "c")] == ["checkpoint-2"]  # 4 was cut short
    assert_same_weights(finish(mid_save), reference)
    state = json.loads((tmp_path / "c" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


class WeightLog(TrainerCallback):
    def __init__(self) -> None:
        self.after_step: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step.append(model.lm_head.weight.detach().clone())


def nan_at(trainer, steps: set[int]) -> None:
    real = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        loss = real(model, inputs, *args, **kwargs)
        return loss * float("nan") if model.training and trainer.state.global_step in steps else loss

    trainer.compute_loss = compute_loss


def test_an_injected_non_finite_loss_is_skipped_and_counted(qwen2_dir, chat_file, tmp_path):
    trainer = build_trainer(build_run_config(recipe_dict(qwen2_dir, chat_file, tmp_path, max_steps=4)))
    log = WeightLog()
    trainer.add_callback(log)
    nan_at(trainer, {1})
    trainer.train()
    assert trainer.state.global_step == 4 and trainer.nonfinite_steps == 1
    assert torch.equal(log.after_step[1], log.after_step[0])  # the NaN step changed nothing
    assert not torch.equal(log.after_step[2], log.after_step[1])  # and training went on
    assert all(torch.isfinite(w).all() for w in log.after_step)
    assert any("nonfinite_steps" in entry for entry in trainer.state.log_history)


def test_a_run_of_non_finite_steps_stops_with_a_clear_message(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path, max_steps=8, max_consecutive_nonfinite=2)
    trainer = build_trainer(build_run_config(raw))
    nan_at(trainer, set(range(8)))
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row had a non-finite"):
        trainer.train()


@pytest.fixture
def stopped_run(qwen2_dir, chat_file, tmp_path) -> tuple[Path, dict]:
    """A run stopped after step 4 with complete checkpoints at steps 2 and 4 (not finished)."""
    raw = recipe_dict(
        qwen2_dir, chat_file, tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2
    )
    build_trainer(build_run_config(raw)).train()
    raw["training"]["max_steps"] = 6
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    return recipe, raw


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "checkpoint-4"), (True, "checkpoint-4"), (None, None), (False, None), ("path", "checkpoint-2")],
)
def test_resume_from_checkpoint_takes_true_false_null_auto_and_a_path(stopped_run, value, expected):
    _, raw = stopped_run
    run_dir = Path(raw["training"]["output_dir"])
    raw["training"]["resume_from_checkpoint"] = str(run_dir / "checkpoint-2") if value == "path" else value
    resume = resume_point(build_run_config(raw))
    assert (Path(resume).name if resume else None) == expected


def test_resume_true_without_a_checkpoint_is_one_line(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "empty", resume_from_checkpoint=True)
    with pytest.raises(UserError, match="training.resume_from_checkpoint: no complete checkpoint-N"):
        resume_point(build_run_config(raw))


def test_a_resumed_run_says_so_with_its_step_on_the_first_line(stopped_run, capsys):
    recipe, _ = stopped_run
    assert main(["train", str(recipe)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("resuming from ") and first.endswith("checkpoint-4 at step 4")


def test_a_finished_run_is_refused_unless_overwrite_output_dir(stopped_run, capsys):
    recipe, raw = stopped_run
    run_dir = Path(raw["training"]["output_dir"])
    assert main(["train", str(recipe)]) == 0  # finishes the run: dlm_run.json
    assert main(["train", str(recipe)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "holds a finished run" in error
    assert "training.overwrite_output_dir=true" in error

    overwrite = ["training.overwrite_output_dir=true", "training.save_strategy=no"]
    assert main(["train", str(recipe), *overwrite]) == 0
    out = capsys.readouterr().out
    assert "resuming" not in out
    assert not list(run_dir.glob("checkpoint-*"))  # the old run's checkpoints are gone
    assert json.loads((run_dir / "dlm_run.json").read_text())["global_step"] == 6


class FirstStep(TrainerCallback):
    """The learning rate the first step of a (resumed) run trains with."""

    def __init__(self) -> None:
        self.lr: float | None = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.lr is None:
            self.lr = optimizer.param_groups[0]["lr"]


def test_resuming_with_more_steps_continues_the_schedule_and_takes_the_recipes_logging(
    qwen2_dir, chat_file, tmp_path
):
    """The checkpoint's linear schedule ended at lr 0 at its max_steps; the resumed run follows the
    schedule of its own max_steps from there, and logs every step as its recipe says."""
    raw = recipe_dict(
        qwen2_dir,
        chat_file,
        tmp_path / "run",
        max_steps=4,
        save_strategy="steps",
        save_steps=4,
        logging_steps=2,
    )
    build_trainer(build_run_config(raw)).train()
    raw["training"].update(max_steps=8, logging_steps=1)
    trainer = build_trainer(build_run_config(raw))
    first = FirstStep()
    trainer.add_callback(first)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert first.lr == pytest.approx(1e-3 * (8 - 4) / 8)  # linear decay over 8 steps, at step 4
    logged = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert logged == [2, 4, 5, 6, 7, 8]


def test_an_unchanged_resume_keeps_the_checkpoints_learning_rate(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(
        qwen2_dir, chat_file, tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2
    )
    raw["training"].update(lr_scheduler_type="cosine", warmup_steps=1)
    build_trainer(build_run_config(raw)).train()
    trainer = build_trainer(build_run_config(raw))
    first = FirstStep()
    trainer.add_callback(first)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    saved = torch.load(tmp_path / "run" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert first.lr == saved["param_groups"][0]["lr"]
