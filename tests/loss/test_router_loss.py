"""A mixture-of-experts model's router auxiliary loss reaches the fused forward's loss and gradients
(sft/loss/router_loss.py), as in the model's own forward, on tiny real transformers MoE models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from sft.loss.prediction_head import enable_prediction_positions

SHAPE = dict(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
ROUTER = dict(num_experts_per_tok=2, router_aux_loss_coef=0.5)


def qwen2_moe(output_router_logits: bool) -> Qwen2MoeForCausalLM:
    config = Qwen2MoeConfig(
        **SHAPE,
        **ROUTER,
        num_experts=4,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        output_router_logits=output_router_logits,
    )
    return Qwen2MoeForCausalLM(config)


def mixtral(output_router_logits: bool) -> MixtralForCausalLM:
    experts = dict(num_local_experts=4, intermediate_size=16, output_router_logits=output_router_logits)
    return MixtralForCausalLM(MixtralConfig(**SHAPE, **ROUTER, **experts))


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SHAPE["vocab_size"], (3, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: the router loss skips it, as the model's own forward does
    rows, cols = torch.tensor([0, 1, 1, 2, 2]), torch.tensor([5, 2, 9, 0, 7])
    weights = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15])
    return {"input_ids": ids, "attention_mask": mask, "rows": rows, "cols": cols, "weights": weights}


def fused_loss(model: torch.nn.Module, data: dict, **kwargs) -> torch.Tensor:
    enable_prediction_positions(model)
    return model(
        input_ids=data["input_ids"],
        attention_mask=data["attention_mask"],
        prediction_positions=(data["rows"], data["cols"]),
        prediction_targets=data["input_ids"][data["rows"], data["cols"]],
        prediction_weights=data["weights"],
        **kwargs,
    )


def reference_loss(model: torch.nn.Module, data: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weighted CE on the model's own full logits, and the router term its own forward computes."""
    out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    logits = out.logits[data["rows"], data["cols"]]
    targets = data["input_ids"][data["rows"], data["cols"]]
    ce = (F.cross_entropy(logits.float(), targets, reduction="none") * data["weights"]).sum()
    aux = None if out.aux_loss is None else model.config.router_aux_loss_coef * out.aux_loss
    return ce, aux


def router_grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for n, p in model.named_parameters() if "gate.weight" in n and "proj" not in n]


@pytest.mark.parametrize("make", [qwen2_moe, mixtral], ids=["qwen2_moe", "mixtral"])
def test_the_router_aux_loss_reaches_the_fused_loss_and_its_gradients(make):
    torch.manual_seed(0)
    model, data = make(output_router_logits=True), batch()
    ce, aux = reference_loss(model, data)
    assert aux is not None and aux.item() > 0
    expected_grads = router_grads(model, ce + aux)
    without_aux = router_grads(model, reference_loss(model, data)[0])

    loss = fused_loss(model, data)
    assert torch.allclose(loss, ce + aux, atol=1e-5) and not torch.allclose(loss, ce, atol=1e-3)
    grads = router_grads(model, loss)
    assert grads and all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected_grads))
    assert not all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, without_aux))

    scaled = fused_loss(model, data, router_loss_weight=0.25)  # one micro-batch's share of a step
    assert torch.allclose(scaled, ce + 0.25 * aux, atol=1e-5)


def test_a_moe_model_without_router_logits_adds_nothing_as_its_own_forward():
    torch.manual_seed(0)
    model, data = qwen2_moe(output_router_logits=False), batch()
    ce, aux = reference_loss(model, data)
    assert aux is None
    assert torch.allclose(fused_loss(model, data), ce, atol=1e-5)
