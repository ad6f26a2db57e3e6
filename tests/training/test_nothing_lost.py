"""Nothing lost: `overwrite_output_dir` keeps the old run until the new one has saved; an output_dir that
cannot be written is one line before tokenizing; a failed save names where the weights went; Ctrl-C
saves a checkpoint that a rerun resumes from."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers
import yaml

from sft.cli import main
from sft.errors import UserError
from sft.recipe import build_run_config
from sft.training import checkpoints
from sft.training.checkpoints import ASIDE, complete_checkpoints
from sft.training.run import train
from tests.conftest import REPO, recipe_dict


def finished_run(qwen2_dir, chat_file, tmp_path) -> tuple[dict, Path, dict[str, bytes]]:
    """A finished run with a checkpoint, and the bytes of its records and checkpoint files."""
    output = tmp_path / "run"
    raw = recipe_dict(qwen2_dir, chat_file, output, save_strategy="steps", save_steps=2)
    raw["data"]["cache_dir"] = str(tmp_path / "tokenized")
    train(build_run_config(raw))
    return raw, output, snapshot(output)


def snapshot(output: Path) -> dict[str, bytes]:
    files = [*output.glob("checkpoint-*/*"), output / "dlm_run.json", output / "trainer_state.json"]
    return {str(p.relative_to(output)): p.read_bytes() for p in files if p.is_file()}


def overwriting(raw: dict, **training) -> dict:
    new = json.loads(json.dumps(raw))
    new["training"].update(overwrite_output_dir=True, **training)
    return new


def test_overwrite_removes_the_old_run_only_once_the_new_one_has_saved_a_checkpoint(
    qwen2_dir, chat_file, tmp_path, monkeypatch
):
    raw, output, _ = finished_run(qwen2_dir, chat_file, tmp_path)
    seen = []
    discard = checkpoints.ReplacedRun.discard

    def spy(self):
        seen.append(
            ((output / ASIDE / "dlm_run.json").is_file(), [p.name for p in complete_checkpoints(output)])
        )
        discard(self)

    monkeypatch.setattr(checkpoints.ReplacedRun, "discard", spy)
    train(build_run_config(overwriting(raw, save_steps=1, max_steps=3)))
    assert seen[0] == (True, ["checkpoint-1"])  # the old run was whole until the first checkpoint
    assert not (output / ASIDE).exists()
    assert json.loads((output / "dlm_run.json").read_text())["global_step"] == 3
    assert [p.name for p in complete_checkpoints(output)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_a_new_run_that_fails_leaves_the_old_run_whole(qwen2_dir, chat_file, tmp_path):
    raw, output, before = finished_run(qwen2_dir, chat_file, tmp_path)
    failing = overwriting(raw)
    failing["lora"] = {"r": 4, "alpha": 8, "target_modules": ["no_such_proj"]}
    with pytest.raises(ValueError, match="no_such_proj"):
        train(build_run_config(failing))
    assert snapshot(output) == before and not (output / ASIDE).exists()


def start(recipe: Path, stdout: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sft.cli", "train", str(recipe), *overrides],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=stdout.open("w"),
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_new_run_leaves_the_old_run_whole_and_the_next_one_replaces_it(
    qwen2_dir, chat_file, tmp_path
):
    raw, output, before = finished_run(qwen2_dir, chat_file, tmp_path)
    recipe = tmp_path / "again.yaml"
    recipe.write_text(yaml.safe_dump(overwriting(raw, max_steps=400, save_steps=200)))
    process = start(recipe, tmp_path / "out.txt")
    wait_for(lambda: (output / ASIDE).is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert snapshot(output / ASIDE) == before  # whole, set aside

    assert main(["train", str(recipe), "training.max_steps=2"]) == 0
    assert not (output / ASIDE).exists()
    assert json.loads((output / "dlm_run.json").read_text())["global_step"] == 2


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A directory this process cannot write in (root writes anywhere chmod allows: use /sys then)."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir()
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    path = Path("/sys/kernel")
    try:
        (path / "dlm-sft-probe").touch()
    except OSError:
        yield path
    else:
        pytest.skip("no read-only directory for root here")


@pytest.mark.parametrize("where", ["the dir itself", "a new dir under it"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_output_dir_that_cannot_be_written_is_one_line_before_tokenizing(
    qwen2_dir, chat_file, tmp_path, capsys, read_only, where, dry_run
):
    output = read_only if where == "the dir itself" else read_only / "dlm-sft-run" / "out"
    raw = recipe_dict(qwen2_dir, chat_file, output)
    raw["data"]["cache_dir"] = str(tmp_path / "tokenized")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["train", str(recipe), *(["--dry-run"] if dry_run else [])]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {output}: training.output_dir: cannot write here")
    assert not (tmp_path / "tokenized").exists()


def test_a_failed_final_save_leaves_the_trained_weights_where_the_error_says(
    qwen2_dir, chat_file, tmp_path, monkeypatch
):
    output = tmp_path / "run"
    raw = recipe_dict(qwen2_dir, chat_file, output)
    real_save = transformers.Trainer._save

    def disk_full_in_the_run_dir(self, output_dir=None, state_dict=None):
        if Path(output_dir) == output:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, state_dict)

    monkeypatch.setattr(transformers.Trainer, "_save", disk_full_in_the_run_dir)
    with pytest.raises(UserError) as err:
        train(build_run_config(raw))
    line = err.value.line()
    assert "No space left on device" in line and "\n" not in line
    rescue = Path(line.split("it was saved to ")[1].split(" instead")[0])
    assert (rescue / "model.safetensors").is_file()
    assert json.loads((rescue / "dlm_run.json").read_text())["global_step"] == 2
    shutil.rmtree(rescue)


def test_ctrl_c_saves_a_checkpoint_that_a_rerun_resumes_from(qwen2_dir, chat_file, tmp_path):
    output = tmp_path / "run"
    raw = recipe_dict(qwen2_dir, chat_file, output, max_steps=5000, per_device_train_batch_size=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    stdout = tmp_path / "out.txt"
    process = start(recipe, stdout)
    wait_for(lambda: "'loss'" in stdout.read_text(), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    line = err.strip().splitlines()[-1]
    assert (
        line.startswith("error: interrupted at step ") and "which a rerun of the same command resumes" in line
    )
    (checkpoint,) = complete_checkpoints(output)
    assert str(checkpoint) in line and "Traceback" not in err

    assert (
        main(["train", str(recipe), "training.max_steps=" + str(int(checkpoint.name.split("-")[1]) + 1)]) == 0
    )
    assert json.loads((output / "dlm_run.json").read_text())["global_step"] > 1


def test_setting_aside_cut_short_by_a_kill_is_undone_then_done_whole(tmp_path):
    (tmp_path / "dlm_run.json").write_text("{}")
    (tmp_path / f"{ASIDE}.partial" / "checkpoint-2").mkdir(parents=True)
    checkpoints.ReplacedRun(tmp_path).set_aside()
    assert sorted(p.name for p in (tmp_path / ASIDE).iterdir()) == ["checkpoint-2", "dlm_run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ASIDE]
