"""Gather the LM head's sharded weight once per micro-batch.

Under DeepSpeed ZeRO-3 every parameter is partitioned across ranks; the engine all-gathers a
module's weights in a hook before each call of that module and may release them after it. The
masked-only head (`sft/loss/prediction_head.py`) multiplies by the LM head's weight over many chunks of
positions, and its weight gradient is accumulated in the backward, so a 545M-parameter head must be
whole from the head's forward to its backward. `head_gathered(head, hidden)` gathers it once,
around the whole head computation, and keeps it until the head's backward is done:

- under ZeRO-3 (parameters carry DeepSpeed's `ds_id`) it enters
  `deepspeed.zero.GatheredParameters` (read-only: `modifier_rank=None`) at the start of the head
  forward; when a backward will follow (grad mode on, `hidden` needs a gradient) the weight is
  released by a hook on `hidden`'s gradient, which fires once every consumer of `hidden` has run
  its backward; otherwise it is released on leaving the block.
  The weight therefore stays gathered only from the head's forward to the head's backward, which
  follow each other (the head is the last op of the forward, the first of the backward);
- under FSDP2 the head needs nothing: accelerate (1.16, read for this) puts the final norm and the LM head
  (with the input embedding when they are tied) in one unit of their own, sharded with
  `reshard_after_forward=False`: gathered once when the final norm runs and kept until that unit's
  backward is done, however many times the head is called;
- under DDP, ZeRO-1/2 or one process the weight is whole and the block does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 holds only a shard of `param` (it tags such parameters with `ds_id`)."""
    return hasattr(param, "ds_id")


def zero3_gather(params: list[torch.nn.Parameter]) -> AbstractContextManager:
    """DeepSpeed's context that all-gathers `params` on entry and re-partitions them on exit."""
    import deepspeed  # only reached when ZeRO-3 has partitioned the parameters, so it is installed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


@contextmanager
def head_gathered(head: torch.nn.Module, hidden: torch.Tensor) -> Iterator[None]:
    """Keep `head`'s partitioned parameters gathered for the head's forward and backward on `hidden`."""
    params = [p for p in head.parameters() if is_partitioned(p)]
    if not params:
        yield
        return
    gather = zero3_gather(params)
    gather.__enter__()
    try:
        yield
    except BaseException:
        gather.__exit__(None, None, None)
        raise
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        gather.__exit__(None, None, None)
        return

    def release_after_head_backward(grad: torch.Tensor) -> None:
        handle.remove()
        gather.__exit__(None, None, None)

    handle = hidden.register_hook(release_after_head_backward)
