"""Distributed engines: `train --accelerate`, the shipped accelerate configs, 2 processes == 1 process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from sft.cli import main
from sft.cli.launch import gpu_count, launch_command
from sft.engines import ENGINES, config_dir
from sft.recipe import build_run_config
from sft.training.run import train
from tests.conftest import REPO, recipe_dict, sort_rows, tiny_qwen2_config, write_chat_rows

STEPS = 3


CONFIG_DIR = config_dir()


def equivalence_recipe(model_dir: Path, data: Path, output: Path, per_device: int) -> dict:
    """SGD (weights comparable without Adam's eps), a fixed seed and a trainer state saved at the end."""
    return recipe_dict(
        model_dir,
        data,
        output,
        optim="sgd",
        seed=3,
        max_steps=STEPS,
        per_device_train_batch_size=per_device,
        save_strategy="steps",
        save_steps=STEPS,
    )


def logged_losses(output: Path) -> list[float]:
    state = json.loads((output / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def assert_same_run(one: Path, two: Path) -> None:
    assert logged_losses(two) == pytest.approx(logged_losses(one), abs=1e-5)
    assert len(logged_losses(one)) == STEPS
    single, double = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert single.keys() == double.keys()
    for name in single:
        assert torch.allclose(single[name], double[name], atol=1e-5, rtol=0), name


def launch(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sft.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )


@pytest.mark.skipif(gpu_count() > 0, reason="the CPU path; on GPUs the same recipe runs over NCCL")
def test_two_cpu_processes_give_the_losses_and_weights_of_one_process(qwen2_dir, chat_file, tmp_path):
    """Global batch 8: 1 process × 8 in-process vs `--accelerate ddp --num-processes 2` × 4 (gloo).

    The Trainer shuffles with the same seed in both runs and accelerate hands each rank its share of
    every global batch, the noise is a hash of (seed, step, example id) and the loss is divided by the
    supervised tokens of the whole global batch, so the two runs compute the same gradients."""
    train(build_run_config(equivalence_recipe(qwen2_dir, chat_file, tmp_path / "one", 8)))
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(equivalence_recipe(qwen2_dir, chat_file, tmp_path / "two", 4)))
    result = launch(["train", str(recipe), "--accelerate", "ddp", "--num-processes", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"saved to {tmp_path / 'two'}") == 1  # rank 0 speaks for the run
    assert result.stdout.count("train examples: 48") == 1
    assert_same_run(tmp_path / "one", tmp_path / "two")


def accelerate_launch(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """`accelerate launch ARGS` as a user types it (this venv's accelerate, the worktree's sft)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = ["accelerate", "launch", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.mark.skipif(gpu_count() > 0, reason="the CPU path")
def test_plain_accelerate_launch_of_dlm_sft_with_a_cpu_ddp_config_trains_as_one_run(
    qwen2_dir, chat_file, tmp_path
):
    """As TRL users launch TRL scripts: the shipped DDP config, 2 processes, the `dlm-sft` script, a
    recipe with training.use_cpu=true. One run: each step takes a global batch of 2 × 4 of the 48
    rows (an epoch is 6 steps, not 12), and rank 0 alone reports it."""
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "run", per_device_train_batch_size=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    script = Path(sys.executable).parent / "dlm-sft"
    args = ["--config_file", str(CONFIG_DIR / "ddp.yaml"), "--num_processes", "2", str(script)]
    result = accelerate_launch([*args, "train", str(recipe)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train examples: 48") == 1
    assert result.stdout.count(f"saved to {tmp_path / 'run'}") == 1
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["epoch"] == pytest.approx(2 / 6)


@pytest.mark.skipif(gpu_count() > 0, reason="checks a machine without GPUs")
@pytest.mark.parametrize(
    ("launcher", "said"),
    [
        (["--multi_gpu"], "2 processes were started (WORLD_SIZE=2), but without GPUs"),
        ([], "accelerate launch started one process although more were asked for"),
    ],
    ids=["multi_gpu_without_use_cpu", "num_processes_without_multi_gpu"],
)
def test_accelerate_launch_that_would_not_train_as_one_run_stops_with_one_line(
    qwen2_dir, chat_file, tmp_path, launcher, said
):
    """`--multi_gpu` on CPUs without training.use_cpu would run two independent trainings into one
    output_dir; `--num_processes 2` alone starts one process. Both stop at once, one line from rank 0,
    naming `dlm-sft train R --accelerate ddp --num-processes N`."""
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "run")
    raw["training"].pop("use_cpu")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    args = [*launcher, "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = accelerate_launch([*args, "-m", "sft.cli", "train", str(recipe)])
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and said in errors[0], result.stderr[-3000:]
    assert f"dlm-sft train {recipe} --accelerate ddp --num-processes" in errors[0]
    assert "train examples" not in result.stdout and not (tmp_path / "run").exists()


@pytest.mark.skipif(gpu_count() < 2, reason="FSDP needs 2 GPUs: on CPU accelerate runs FSDP as DDP")
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_gpu_processes_give_the_losses_and_weights_of_one_process(qwen2_dir, chat_file, tmp_path, engine):
    recipe = tmp_path / "recipe.yaml"
    for name, per_device, extra in (
        ("one", 8, ["--num-processes", "1"]),
        ("two", 4, ["--num-processes", "2"]),
    ):
        raw = equivalence_recipe(qwen2_dir, chat_file, tmp_path / name, per_device)
        raw["training"].update(use_cpu=False, bf16=False, tf32=False)
        recipe.write_text(yaml.safe_dump(raw))
        args = ["train", str(recipe)] + (["--accelerate", engine, *extra] if name == "two" else [])
        result = launch(args)
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_print_launch_prints_the_accelerate_line_and_exits_0(qwen2_dir, chat_file, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(qwen2_dir, chat_file, tmp_path)))
    argv = ["train", str(recipe), "training.max_steps=5", "--accelerate", "ddp", "--num-processes", "2"]
    assert main([*argv, "--print-launch"]) == 0
    line = capsys.readouterr().out.strip()
    config = CONFIG_DIR / "ddp.yaml"
    expected = f"accelerate launch --config_file {config} --num_processes 2"
    if gpu_count() == 0:  # N gloo processes: the multi-GPU launcher, and the Trainer told to use the CPU
        expected += " --mixed_precision no --dynamo_backend no"
    expected += f" -m sft.cli train {recipe} training.max_steps=5"
    expected += " training.use_cpu=true" if gpu_count() == 0 else ""
    assert line == expected
    assert not (tmp_path / "checkpoint-1").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_launches_the_cli_in_each_gpu_process(engine):
    command = launch_command("r.yaml", ["data.max_length=64"], engine, debug=True, gpus=8)
    assert command == [
        "accelerate",
        "launch",
        "--config_file",
        str(CONFIG_DIR / f"{engine}.yaml"),
        "--num_processes",
        "8",
        "-m",
        "sft.cli",
        "--debug",
        "train",
        "r.yaml",
        "data.max_length=64",
    ]


def test_an_accelerate_config_can_be_given_by_path(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nnum_processes: 16\n")
    command = launch_command("r.yaml", [], str(config), gpus=8)
    assert command[2:6] == ["--config_file", str(config), "--num_processes", "16"]


@pytest.mark.skipif(gpu_count() > 0, reason="checks the behaviour without GPUs")
@pytest.mark.parametrize("engine", ["fsdp", "zero2", "zero3"])
def test_sharded_engines_refuse_to_start_without_gpus(qwen2_dir, chat_file, tmp_path, capsys, engine):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(qwen2_dir, chat_file, tmp_path)))
    assert main(["train", str(recipe), "--accelerate", engine, "--num-processes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "needs GPUs and none were found" in err and f"{engine}.yaml" in err


@pytest.mark.parametrize("engine", ENGINES)
def test_shipped_configs_parse_as_accelerate_configs(engine):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIG_DIR / f"{engine}.yaml"))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[engine]
    assert config.distributed_type.value == expected
    assert config.mixed_precision == "no"  # precision is the recipe's training.bf16
    if engine == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize(("engine", "stage"), [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs_leave_batch_and_clipping_to_the_recipe(engine, stage):
    """The plugin accelerate builds from the config: ZeRO stage as named, batch sizes, accumulation
    and clipping `auto` (filled from the recipe's training section), validated by DeepSpeed itself."""
    from accelerate.utils import DeepSpeedPlugin

    settings = yaml.safe_load((CONFIG_DIR / f"{engine}.yaml").read_text())["deepspeed_config"]
    settings.pop("deepspeed_multinode_launcher")
    plugin = DeepSpeedPlugin(**settings)
    ds_config = plugin.deepspeed_config
    assert ds_config["zero_optimization"]["stage"] == stage
    assert ds_config["gradient_accumulation_steps"] == "auto"
    assert ds_config["train_micro_batch_size_per_gpu"] == "auto"
    assert "gradient_clipping" not in ds_config or ds_config["gradient_clipping"] == "auto"
    deepspeed_zero = pytest.importorskip("deepspeed.runtime.zero.config")
    zero = deepspeed_zero.DeepSpeedZeroConfig(**ds_config["zero_optimization"])
    assert int(zero.stage) == stage


def test_slurm_script_runs_one_accelerate_launch_per_node():
    script = (REPO / "scripts" / "slurm_multinode.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm_multinode.sh")]).returncode == 0
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port"):
        assert flag in script
    assert "srun" in script and "-m sft.cli" in script and "--ntasks-per-node=1" in script


@pytest.mark.skipif(gpu_count() > 0, reason="runs 2 CPU processes over gloo")
def test_ranks_agree_on_a_non_finite_step_and_sync_noise_stats_once_per_log(qwen2_dir, chat_file, tmp_path):
    """2 gloo processes; only rank 1 sees a NaN gradient at one step (tests/cli/rank_agreement_worker.py).

    Both ranks skip that step, so their weights stay identical; the noise statistics issue no
    collective per micro-batch, and one per logging step."""
    from tests.cli import rank_agreement_worker as worker

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "tests.cli.rank_agreement_worker", str(qwen2_dir), str(chat_file), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["global_step"] == worker.STEPS and rank["nonfinite_steps"] == 1 and rank["finite"]
        assert rank["micro_batches"] == worker.STEPS * worker.ACCUMULATION
        assert rank["collectives_in_compute_loss"] == 0
        assert rank["noise_stat_logs"] == worker.STEPS // worker.LOGGING_STEPS
        assert rank["collectives_in_log"] == rank["noise_stat_logs"]
    assert ranks[0]["weights"] == ranks[1]["weights"]


def fsdp_launch_environment() -> dict[str, str]:
    """The environment `accelerate launch --config_file recipes/accelerate/fsdp.yaml` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = ["--config_file", str(CONFIG_DIR / "fsdp.yaml"), "--num_processes", "2", "-m", "sft.cli"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_"))}


def test_fsdp_config_is_fsdp2_and_loads_the_weights_once_per_node():
    env = fsdp_launch_environment()
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"


@pytest.mark.parametrize("checkpointing", [True, False])
def test_under_fsdp_activation_checkpointing_is_fsdps_own_never_both(monkeypatch, tmp_path, checkpointing):
    """The recipe's activation_checkpointing turns on FSDP's checkpointing (the plugin accelerate builds
    from the launch environment) and turns off transformers' own, which would re-gather every layer."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from sft.config import DiffusionSFTConfig
    from sft.training.inputs import checkpoint_through_fsdp

    for key, value in fsdp_launch_environment().items():
        monkeypatch.setenv(key, value)
    args = DiffusionSFTConfig(output_dir=str(tmp_path), activation_checkpointing=checkpointing)
    checkpoint_through_fsdp(args)  # what the trainer does before it builds its Accelerator
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.activation_checkpointing is checkpointing
    assert not args.activation_checkpointing and not args.gradient_checkpointing
    assert plugin.cpu_ram_efficient_loading and plugin.fsdp_version == 2


@pytest.fixture(scope="module")
def wide_model_run(tokenizer, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model, data, output of its 1-process run): a model wide enough (hidden 384) for ZeRO-3 to
    partition its LM head (DeepSpeed keeps parameters under 1e5 elements whole by default)."""
    root = tmp_path_factory.mktemp("wide")
    config = tiny_qwen2_config(tokenizer, hidden_size=384, intermediate_size=768)
    assert config.vocab_size * config.hidden_size > 100_000
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = write_chat_rows(root / "train.jsonl", sort_rows(48))
    train(build_run_config(equivalence_recipe(root / "model", data, root / "one", 8)))
    return root / "model", data, root / "one"


@pytest.mark.skipif(gpu_count() > 0, reason="the CPU path (DeepSpeed's CPU accelerator over gloo)")
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="needs the deepspeed extra (in the dev extra): pip install 'dlm-sft[deepspeed]'",
)
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_on_two_cpu_processes_gives_the_losses_and_weights_of_one_process(
    wide_model_run, tmp_path, engine
):
    """The shipped ZeRO config launched with `accelerate launch` on 2 CPU processes. Under ZeRO-3
    the LM head is partitioned, gathered by sft/loss/engine_gather.py and released after its backward;
    the final save gathers the 16-bit weights into model.safetensors."""
    model_dir, data, one = wide_model_run
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(equivalence_recipe(model_dir, data, tmp_path / "two", 4)))
    command = ["accelerate", "launch", "--config_file", str(CONFIG_DIR / f"{engine}.yaml")]
    command += ["--num_processes", "2", "-m", "sft.cli", "train", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(one, tmp_path / "two")


@pytest.mark.skipif(gpu_count() > 0, reason="the CPU path (DeepSpeed's CPU accelerator over gloo)")
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="needs the deepspeed extra (in the dev extra): pip install 'dlm-sft[deepspeed]'",
)
def test_zero3_gathers_the_lm_head_once_per_micro_batch_whatever_its_chunks(wide_model_run, tmp_path):
    """Counted inside DeepSpeed (tests/cli/zero3_head_gather_worker.py): one all-gather of the
    partitioned head per micro-batch on every rank, though each micro-batch spans several head
    chunks. (A head fetched per chunk by ZeRO-3's module hooks is gathered again and again; when
    two ranks' micro-batches have different numbers of chunks their collectives no longer match and
    the run dies: seen with the chunked head before sft/loss/engine_gather.py.)"""
    model_dir, data, _ = wide_model_run
    raw = equivalence_recipe(model_dir, data, tmp_path, 4)
    # no checkpoint: saving gathers every parameter once more
    raw["training"].update(max_steps=1, gradient_accumulation_steps=2, save_strategy="no")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    command = ["accelerate", "launch", "--config_file", str(CONFIG_DIR / "zero3.yaml")]
    command += ["--num_processes", "2", "-m", "tests.cli.zero3_head_gather_worker", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["micro_batches"] == 2 and rank["chunks"] > rank["micro_batches"]
        assert rank["head_gathers"] == rank["micro_batches"]
        assert rank["partitioned_at_end"] == 1  # released after each backward


@pytest.mark.skipif(gpu_count() > 0, reason="the CPU path (DeepSpeed's CPU accelerator over gloo)")
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="needs the deepspeed extra (in the dev extra): pip install 'dlm-sft[deepspeed]'",
)
def test_zero3_head_survives_overlapping_forwards_and_a_forward_never_backpropagated(tokenizer, tmp_path):
    """Under DeepSpeed (one CPU process, tests/cli/zero3_head_gather_worker.py `overlap`): a dropped
    grad-enabled forward, then two forwards before one backward, per micro-batch. DeepSpeed refuses
    nested gathers of the same parameters; the overlapping forwards share one gather, the dropped
    one releases its gather when its graph is freed, and the head ends partitioned."""
    config = tiny_qwen2_config(tokenizer, hidden_size=384, intermediate_size=768)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = write_chat_rows(tmp_path / "train.jsonl", sort_rows(16))
    raw = equivalence_recipe(tmp_path / "model", data, tmp_path / "run", 4)
    raw["training"].update(max_steps=1, gradient_accumulation_steps=2, save_strategy="no")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    command = [
        "accelerate",
        "launch",
        "--config_file",
        str(CONFIG_DIR / "zero3.yaml"),
        "--num_processes",
        "1",
    ]
    command += ["-m", "tests.cli.zero3_head_gather_worker", str(recipe), "overlap"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((tmp_path / "run" / "rank0.json").read_text())
    assert counts["micro_batches"] == 2 and counts["head_gathers"] == 2 * counts["micro_batches"]
    assert counts["partitioned_at_end"] == 1
