"""The masked-only LM head: the patched forward against the model's own full-logits forward."""

from __future__ import annotations

import pytest
import torch

from sft import objective
from sft.config import ModelSettings
from sft.families.loader import load_model
from sft.prediction_head import enable_prediction_positions


@pytest.fixture
def model(qwen2_dir):
    return load_model(ModelSettings(name_or_path=str(qwen2_dir))).model


def masked_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    ids = torch.randint(4, 200, (3, 20))
    masked = torch.rand(3, 20) < 0.4
    masked[:, :3] = False
    return ids, masked, torch.where(masked, torch.full_like(ids, 3), ids)


def test_without_prediction_positions_the_forward_is_the_models_own(model):
    ids, _, _ = masked_batch()
    before = model(input_ids=ids).logits
    enable_prediction_positions(model)
    enable_prediction_positions(model)  # idempotent
    assert torch.equal(model(input_ids=ids).logits, before)


def test_prediction_positions_return_the_full_logits_at_those_positions(model):
    ids, masked, noisy = masked_batch(1)
    full = model(input_ids=noisy).logits
    enable_prediction_positions(model)
    rows, cols = masked.nonzero(as_tuple=True)
    logits = model(input_ids=noisy, prediction_positions=(rows, cols))
    assert logits.shape == (rows.numel(), full.shape[-1])
    assert torch.allclose(logits, full[rows, cols], atol=1e-6)


def test_masked_only_head_gives_the_full_logits_loss_and_gradients(model):
    enable_prediction_positions(model, chunk_size=7)  # several chunks, recomputed in backward
    ids, masked, noisy = masked_batch()
    weights = torch.rand(3, 20)
    rows, cols = masked.nonzero(as_tuple=True)
    source = objective.prediction_source(cols, cols, shift=True)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    full = objective.shift_logits(model(input_ids=noisy).logits)[rows, cols]
    ce_full = torch.nn.functional.cross_entropy(full, ids[rows, cols], reduction="none")
    reference = grads((ce_full * weights[rows, cols]).sum())
    ce = model(input_ids=noisy, prediction_positions=(rows, source), prediction_targets=ids[rows, cols])
    ours = grads((ce * weights[rows, cols]).sum())
    assert ours[0] == pytest.approx(reference[0], abs=1e-5)
    for a, b in zip(ours[1], reference[1]):
        assert torch.allclose(a, b, atol=1e-5)
