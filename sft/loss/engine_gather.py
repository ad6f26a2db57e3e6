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
  its backward, or, for a forward whose graph is dropped without a backward, when that graph is
  freed; otherwise it is released on leaving the block.
  The weight therefore stays gathered only from the head's forward to the head's backward, which
  follow each other (the head is the last op of the forward, the first of the backward). Forwards
  that overlap (a second grad-enabled forward before the first one's backward) share one gather,
  counted, and the weight is released when the last of them is done: DeepSpeed refuses nested
  gathers of the same parameters;
- under FSDP2 the head needs nothing: accelerate (1.16, read for this) puts the final norm and the LM head
  (with the input embedding when they are tied) in one unit of their own, sharded with
  `reshard_after_forward=False`: gathered once when the final norm runs and kept until that unit's
  backward is done, however many times the head is called;
- under DDP, ZeRO-1/2 or one process the weight is whole and the block does nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 holds only a shard of `param` (it tags such parameters with `ds_id`)."""
    return hasattr(param, "ds_id")


def zero3_gather(params: list[torch.nn.Parameter]) -> AbstractContextManager:
    """DeepSpeed's context that all-gathers `params` on entry and re-partitions them on exit."""
    import deepspeed  # only reached when ZeRO-3 has partitioned the parameters, so it is installed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class _SharedGather:
    """One open DeepSpeed gather of a head's parameters and the forwards still using it."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.context = zero3_gather(params)
        self.users = 0


_open_gathers: dict[tuple[int, ...], _SharedGather] = {}


def _acquire(params: list[torch.nn.Parameter]) -> Callable[[], None]:
    """Gather `params` (or join the gather already open for them); returns this user's release,
    which may be called any number of times."""
    key = tuple(id(p) for p in params)
    gather = _open_gathers.get(key)
    if gather is None:
        gather = _SharedGather(params)
        gather.context.__enter__()
        _open_gathers[key] = gather
    gather.users += 1
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        gather.users -= 1
        if gather.users == 0:
            del _open_gathers[key]
            gather.context.__exit__(None, None, None)

    return release


class _ReleaseOnBackward:
    """A gradient hook on the head's input that releases the gather; it lives in the autograd graph,
    so a graph freed without a backward frees it too, and then releases (`weakref.finalize`)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release
        weakref.finalize(self, release)

    def __call__(self, grad: torch.Tensor) -> None:
        self.release()


@contextmanager
def head_gathered(head: torch.nn.Module, hidden: torch.Tensor) -> Iterator[None]:
    """Keep `head`'s partitioned parameters gathered for the head's forward and backward on `hidden`."""
    params = [p for p in head.parameters() if is_partitioned(p)]
    if not params:
        yield
        return
    release = _acquire(params)
    try:
        yield
    except BaseException:
        release()
        raise
    if torch.is_grad_enabled() and hidden.requires_grad:
        hidden.register_hook(_ReleaseOnBackward(release))
    else:
        release()
