"""One rank of a DeepSpeed ZeRO-3 CPU run that counts the all-gathers of the partitioned LM head
(run by `accelerate launch --config_file recipes/accelerate/zero3.yaml`, see
tests/cli/test_distributed.py).

The head's weight is counted each time DeepSpeed fetches it while it is partitioned: through
`GatheredParameters` (the parameter's `all_gather`) or through ZeRO-3's per-module hooks (the
coordinator's `all_gather_coalesced`, which may be called on any parameter of a fetch group).
Each micro-batch's masked positions span several head chunks (`CHUNK`), so a head fetched per
chunk or again for the recompute would count more than once. Writes `OUTPUT/rank<R>.json`.
With `overlap`, each micro-batch first runs a grad-enabled forward whose loss is dropped (never
backpropagated), then two forwards whose mean loss is backpropagated once: the head is then gathered
twice per micro-batch (the dropped graph releases it; the two overlapping forwards share one).

    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 2 \\
        -m tests.cli.zero3_head_gather_worker RECIPE [overlap]
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from pathlib import Path

import torch.distributed as dist
import yaml
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
from transformers import TrainerCallback

import sft.training.trainer
from sft.loss.prediction_head import enable_prediction_positions
from sft.recipe import build_run_config
from sft.training.noising import draw_noise
from sft.training.run import build_trainer

CHUNK = 8


def count_head_fetches(model, counts: Counter) -> None:
    head = model.get_output_embeddings().weight

    def note(params: list) -> None:
        if any(p is head for p in params) and head.ds_status == ZeroParamStatus.NOT_AVAILABLE:
            counts["head_gathers"] += 1

    def wrap(param) -> None:
        gather, coalesced = param.all_gather, param.all_gather_coalesced

        def all_gather(param_list=None, **kwargs):
            note(param_list or [param])
            return gather(param_list=param_list, **kwargs)

        def all_gather_coalesced(params, *args, **kwargs):
            params = list(params)
            note(params)
            return coalesced(params, *args, **kwargs)

        param.all_gather, param.all_gather_coalesced = all_gather, all_gather_coalesced

    for param in model.parameters():
        wrap(param)


class CountOnceSharded(TrainerCallback):
    """DeepSpeed partitions the parameters when the Trainer prepares the model: count from then."""

    def __init__(self, counts: Counter) -> None:
        self.counts = counts

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        count_head_fetches(model, self.counts)


def main(recipe: str, mode: str = "once") -> None:
    raw = yaml.safe_load(Path(recipe).read_text())
    sft.training.trainer.enable_prediction_positions = functools.partial(
        enable_prediction_positions, chunk_size=CHUNK
    )
    trainer = build_trainer(build_run_config(raw))
    counts: Counter = Counter()
    trainer.add_callback(CountOnceSharded(counts))
    real_compute_loss = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        counts["micro_batches"] += 1
        counts["chunks"] += -(
            -int(draw_noise(inputs, trainer.args, trainer.state.global_step, True).masked.sum()) // CHUNK
        )
        if mode == "overlap":
            real_compute_loss(model, inputs, *args, **kwargs)  # dropped: never backpropagated
            first = real_compute_loss(model, inputs, *args, **kwargs)
            return (first + real_compute_loss(model, inputs, *args, **kwargs)) / 2
        return real_compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    head = trainer.model.get_output_embeddings().weight
    counts["partitioned_at_end"] = int(head.ds_status == ZeroParamStatus.NOT_AVAILABLE)
    output = Path(raw["training"]["output_dir"])
    (output / f"rank{dist.get_rank()}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    main(*sys.argv[1:])
