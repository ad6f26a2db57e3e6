"""How a training run stops and goes on: Ctrl-C (SIGINT) ends it after the current step with a
checkpoint saved and one line naming it; a resumed run with a new `max_steps` continues its learning
rate schedule."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sft.errors import UserError
from sft.training.checkpoints import complete_checkpoints


class TrainingInterrupted(UserError):
    """Training stopped by Ctrl-C; the CLI exits with 130, as a shell does for SIGINT."""

    exit_code = 130


class StopRequest(TrainerCallback):
    """After a Ctrl-C, the step being trained ends with a checkpoint and the training loop stops. Under
    a launcher the ranks agree (a Ctrl-C seen by any rank stops all at the same step)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.requested = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(self.requested)], device=accelerator.device)
            self.requested = bool(accelerator.reduce(flag, reduction="sum").item())
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


@contextmanager
def stop_on_interrupt(trainer: Trainer) -> Iterator[StopRequest]:
    """While training: the first SIGINT asks `trainer` to save and stop after the current step; a second
    one interrupts at once (KeyboardInterrupt). Outside the main thread SIGINT is left alone."""
    request = StopRequest(trainer)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def ask_to_stop(signum: int, frame: Any) -> None:
        request.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if trainer.is_world_process_zero():
            print(
                "interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)",
                file=sys.stderr,
            )

    previous = signal.signal(signal.SIGINT, ask_to_stop)
    trainer.add_callback(request)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer.remove_callback(request)


def interrupted(output_dir: str, step: int) -> TrainingInterrupted:
    checkpoint = Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    return TrainingInterrupted(
        f"interrupted at step {step}; saved {checkpoint}, which a rerun of the same command resumes from"
    )


def interrupted_now(output_dir: str) -> TrainingInterrupted:
    """Ctrl-C outside a training step (loading, tokenizing, a second Ctrl-C): what a rerun resumes from."""
    complete = complete_checkpoints(output_dir)
    resumes = (
        f"a rerun resumes from {complete[-1]}" if complete else "no checkpoint yet: a rerun starts afresh"
    )
    return TrainingInterrupted(f"interrupted; {resumes}")


def continue_schedule(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Set each parameter group's learning rate to what `scheduler` (built for this run's total steps,
    its step count restored from a checkpoint) gives at that step."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    step = scheduler.last_epoch
    rates = [
        base * schedule(step) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates
