"""The LM head and its weighted cross-entropy fused into one pass over chunks of positions.

    loss = Σ_n w_n · CE(h_n Wᵀ + b, y_n)        h: (N, H) hidden states, W: (V, H), b: (V,) or None

For `chunk_size` positions at a time: the logits z = h Wᵀ + b (matmul 1), their softmax p and
logsumexp in float32, the loss terms w·(logsumexp(z) - z_y), and the gradient w.r.t. the logits
g = w·(p - onehot(y)), from which ∂loss/∂h = g W (matmul 2) and ∂loss/∂W += gᵀ h (matmul 3,
skipped when W is frozen, e.g. under LoRA), ∂loss/∂b += Σ g. These gradients are computed in the
forward pass and kept; the backward pass only scales them by the incoming gradient. So one chunk
of logits exists at a time, nothing is recomputed, and each position costs three vocabulary-sized
matmuls (two with a frozen head), the minimum. Pure torch: runs wherever torch does.

Precision: the matmuls run in the inputs' dtype (under autocast, the autocast dtype); softmax,
logsumexp and the loss accumulate in float32. ∂loss/∂W accumulates in W's dtype (float32 master
weights under autocast). The weights w are constants (no gradient flows to them).
float16 is the exception for the gradients: they are computed in the forward, before the loss
scale (GradScaler, DeepSpeed's 2^16) is known, and w·softmax of a large vocabulary lies mostly
below float16's smallest number. So under float16 the gradient matmuls (2 and 3) run in float32
(with W's float32 master copy under autocast; a float32 copy of a float16 W otherwise), the
gradients are kept in float32 and the backward casts them to the inputs' dtypes only after
multiplying by the incoming (scaled) gradient.
"""

from __future__ import annotations

import torch

HEAD_CHUNK_TOKENS = 512
"""Positions per chunk: 512 × a 152k vocabulary of float32 logits is ~0.3 GB."""


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    chunk_size: int = HEAD_CHUNK_TOKENS,
) -> torch.Tensor:
    """Σ_n token_weights_n · CE(hidden_n Wᵀ + b, targets_n): a float32 scalar (0 when N = 0).

    `hidden` (N, H), `weight` (V, H), `bias` (V,) or None, `targets` (N,) class ids, `token_weights`
    (N,). Differentiable w.r.t. hidden, weight and bias, once (no `retain_graph` double backward)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden, weight, bias, targets, token_weights, chunk_size, compute_dtype, torch.is_grad_enabled()
        )


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        token_weights: torch.Tensor,
        chunk_size: int,
        compute_dtype: torch.dtype,
        grad_enabled: bool,
    ) -> torch.Tensor:
        want_hidden, want_weight, want_bias = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        grad_dtype = torch.float32 if compute_dtype == torch.float16 else compute_dtype
        w_grad = w if grad_dtype == compute_dtype else weight.to(grad_dtype)
        weight_grad_dtype = torch.float32 if compute_dtype == torch.float16 else weight.dtype
        grad_hidden = torch.empty_like(hidden, dtype=grad_dtype) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=weight_grad_dtype) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, y, tw = hidden[rows].to(compute_dtype), targets[rows], token_weights[rows].float()
            logits = (h @ w.T if b is None else torch.addmm(b, h, w.T)).float()
            target_logit = logits.gather(1, y[:, None]).squeeze(1)
            row_max = logits.amax(dim=1, keepdim=True)
            exp = logits.sub_(row_max).exp_()  # in place: one chunk of logits at a time
            total = exp.sum(dim=1)
            loss += (tw * (row_max.squeeze(1) + total.log() - target_logit)).sum()
            if not (want_hidden or want_weight or want_bias):
                continue
            grad_logits = exp.mul_((tw / total)[:, None])  # w·softmax
            grad_logits[torch.arange(y.shape[0], device=y.device), y] -= tw  # w·(softmax - onehot)
            if want_bias:
                grad_bias += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(grad_dtype)
            if want_hidden:
                grad_hidden[rows] = grad_logits @ w_grad
            if want_weight:
                h = h.to(grad_dtype)
                if grad_weight.dtype == grad_dtype:
                    grad_weight.addmm_(grad_logits.T, h)
                else:
                    grad_weight += grad_logits.T @ h
        ctx.gradients = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor) -> tuple:
        if ctx.gradients is None:
            raise RuntimeError("linear_cross_entropy hands over its gradients once (no retain_graph)")
        gradients = [
            None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype)
            for g, dtype in zip(ctx.gradients, ctx.dtypes)
        ]
        ctx.gradients = None
        return (*gradients, None, None, None, None, None)
