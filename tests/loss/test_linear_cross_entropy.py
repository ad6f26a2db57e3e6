"""The fused linear + cross-entropy against the full-logits loss: value and every gradient.

Tolerances: float32 ≤ 1e-5. bfloat16 inputs (matmuls in bf16, softmax and loss in fp32) against
the fp32 loss of the same bf16 values: loss within 0.5% relative, gradients within 2% of their
largest entry.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sft.loss.linear_cross_entropy import linear_cross_entropy

pytestmark = pytest.mark.smoke  # in `make test-min`

VOCAB, HIDDEN = 50, 16


def problem(n: int, bias: bool = True, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    hidden = torch.randn(n, HIDDEN).to(dtype).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN) * 0.5).to(dtype).requires_grad_()
    b = (torch.randn(VOCAB) * 0.1).to(dtype).requires_grad_() if bias else None
    return hidden, weight, b, torch.randint(0, VOCAB, (n,)), torch.rand(n) * 2


def full_logits_loss(hidden, weight, bias, targets, token_weights):
    """The plain path: every logit in float32, then the weighted cross-entropy."""
    logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    return (F.cross_entropy(logits, targets, reduction="none") * token_weights).sum()


def loss_and_grads(fn, hidden, weight, bias, targets, token_weights, scale=2.5):
    inputs = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    loss = fn(hidden, weight, bias, targets, token_weights)
    return loss.detach(), torch.autograd.grad(loss * scale, inputs)


@pytest.mark.parametrize("n, chunk", [(37, 8), (40, 8), (37, 37), (37, 64), (5, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_every_gradient_match_the_full_logits_path(n, chunk, bias):
    data = problem(n, bias)
    expected = loss_and_grads(full_logits_loss, *data)
    fused = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_size=chunk), *data)
    torch.testing.assert_close(fused[0], expected[0], rtol=1e-6, atol=1e-5)
    assert len(fused[1]) == (3 if bias else 2)
    for ours, reference in zip(fused[1], expected[1]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_a_frozen_head_gets_no_weight_gradient_and_the_same_hidden_gradient():
    hidden, weight, bias, targets, token_weights = problem(29, bias=False)
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, None, targets, token_weights, chunk_size=8)
    loss.backward()
    reference = torch.autograd.grad(full_logits_loss(hidden, weight, None, targets, token_weights), hidden)[0]
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad, reference, rtol=0, atol=1e-5)


def test_no_masked_positions_give_zero_loss_and_zero_gradients():
    hidden, weight, bias, targets, token_weights = problem(0)
    loss = linear_cross_entropy(hidden, weight, bias, targets, token_weights)
    loss.backward()
    assert loss.item() == 0.0
    # every input gets a (zero) gradient, so data-parallel gradient hooks fire on every rank
    assert hidden.grad.shape == (0, HIDDEN)
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def test_zero_weights_drop_positions_from_loss_and_gradients():
    hidden, weight, bias, targets, token_weights = problem(12)
    token_weights[::2] = 0
    loss = linear_cross_entropy(hidden, weight, bias, targets, token_weights, chunk_size=5)
    loss.backward()
    assert torch.count_nonzero(hidden.grad[::2]) == 0 and torch.count_nonzero(hidden.grad[1::2]) > 0
    kept = full_logits_loss(hidden[1::2], weight, bias, targets[1::2], token_weights[1::2])
    torch.testing.assert_close(loss.detach(), kept.detach(), rtol=1e-6, atol=1e-5)


def test_bfloat16_inputs_stay_within_the_stated_tolerance():
    data = problem(37, dtype=torch.bfloat16)
    expected = loss_and_grads(full_logits_loss, *data)
    fused = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_size=8), *data)
    assert fused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], expected[0], rtol=5e-3, atol=0)
    for ours, reference, tensor in zip(fused[1], expected[1], data[:3]):
        assert ours.dtype == tensor.dtype == torch.bfloat16
        assert (ours.float() - reference.float()).abs().max() <= 2e-2 * reference.float().abs().max()


def test_under_autocast_fp32_weights_get_fp32_gradients_from_bf16_matmuls():
    hidden, weight, bias, targets, token_weights = problem(37)
    expected = loss_and_grads(full_logits_loss, hidden, weight, bias, targets, token_weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, hidden, weight, bias, targets, token_weights)
    assert all(g.dtype == torch.float32 for g in fused[1])
    torch.testing.assert_close(fused[0], expected[0], rtol=5e-3, atol=0)
    for ours, reference in zip(fused[1], expected[1]):
        assert (ours - reference).abs().max() <= 2e-2 * reference.abs().max()


def test_without_grad_mode_only_the_loss_is_computed():
    data = problem(37)
    with torch.no_grad():
        loss = linear_cross_entropy(*data, chunk_size=8)
        expected = full_logits_loss(*data)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)


LOSS_SCALE = 2.0**16  # DeepSpeed's initial fp16 loss scale; GradScaler's default too


def scaled_fp16_step(fn, hidden, weight, targets, token_weights, autocast: bool):
    """One fp16 step as a GradScaler runs it: backward of loss·2^16, then the gradients unscaled
    in float32. `autocast`: float32 weight and hidden under fp16 autocast; else pure float16."""
    if not autocast:
        hidden, weight = (t.detach().half().requires_grad_() for t in (hidden, weight))
    with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
        loss = fn(hidden, weight, None, targets, token_weights)
    (loss * LOSS_SCALE).backward()
    return [t.grad.float() / LOSS_SCALE for t in (hidden, weight)]


@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "pure_fp16"])
def test_float16_gradients_survive_a_2_16_loss_scale_as_the_plain_head_does(autocast):
    """A large vocabulary and 1/N token weights put w·softmax below float16's smallest number."""
    torch.manual_seed(0)
    vocab, hidden_size, n = 8192, 32, 64
    hidden = torch.randn(n, hidden_size).requires_grad_()
    weight = (torch.randn(vocab, hidden_size) * 0.05).requires_grad_()
    targets, token_weights = torch.randint(0, vocab, (n,)), torch.full((n,), 1 / 4096)
    exact = torch.autograd.grad(
        full_logits_loss(hidden, weight, None, targets, token_weights), [hidden, weight]
    )

    def plain_head(h, w, b, y, tw):  # what a Trainer without the fused head computes under fp16
        return (F.cross_entropy(F.linear(h, w).float(), y, reduction="none") * tw).sum()

    def fused_head(h, w, b, y, tw):
        return linear_cross_entropy(h, w, b, y, tw, chunk_size=16)

    def fresh():
        return [t.detach().clone().requires_grad_() for t in (hidden, weight)]

    plain = scaled_fp16_step(plain_head, *fresh(), targets, token_weights, autocast)
    ours = scaled_fp16_step(fused_head, *fresh(), targets, token_weights, autocast)
    for got, reference, expected in zip(ours, plain, exact):
        assert torch.isfinite(got).all()
        lost = (got == 0) & (expected != 0)
        assert lost.float().mean() <= max((reference == 0).float().mean().item(), 1e-3)
        scale = expected.abs().max()
        assert (got - expected).abs().max() <= max((reference - expected).abs().max(), 1e-2 * scale)
