"""`dlm-sft train` runs as one run or stops with one line: never torch DataParallel, never processes
that did not join one process group, never more processes than GPUs, never the one process that
`accelerate launch --num_processes N` without `--multi_gpu` starts; `--tokenize-only` prepares the
cache. (Launches of real processes: tests/cli/test_distributed.py.)"""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from sft.cli import main
from sft.cli.launch import check_processes, gpu_count
from sft.config import DataSettings
from sft.data.cache import cache_key
from sft.data.sources import load_chat_rows
from tests.conftest import REPO, recipe_dict

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
LAUNCH_VARIABLES += ("ACCELERATE_MIXED_PRECISION",)


def simulate_gpus(monkeypatch, count: int) -> None:
    """torch reporting `count` CUDA devices, as the Trainer and accelerate ask it (selecting one is a
    no-op: this torch has no CUDA); no launcher in the environment."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda"))
    without_launcher(monkeypatch)


def without_launcher(monkeypatch) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def launched(monkeypatch, world: int, rank: int = 0) -> None:
    """The environment torchrun / `accelerate launch --multi_gpu` give one process of `world` on one
    machine."""
    for name, value in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", world), ("RANK", rank)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")


@pytest.fixture
def four_gpus(monkeypatch):
    simulate_gpus(monkeypatch, 4)


def gpu_recipe(model_dir, data, output):
    raw = recipe_dict(model_dir, data, output)
    raw["training"].update(use_cpu=False, bf16=False)  # bf16 would ask the simulated GPU for support
    path = output / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_simulated_machine_is_one_where_the_trainer_picks_data_parallel(four_gpus, tmp_path):
    """Positive control: with these device counts the Trainer's own arguments choose DataParallel."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=False)
    assert args.n_gpu == 4 and args.parallel_mode == ParallelMode.NOT_DISTRIBUTED


def test_train_with_several_gpus_and_no_launcher_stops_naming_accelerate(
    four_gpus, qwen2_dir, chat_file, tmp_path, capsys
):
    recipe = gpu_recipe(qwen2_dir, chat_file, tmp_path)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert "4 GPUs are visible to one process" in err and "--accelerate ddp|fsdp|zero2|zero3" in err
    assert not (tmp_path / "tokenized").exists()  # stopped before any work


def test_under_a_launcher_or_on_the_cpu_train_is_not_stopped(
    four_gpus, qwen2_dir, chat_file, tmp_path, monkeypatch
):
    recipe = str(gpu_recipe(qwen2_dir, chat_file, tmp_path))
    launched(monkeypatch, world=4)
    check_processes(recipe, [])
    without_launcher(monkeypatch)
    check_processes(recipe, ["training.use_cpu=true"])


@pytest.mark.skipif(gpu_count() > 0, reason="checks a machine without GPUs")
def test_processes_that_cannot_join_one_process_group_stop_with_one_line_naming_the_command(
    qwen2_dir, chat_file, tmp_path, monkeypatch, capsys
):
    """`accelerate launch --multi_gpu --num_processes 2 -m sft.cli train R` without GPUs: accelerate
    would make each process an independent run into the same output_dir."""
    recipe = gpu_recipe(qwen2_dir, chat_file, tmp_path)  # training.use_cpu not set
    launched(monkeypatch, world=2)
    assert main(["train", str(recipe), "training.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "2 processes were started (WORLD_SIZE=2)" in err
    assert f"`dlm-sft train {recipe} training.max_steps=1 --accelerate ddp --num-processes 2`" in err
    assert "or training.use_cpu=true under this launcher" in err
    launched(monkeypatch, world=2, rank=1)  # the other rank leaves the saying to rank 0
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(recipe)])
    assert stopped.value.code == 2 and capsys.readouterr() == ("", "")
    assert not (tmp_path / "tokenized").exists()


def test_more_processes_on_a_machine_than_gpus_stop_naming_one_process_per_gpu(
    qwen2_dir, chat_file, tmp_path, monkeypatch, capsys
):
    simulate_gpus(monkeypatch, 2)
    recipe = gpu_recipe(qwen2_dir, chat_file, tmp_path)
    launched(monkeypatch, world=4)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "4 processes on this machine, but it has 2 GPU(s)" in err
    assert f"`dlm-sft train {recipe} --accelerate ddp --num-processes 2` (one process per GPU)" in err


def test_accelerate_launch_that_started_one_of_several_processes_stops_saying_so(
    qwen2_dir, chat_file, tmp_path, monkeypatch, capsys
):
    """`accelerate launch --num_processes 2` without `--multi_gpu` (or with `--cpu`) starts one
    process: accelerate's environment without a world size, but with the address the others would
    have met at."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(qwen2_dir, chat_file, tmp_path)))
    without_launcher(monkeypatch)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "accelerate launch started one process" in err
    assert f"`dlm-sft train {recipe} --accelerate ddp --num-processes N`" in err
    monkeypatch.delenv("MASTER_ADDR")  # `accelerate launch` of one process: trains
    assert main(["train", str(recipe), "training.max_steps=1"]) == 0


def test_tokenize_only_writes_the_cache_train_then_reads(qwen2_dir, chat_file, tmp_path, capsys, tokenizer):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(qwen2_dir, chat_file, tmp_path)))
    assert main(["train", str(recipe), "--tokenize-only"]) == 0
    out = capsys.readouterr().out
    key = cache_key(
        load_chat_rows(str(chat_file)), tokenizer, DataSettings(max_length=32), tokenizer.eos_token_id
    )
    assert f"train tokenized into {tmp_path / 'tokenized' / key}" in out
    assert "train examples: 48" in out and not (tmp_path / "model.safetensors").exists()
    assert main(["train", str(recipe), "--tokenize-only", "--accelerate", "ddp"]) == 2
    assert "--tokenize-only: cannot be combined with --accelerate" in capsys.readouterr().err


def test_slurm_script_tokenizes_once_before_starting_the_ranks():
    script = (REPO / "scripts" / "slurm_multinode.sh").read_text()
    assert script.index("--tokenize-only") < script.index("srun")
