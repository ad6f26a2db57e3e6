"""What a real run would refuse, found before anything is tokenized, loaded or written: `dlm-sft train`
and its `--dry-run` check these first, each mistake one line.

- `output_dir` (or the parent it would be made in) can be written;
- an evaluation strategy has an eval set to evaluate;
- the learning-rate scheduler can be built from its settings, as the Trainer builds it;
- the run's resume point (`training.resume_from_checkpoint`, a finished run in `output_dir`).
"""

from __future__ import annotations

import torch
from transformers import get_scheduler

from sft.config import DiffusionSFTConfig, RunConfig
from sft.errors import UserError
from sft.training.checkpoints import check_writable, resume_point
from sft.validation import first_line

STAND_IN_STEPS = 1000
"""Total steps the scheduler is tried with when the recipe counts epochs (the data is not read yet)."""


def check_run(config: RunConfig) -> str | None:
    """Raise the UserError a run of `config` would end with; else the checkpoint it resumes from."""
    args = config.training
    check_writable(args.output_dir)
    if args.eval_strategy != "no" and not config.data.eval:
        raise UserError(
            f"eval_strategy {args.eval_strategy.value!r} needs an eval set",
            file=config.source,
            key="training.eval_strategy",
            expected="data.eval, or training.eval_strategy: no",
        )
    check_scheduler(args, config.source)
    return resume_point(config)


def check_scheduler(args: DiffusionSFTConfig, file: str) -> None:
    """Build the learning-rate scheduler as the Trainer does (`lr_scheduler_type`, its kwargs)."""
    steps = args.max_steps if args.max_steps > 0 else STAND_IN_STEPS
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.learning_rate)
    try:
        get_scheduler(
            args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=args.get_warmup_steps(steps),
            num_training_steps=steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{args.lr_scheduler_type.value} cannot be built from these settings: {first_line(err)}",
            file=file,
            key="training.lr_scheduler_kwargs",
            expected="the arguments of that transformers scheduler",
        ) from None
