"""Monte-Carlo ELBO estimate of log p(continuation | context) for a masked diffusion LM.

A masked diffusion LM has no exact likelihood; Dream and LLaDA score multiple-choice benchmarks
with the training objective's evidence lower bound, estimated by Monte Carlo:

    log p(x | c) >= E_t E_mask [ Σ_{j masked} (1/t) · log p_θ(x_j | c, x_masked) ]
                  = E_{l ~ U{1..L}} E_{|S| = l} [ (L/l) · Σ_{j in S} log p_θ(x_j | c, x_{not S}) ]

(L = the continuation's length; the second form is LLaDA's, their eq. (14).) Two estimators:

- `count` (default; LLaDA's `get_log_likelihood`): each sample takes a count l in 1..L and masks
  exactly l continuation tokens uniformly at random, weight L/l. The n counts are stratified,
  l_s = 1 + ⌊L · ((s + v)/n mod 1)⌋ with one offset v per seed (LLaDA spreads its batch's l the
  same way), and the masked set is the l tokens with the smallest counter-based uniforms. For a
  1-token continuation every sample is the exact log p.
- `bernoulli` (Dream's): each sample takes a time t and masks every continuation token with
  probability t, weight 1/t. `grid_t` spreads the n times evenly over [t_min, 1] (stratified).
  Its standard error is several times larger (docs/evaluation.md has measurements).

The context is never masked. The pieces are the training objective's own (`sft.loss.objective`):
`example_keys`/`token_uniforms`/`mask_tokens` draw the masks, `prediction_source` applies the
shift. The noise is counter-based on (seed, sample index, position in the continuation) and the
same for every request (common random numbers), so a request's estimate does not depend on
batching, order or which other requests are scored, and answer choices of one question are
compared under the same masks.

Each estimate comes with the variance of its n samples (report it: a 128-sample ELBO is noisy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from sft.loss import noise, objective
from sft.loss.prediction_head import head_loss
from sft.sampling.sampler import left_pad

Estimator = Literal["count", "bernoulli"]
ESTIMATORS = ("count", "bernoulli")


@dataclass
class LikelihoodSettings:
    """How the ELBO is estimated: `mc_samples` samples per request (Dream and LLaDA use 128) by
    `estimator` (`count`: exactly l of L tokens masked, weight L/l; `bernoulli`: times on a grid
    over [t_min, 1], weight 1/t), masks from `seed`. `t_min` is only read by `bernoulli`."""

    mc_samples: int = 128
    seed: int = 0
    t_min: float = 1e-3
    estimator: Estimator = "count"

    def check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if not 0 <= self.t_min < 1:
            raise ValueError(f"t_min must be in [0, 1), got {self.t_min}")


@dataclass
class ElboEstimate:
    """One request's estimate: the mean of its samples (nats, a lower bound on log p) and their spread."""

    mean: float
    variance: float  # unbiased sample variance of the per-sample ELBOs
    samples: int

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.variance / self.samples)


def stratified_counts(sample_ids: torch.Tensor, n: int, lengths: torch.Tensor, seed: int) -> torch.Tensor:
    """How many tokens each sample masks: l = 1 + ⌊L · ((s + v)/n mod 1)⌋ in 1..L, stratified over the
    n samples s, with one offset v in [0, 1) per seed. `sample_ids` and `lengths` (L) broadcast."""
    first = torch.zeros(1, dtype=torch.long)
    offset = noise.token_uniforms(noise.example_keys(seed, 1, first), first)
    fraction = torch.remainder((sample_ids.to(torch.float64) + offset.double()) / n, 1.0)
    highest = (lengths - 1).clamp(min=0)
    return 1 + torch.minimum(torch.floor(lengths.to(torch.float64) * fraction).long(), highest)


def mask_exactly(maskable: torch.Tensor, uniforms: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, the `counts` maskable positions with the smallest uniforms (B, L) bool: a uniformly
    random subset of that size."""
    keyed = torch.where(maskable, uniforms, torch.full_like(uniforms, 2.0))
    rank = keyed.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
    return maskable & (rank < counts[:, None])


def elbo_samples(
    model: PreTrainedModel,
    contexts: list[list[int]],
    continuations: list[list[int]],
    settings: LikelihoodSettings,
    *,
    mask_token_id: int,
    pad_token_id: int,
    shift: bool,
    batch_size: int = 32,
) -> torch.Tensor:
    """Per-sample ELBOs (requests, mc_samples), float64: Σ over masked continuation tokens of
    weight·log p (L/l or 1/t, see the module docstring). Rows (request × sample) go through the
    model `batch_size` at a time."""
    settings.check()
    device = next(model.parameters()).device
    n = settings.mc_samples
    sample_ids = torch.arange(n)
    times = noise.grid_t(sample_ids, n, settings.t_min)
    keys = noise.example_keys(settings.seed, 0, sample_ids)
    jobs = [(r, s) for r in range(len(contexts)) for s in range(n)]
    out = torch.zeros(len(contexts), n, dtype=torch.float64)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        rows = [contexts[r] + continuations[r] for r, _ in chunk]
        ids, attention = left_pad(rows, pad_token_id)
        width = ids.shape[1]
        cols = torch.arange(width)[None, :]
        pad = width - torch.tensor([len(row) for row in rows])[:, None]
        positions = (cols - pad).clamp(min=0)  # position within the row's own sequence
        first_target = width - torch.tensor([len(continuations[r]) for r, _ in chunk])[:, None]
        maskable = cols >= first_target
        samples = torch.tensor([s for _, s in chunk])
        uniforms = noise.token_uniforms(keys[samples][:, None], cols - first_target)
        if settings.estimator == "count":
            lengths = torch.tensor([len(continuations[r]) for r, _ in chunk])
            counts = stratified_counts(samples, n, lengths, settings.seed)
            masked = mask_exactly(maskable, uniforms, counts)
            noisy = torch.where(masked, torch.full_like(ids, mask_token_id), ids)
            weights = (lengths / counts).float()[:, None].expand(ids.shape)
        else:
            t = times[samples][:, None].expand(ids.shape)
            noisy, masked = noise.mask_tokens(ids, maskable, t, uniforms, mask_token_id)
            weights = objective.token_weights("inv_t", t, ~masked, None, None, 0)
        rows_idx, cols_idx = masked.nonzero(as_tuple=True)
        source = objective.prediction_source(cols_idx, positions[rows_idx, cols_idx], shift)
        per_row = -masked_weighted_ce(
            model,
            noisy.to(device),
            attention.to(device),
            positions.to(device),
            (rows_idx.to(device), source.to(device)),
            ids[rows_idx, cols_idx].to(device),
            weights[rows_idx, cols_idx].to(device),
            len(chunk),
        )
        for i, (r, s) in enumerate(chunk):
            out[r, s] = per_row[i]
    return out


@torch.no_grad()
def masked_weighted_ce(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    positions: tuple[torch.Tensor, torch.Tensor],
    targets: torch.Tensor,
    weights: torch.Tensor,
    n_rows: int,
) -> torch.Tensor:
    """Per row of the batch, Σ weight · CE(head(hidden at `positions`), target), float64 on the CPU.

    The backbone runs once; the LM head only at the N positions, through the trainer's own fused
    head loss (`sft.loss.prediction_head.head_loss`), one row at a time. (LoRA layers live inside the
    base model's modules, so the base's decoder and head are the adapted ones.)"""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    hidden = base.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    rows, cols = positions
    selected = hidden[rows, cols]
    head = base.get_output_embeddings()
    totals = torch.zeros(n_rows, dtype=torch.float64)
    for row in rows.unique().tolist():
        at = rows == row
        totals[row] = float(head_loss(selected[at], head, targets[at], weights[at].float()))
    return totals


def summarize(samples: torch.Tensor) -> list[ElboEstimate]:
    """Mean and sample variance of each request's row of `elbo_samples`."""
    n = samples.shape[1]
    variances = samples.var(dim=1, unbiased=True) if n > 1 else torch.zeros(samples.shape[0])
    return [ElboEstimate(float(m), float(v), n) for m, v in zip(samples.mean(dim=1), variances)]
