"""One rank of a 2-process CPU training (run by `torchrun`, see tests/cli/test_distributed.py).

Rank 1 alone sees a NaN gradient at optimizer step `NAN_STEP`: the callback writes it after DDP's
all-reduce, as a rank holding its own gradient shard (FSDP, ZeRO) would. Every collective call is
counted, split by where it was issued (inside `compute_loss`, i.e. per micro-batch, or inside
`log`). Each rank writes what it saw to `OUTPUT/rank<R>.json`.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.cli.rank_agreement_worker MODEL DATA OUTPUT
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from sft.recipe import build_run_config
from sft.training.run import build_trainer
from tests.conftest import recipe_dict

NAN_STEP = 1
STEPS, ACCUMULATION, LOGGING_STEPS = 4, 2, 2
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor")


class NanOnRankOne(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == NAN_STEP and dist.get_rank() == 1:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))


def count_collectives(trainer, counts: Counter) -> None:
    """Count torch.distributed collectives by the trainer method they were issued from."""
    where = {"now": "elsewhere"}
    for name in COLLECTIVES:
        real = getattr(dist, name)

        def counted(*args, _real=real, **kwargs):
            counts[where["now"]] += 1
            return _real(*args, **kwargs)

        setattr(dist, name, counted)
    for method in ("compute_loss", "log"):
        real = getattr(trainer, method)

        def inside(*args, _real=real, _method=method, **kwargs):
            outer, where["now"] = where["now"], _method
            try:
                return _real(*args, **kwargs)
            finally:
                where["now"] = outer

        setattr(trainer, method, inside)


def main(model: str, data: str, output: str) -> None:
    raw = recipe_dict(
        Path(model),
        Path(data),
        Path(output),
        max_steps=STEPS,
        gradient_accumulation_steps=ACCUMULATION,
        logging_steps=LOGGING_STEPS,
        per_device_train_batch_size=4,
    )
    trainer = build_trainer(build_run_config(raw))
    trainer.add_callback(NanOnRankOne())
    counts: Counter = Counter()
    count_collectives(trainer, counts)
    micro_batches = Counter()
    real_compute_loss = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        micro_batches["train" if trainer.model.training else "eval"] += 1
        return real_compute_loss(*args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    weights = torch.cat([p.detach().flatten().double() for p in trainer.model.parameters()])
    result = {
        "nonfinite_steps": trainer.nonfinite_steps,
        "global_step": trainer.state.global_step,
        "weights": weights.tolist(),
        "finite": bool(weights.isfinite().all()),
        "micro_batches": micro_batches["train"],
        "collectives_in_compute_loss": counts["compute_loss"],
        "collectives_in_log": counts["log"],
        "noise_stat_logs": sum("masked_tokens" in entry for entry in trainer.state.log_history),
    }
    Path(output, f"rank{dist.get_rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
