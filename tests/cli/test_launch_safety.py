"""A plain `dlm-sft train` never runs torch DataParallel; `--tokenize-only` prepares the cache."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from sft.cli import main
from sft.config import DataSettings
from sft.data.cache import cache_key
from sft.data.sources import load_chat_rows
from tests.conftest import REPO, recipe_dict


@pytest.fixture
def four_gpus(monkeypatch):
    """torch reporting four CUDA devices, as the Trainer asks it (selecting one is a no-op: this torch
    has no CUDA); no launcher in the environment."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


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
    from sft.cli.launch import refuse_data_parallel
    from sft.recipe import load_recipe

    config = load_recipe(str(gpu_recipe(qwen2_dir, chat_file, tmp_path)), [])
    monkeypatch.setenv("WORLD_SIZE", "4")
    refuse_data_parallel(config)
    monkeypatch.delenv("WORLD_SIZE")
    refuse_data_parallel(load_recipe(str(tmp_path / "recipe.yaml"), ["training.use_cpu=true"]))


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
