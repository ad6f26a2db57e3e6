"""A forward that returns the masked-diffusion loss, applying the LM head only where the loss needs it.

`enable_prediction_positions(model)` adds three keyword arguments to `model(...)`:
`prediction_positions=(rows, cols)`, `prediction_targets` (N,) and `prediction_weights` (N,). With
them the backbone runs as usual, its hidden states are gathered at the N positions (rows, cols) and
the model returns Σ_n weight_n · CE(head(hidden_n), target_n), a scalar, computed by the fused
linear + cross-entropy (`sft.loss.linear_cross_entropy`): a B×L×V logits tensor never exists, nor more
than one chunk of N×V. A mixture-of-experts model whose own forward adds its router's auxiliary loss
gets it added here too (`sft.loss.router_loss`), times `router_loss_weight` (the trainer's share of one
micro-batch in the optimizer step). Without these arguments the model's own forward runs unchanged
(generation, full logits).

It patches the forward on the model instance (as TRL does for its fused LM head) so that
DDP, FSDP and DeepSpeed, which wrap the model and call it, see one ordinary forward call. The head
computation is one call, `head_loss`, inside one ZeRO-3 gather of the head (`sft.loss.engine_gather`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from sft.loss.engine_gather import head_gathered
from sft.loss.linear_cross_entropy import HEAD_CHUNK_TOKENS, linear_cross_entropy
from sft.loss.router_loss import has_router_loss, router_aux_loss


def head_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    chunk_size: int = HEAD_CHUNK_TOKENS,
) -> torch.Tensor:
    """Σ_n token_weights_n · CE(head(hidden_n), targets_n) for the LM head module `head`: its own
    weight, tied or not, or the trained copy under LoRA's `modules_to_save` (TRL's SFTTrainer
    refuses LoRA adapters on the head itself, which a weight read directly would ignore)."""
    return linear_cross_entropy(hidden, head.weight, head.bias, targets, token_weights, chunk_size)


def enable_prediction_positions(model: PreTrainedModel, chunk_size: int = HEAD_CHUNK_TOKENS) -> None:
    """Patch `model.forward` in place (idempotent)."""
    if getattr(model, "_dlm_prediction_positions", False):
        return
    original_forward = model.forward

    def forward(
        *args: Any,
        prediction_positions: tuple[torch.Tensor, torch.Tensor] | None = None,
        prediction_targets: torch.Tensor | None = None,
        prediction_weights: torch.Tensor | None = None,
        router_loss_weight: float = 1.0,
        **kwargs: Any,
    ) -> Any:
        if prediction_positions is None:
            return original_forward(*args, **kwargs)
        for unused in ("labels", "num_items_in_batch", "logits_to_keep", "use_cache", "return_dict"):
            kwargs.pop(unused, None)
        routed = has_router_loss(model)
        router = {"output_router_logits": True} if routed else {}
        outputs = model.get_decoder()(*args, use_cache=False, **router, **kwargs)
        rows, cols = prediction_positions
        head = model.get_output_embeddings()
        selected = outputs.last_hidden_state[rows, cols]
        with head_gathered(head, selected):  # one gather of a ZeRO-3-sharded head (sft/loss/engine_gather.py)
            loss = head_loss(selected, head, prediction_targets, prediction_weights, chunk_size)
        if routed:
            aux = router_aux_loss(model, outputs.router_logits, kwargs.get("attention_mask"))
            loss = loss + router_loss_weight * aux.to(loss.dtype)
        return loss

    model.forward = forward
    model._dlm_prediction_positions = True
