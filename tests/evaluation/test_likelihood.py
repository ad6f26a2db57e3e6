"""The ELBO estimators of `sft.evaluation.likelihood` against the exact ELBO, enumerated over every
mask of a short continuation on a tiny model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import Qwen2ForCausalLM

from sft.evaluation.likelihood import (
    LikelihoodSettings,
    elbo_samples,
    mask_exactly,
    stratified_counts,
    summarize,
)
from tests.conftest import tiny_qwen2_config

MASK = 3


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, is_causal=False)).eval()


def exact_elbo(model, context: list[int], continuation: list[int]) -> float:
    """Σ_S g(S) · (|S|-1)!(L-|S|)!/L! over every non-empty masked set S of the continuation, where
    g(S) = Σ_{j in S} log p(x_j | context, continuation with S masked): the integral over t in
    (0, 1] of (1/t)·E[Σ_masked log p] (each token masked with probability t), done exactly."""
    total, length = 0.0, len(continuation)
    for size in range(1, length + 1):
        for subset in itertools.combinations(range(length), size):
            noisy = [MASK if i in subset else x for i, x in enumerate(continuation)]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([context + noisy])).logits[0].double()
            log_probs = logits.log_softmax(-1)
            g = sum(float(log_probs[len(context) + i - 1, continuation[i]]) for i in subset)  # shift
            total += g * math.factorial(size - 1) * math.factorial(length - size) / math.factorial(length)
    return total


def estimate(model, contexts, continuations, estimator: str, n: int, seed: int = 0) -> torch.Tensor:
    settings = LikelihoodSettings(mc_samples=n, seed=seed, t_min=1e-4, estimator=estimator)
    return elbo_samples(
        model,
        contexts,
        continuations,
        settings,
        mask_token_id=MASK,
        pad_token_id=0,
        shift=True,
        batch_size=512,
    )


def test_stratified_counts_are_stratified_over_1_to_L():
    lengths = torch.tensor([1, 3, 7])
    for seed in range(4):
        counts = stratified_counts(torch.arange(21)[:, None], 21, lengths[None, :], seed)
        for column, length in enumerate(lengths.tolist()):
            histogram = torch.bincount(counts[:, column], minlength=length + 1)
            assert histogram[0] == 0 and histogram.sum() == 21
            assert histogram[1:].tolist() == [21 // length] * length  # 21 samples share 1..L evenly


def test_mask_exactly_masks_that_many_maskable_tokens():
    maskable = torch.tensor([[False, True, True, True, True], [False, False, True, True, False]])
    uniforms = torch.rand(2, 5)
    masked = mask_exactly(maskable, uniforms, torch.tensor([3, 1]))
    assert masked.sum(1).tolist() == [3, 1] and not (masked & ~maskable).any()
    best = uniforms[1, 2:4].argmin() + 2
    assert masked[1].nonzero().flatten().tolist() == [int(best)]


def test_count_estimator_is_exact_for_a_one_token_continuation(model):
    contexts, continuations = [[5, 6, 7], [9, 4]], [[11], [20]]
    samples = estimate(model, contexts, continuations, "count", 16)
    for row, (context, continuation) in enumerate(zip(contexts, continuations)):
        exact = exact_elbo(model, context, continuation)
        assert torch.allclose(samples[row], torch.full((16,), exact, dtype=torch.float64), atol=1e-5)
    assert max(e.standard_error for e in summarize(samples)) < 1e-6
    bernoulli = summarize(estimate(model, contexts, continuations, "bernoulli", 16))
    assert min(e.standard_error for e in bernoulli) > 1e-3  # the Bernoulli one is not


def test_both_estimators_converge_to_the_exact_elbo(model):
    contexts = [[5, 6, 7], [9, 4], [12, 13, 14, 15]]
    continuations = [[11, 30, 8], [20, 21, 22], [40, 41, 42, 43]]
    exact = [exact_elbo(model, c, x) for c, x in zip(contexts, continuations)]
    for estimator in ("count", "bernoulli"):
        for row, result in enumerate(summarize(estimate(model, contexts, continuations, estimator, 2048))):
            assert abs(result.mean - exact[row]) < 4 * result.standard_error + 2e-3 * abs(exact[row]), (
                estimator,
                row,
                result,
                exact[row],
            )


def test_count_estimator_has_the_smaller_standard_error(model):
    contexts, continuations = [[5, 6, 7], [12, 13]], [[11, 30, 8, 9, 10], [40, 41, 42, 43, 44, 45]]
    count = summarize(estimate(model, contexts, continuations, "count", 128))
    bernoulli = summarize(estimate(model, contexts, continuations, "bernoulli", 128))
    for a, b in zip(count, bernoulli):
        assert a.standard_error < 0.5 * b.standard_error


def test_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="estimator must be one of count, bernoulli"):
        LikelihoodSettings(estimator="exact").check()
