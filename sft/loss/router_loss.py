"""The auxiliary load-balancing loss of a mixture-of-experts router, for the fused forward.

transformers' MoE causal LMs (Mixtral, Qwen2-MoE, ...) add `router_aux_loss_coef · aux_loss` to their
loss when `config.output_router_logits` is set: `aux_loss` is the Switch Transformer load-balancing loss
over the router logits of every layer, computed by the model module's own `load_balancing_loss_func`
with the model's `num_experts` and `num_experts_per_tok`. The fused forward
(`sft.loss.prediction_head`) never runs the model's own forward, so it asks the decoder for the router
logits and adds the same term here. Dense models have no router and add nothing.
"""

from __future__ import annotations

import sys

import torch
from transformers import PreTrainedModel

from sft.errors import UserError


def has_router_loss(model: PreTrainedModel) -> bool:
    """Does the model's own forward add a router auxiliary loss (its config asks for router logits)?"""
    return bool(getattr(model.config, "output_router_logits", False))


def router_aux_loss(
    model: PreTrainedModel, router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """`router_aux_loss_coef · aux_loss` as the model's own forward computes it; `attention_mask` is the
    (batch, length) padding mask, or None when every position counts."""
    balance = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    if balance is None:
        raise UserError(
            f"{type(model).__name__} asks for router logits (output_router_logits) but its module has no "
            "load-balancing loss",
            key="model",
            expected="a transformers mixture-of-experts model, or output_router_logits false in its config",
        )
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    aux = balance(router_logits, model.num_experts, model.num_experts_per_tok, mask)
    return model.router_aux_loss_coef * aux
