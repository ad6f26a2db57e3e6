"""Step arithmetic: optimizer steps per epoch and in total, as transformers' Trainer counts them.
Imports nothing heavy, so planning a run does not load the trainer."""

from __future__ import annotations

import math

from sft.config import DiffusionSFTConfig, RunConfig
from sft.data.splits import PreparedData


def optimizer_steps(rows: int, args: DiffusionSFTConfig, world_size: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total) for `rows` batch rows, as transformers' Trainer counts."""
    batches = math.ceil(rows / (args.per_device_train_batch_size * world_size))
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    return per_epoch, total


def run_steps(config: RunConfig, data: PreparedData, world_size: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of a run on its tokenized splits."""
    return optimizer_steps(data.batch_rows(config), config.training, world_size)
