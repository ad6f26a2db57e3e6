"""A forward that applies the LM head only at the positions the loss needs.

`enable_prediction_positions(model)` adds two keyword arguments to `model(...)`:
`prediction_positions=(rows, cols)` makes it return logits of shape (N, V) for those N positions
only — the backbone runs as usual, its hidden states are gathered at (rows, cols) and only those go
through the LM head; adding `prediction_targets` (N,) makes it return the per-position
cross-entropy (N,) instead, computed in chunks whose logits are recomputed in the backward pass
(`objective.chunked_cross_entropy`). Either way a B×L×V logits tensor never exists. Without these
arguments the model's own forward runs unchanged (generation, full logits).

It patches the forward on the model instance (as TRL does for its fused LM head) so that
DDP, FSDP and DeepSpeed, which wrap the model and call it, see one ordinary forward call.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from sft.engine_gather import head_gathered
from sft.objective import HEAD_CHUNK_TOKENS, chunked_cross_entropy


def enable_prediction_positions(model: PreTrainedModel, chunk_size: int = HEAD_CHUNK_TOKENS) -> None:
    """Patch `model.forward` in place (idempotent)."""
    if getattr(model, "_dlm_prediction_positions", False):
        return
    original_forward = model.forward

    def forward(
        *args: Any,
        prediction_positions: tuple[torch.Tensor, torch.Tensor] | None = None,
        prediction_targets: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if prediction_positions is None:
            return original_forward(*args, **kwargs)
        for unused in ("labels", "num_items_in_batch", "logits_to_keep", "use_cache", "return_dict"):
            kwargs.pop(unused, None)
        hidden = model.get_decoder()(*args, use_cache=False, **kwargs).last_hidden_state
        rows, cols = prediction_positions
        selected = hidden[rows, cols]
        head = model.get_output_embeddings()
        with head_gathered(head, selected):  # one gather of a ZeRO-3-sharded head (sft/engine_gather.py)
            if prediction_targets is None:
                return head(selected)
            # the weight itself, not the module: an engine's per-call module hooks never run per chunk
            linear = partial(F.linear, weight=head.weight, bias=head.bias)
            return chunked_cross_entropy(selected, linear, prediction_targets, chunk_size)

    model.forward = forward
    model._dlm_prediction_positions = True
