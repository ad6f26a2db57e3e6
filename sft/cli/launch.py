"""`dlm-sft train RECIPE --accelerate NAME`: run the same training under `accelerate launch`.

NAME is one of the configs shipped in `recipes/accelerate/` (`ddp`, `fsdp`, `zero2`, `zero3`) or a
path to any accelerate config YAML. The command re-invokes this CLI in every process:

    accelerate launch --config_file CFG --num_processes N -m sft.cli train RECIPE [overrides ...]

N defaults to the number of visible GPUs. Without GPUs (and with `--num-processes N >= 2`) a DDP
config runs N CPU processes over gloo: accelerate's own `--cpu` flag would silently start only one,
so the multi-GPU launcher is used with `--mixed_precision no --dynamo_backend no`, which starts N
processes on any device, and `training.use_cpu=true` is added (without it accelerate sees no CUDA
and each process silently trains alone). FSDP and DeepSpeed need GPUs: on CPU accelerate silently
turns FSDP into DDP, and DeepSpeed's CPU backend hangs at start. Multi-node runs add accelerate's
`--num_machines`, `--machine_rank`, `--main_process_ip` and `--main_process_port` to the printed line
(docs/distributed.md, scripts/slurm_multinode.sh).

Under any launcher, `dlm-sft train` first checks that its processes form one run
(`check_processes`), and otherwise stops with one line naming the command that works:
- one process seeing several GPUs (no launcher) would make the Trainer use torch DataParallel, which
  replicates the model per GPU and splits each batch, but not the prediction positions the
  masked-only head gathers;
- processes started together (`WORLD_SIZE` > 1) join one process group only on an accelerator with a
  distributed backend, or on the CPU with `training.use_cpu=true` (gloo): without GPUs and without
  it, accelerate makes each an independent run, all writing one output_dir;
- more processes on a machine than it has GPUs cannot each get one;
- `accelerate launch --num_processes N` without `--multi_gpu` (or with `--cpu`) starts one process
  only, with no word of it; that launcher sets `ACCELERATE_MIXED_PRECISION` and, for N > 1 only,
  `MASTER_ADDR`, but no world size (MPI, which it leaves to start the processes, would set one).
Only global rank 0 prints the line; the other ranks exit with the same code.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from sft.engines import resolve_config
from sft.errors import UserError
from sft.ranks import is_main_process, local_world_size, world_size
from sft.validation import apply_override, read_mapping


def read_accelerate_config(path: Path) -> dict:
    """The accelerate config as a dict (checked to be a YAML mapping with a distributed_type)."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"not a readable YAML file: {line}", file=str(path), key="--accelerate") from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise UserError(
            "not an accelerate config",
            file=str(path),
            key="--accelerate",
            expected="a YAML mapping with distributed_type (as `accelerate config` writes)",
        )
    return config


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def joins_process_group(use_cpu: bool) -> bool:
    """Whether accelerate puts this process into its launch's process group, as it decides: on the
    CPU (gloo) when told to use it, else on an accelerator that has a distributed backend."""
    if use_cpu:
        return True
    from accelerate.utils import get_distributed_backend, get_torch_accelerator_backend

    device_type, _ = get_torch_accelerator_backend()
    return get_distributed_backend(device_type) is not None


def check_processes(recipe: str, overrides: list[str]) -> None:
    """Stop (one line, from rank 0) a launch whose processes would not train as one run. Runs before
    the recipe's TrainingArguments are built: building them is what sets the process group up (or,
    with too few GPUs, fails selecting one)."""
    problem = _process_problem(recipe, overrides)
    if problem is None:
        return
    if not is_main_process():
        raise SystemExit(2)  # rank 0 says it
    raise problem


def _uses_cpu(recipe: str, overrides: list[str]) -> bool:
    """`training.use_cpu` as the recipe and its overrides set it, or accelerate's `--cpu`."""
    from sft.recipe import locate

    file = locate(recipe)
    raw = read_mapping(file, "a YAML recipe")
    for override in overrides:
        apply_override(raw, override, file)
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    return training.get("use_cpu") is True or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"


def _process_problem(recipe: str, overrides: list[str]) -> UserError | None:
    use_cpu, world = _uses_cpu(recipe, overrides), world_size()

    def ddp(processes: int | str) -> str:
        line = shlex.join(["dlm-sft", "train", recipe, *overrides, "--accelerate", "ddp"])
        return f"`{line} --num-processes {processes}`"

    if world == 1 and os.environ.get("ACCELERATE_MIXED_PRECISION") and os.environ.get("MASTER_ADDR"):
        return UserError(
            "accelerate launch started one process although more were asked for "
            "(--num_processes N without --multi_gpu, or with --cpu, starts only one)",
            key="accelerate launch",
            expected=f"{ddp('N')}, or accelerate launch --multi_gpu --num_processes N "
            "... training.use_cpu=true on CPUs",
        )
    if world > 1 and not joins_process_group(use_cpu):
        return UserError(
            f"{world} processes were started (WORLD_SIZE={world}), but without GPUs they join one "
            "process group only with training.use_cpu=true: each would train alone into the same "
            "output_dir",
            key="training.use_cpu",
            expected=f"{ddp(world)}, or training.use_cpu=true under this launcher",
        )
    gpus, local = 0 if use_cpu else gpu_count(), local_world_size()
    if world > 1 and gpus and local is not None and local > gpus:
        return UserError(
            f"{local} processes on this machine, but it has {gpus} GPU(s): one each is needed",
            key="--num-processes",
            expected=f"{ddp(gpus)} (one process per GPU)",
        )
    if world == 1 and gpus > 1:
        return UserError(
            f"{gpus} GPUs are visible to one process, which the Trainer would spread over them with "
            "torch DataParallel (not supported)",
            key="--accelerate",
            expected=f"--accelerate ddp|fsdp|zero2|zero3 for one process per GPU ({gpus}), "
            "or CUDA_VISIBLE_DEVICES=0 for one GPU",
        )
    return None


def launch_command(
    recipe: str,
    overrides: list[str],
    engine: str,
    num_processes: int | None = None,
    debug: bool = False,
    gpus: int | None = None,
) -> list[str]:
    """The `accelerate launch ...` argv that runs `dlm-sft train RECIPE overrides` in every process."""
    config_path = resolve_config(engine)
    config = read_accelerate_config(config_path)
    gpus = gpu_count() if gpus is None else gpus
    if num_processes is not None and num_processes < 1:
        raise UserError(f"must be at least 1, got {num_processes}", key="--num-processes")
    if num_processes is None:
        num_processes = config.get("num_processes") if config.get("num_processes", -1) > 0 else gpus
        if not num_processes:
            raise UserError(
                "no GPU found and no process count given",
                key="--num-processes",
                expected="--num-processes N (N CPU processes with gloo; DDP only)",
            )
    command = ["accelerate", "launch", "--config_file", str(config_path)]
    command += ["--num_processes", str(num_processes)]
    distributed = str(config.get("distributed_type", "NO")).upper()
    if gpus == 0 and distributed != "NO":
        if distributed != "MULTI_GPU":
            raise UserError(
                f"{distributed} needs GPUs and none were found",
                file=str(config_path),
                key="--accelerate",
                expected="ddp on CPU, or a machine with GPUs (see docs/distributed.md)",
            )
        if num_processes < 2:
            raise UserError(
                f"DDP needs at least 2 processes, got {num_processes}",
                key="--num-processes",
                expected="2 or more, or no --accelerate for one process",
            )
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        # Without use_cpu, accelerate finds no CUDA and makes each process an independent run.
        overrides = [*overrides, "training.use_cpu=true"]
    command += ["-m", "sft.cli", *(["--debug"] if debug else []), "train", recipe, *overrides]
    return command


def run_launch(
    recipe: str,
    overrides: list[str],
    engine: str,
    num_processes: int | None = None,
    debug: bool = False,
    print_only: bool = False,
) -> int:
    """Print the launch line (`print_only`) or run it, returning accelerate's exit code."""
    command = launch_command(recipe, overrides, engine, num_processes, debug)
    if print_only:
        print(shlex.join(command))
        return 0
    executable = Path(sys.executable).parent / "accelerate"
    found = str(executable) if executable.is_file() else shutil.which("accelerate")
    if found is None:
        raise UserError("the `accelerate` command is not installed", key="--accelerate")
    print(shlex.join(command), file=sys.stderr, flush=True)
    return subprocess.call([found, *command[1:]])
