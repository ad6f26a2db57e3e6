"""A forward that applies the LM head only at the positions the loss needs.

`enable_prediction_positions(model)` lets `model(input_ids, attention_mask,
prediction_positions=(rows, cols))` return logits of shape (N, V) for those N positions: the
backbone runs as usual, its hidden states are gathered at (rows, cols) and only those go through
the LM head, so a B×L×V logits tensor never exists. Without `prediction_positions` the model's
own forward runs unchanged (generation, evaluation of full logits).

It patches the forward on the model instance (as TRL does for its fused LM head) so that
DDP, FSDP and DeepSpeed, which wrap the model and call it, see one ordinary forward call.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel


def enable_prediction_positions(model: PreTrainedModel) -> None:
    """Patch `model.forward` in place (idempotent)."""
    if getattr(model, "_dlm_prediction_positions", False):
        return
    original_forward = model.forward

    def forward(
        *args: Any, prediction_positions: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any
    ) -> Any:
        if prediction_positions is None:
            return original_forward(*args, **kwargs)
        for unused in ("labels", "num_items_in_batch", "logits_to_keep", "use_cache"):
            kwargs.pop(unused, None)
        hidden = model.get_decoder()(*args, use_cache=False, **kwargs).last_hidden_state
        rows, cols = prediction_positions
        return model.get_output_embeddings()(hidden[rows, cols])

    model.forward = forward
    model._dlm_prediction_positions = True
