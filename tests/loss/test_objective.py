"""The objective's pure functions against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from sft.loss import noise, objective

pytestmark = pytest.mark.smoke  # in `make test-min`


def brute_force_cart(clean: torch.Tensor, p: float) -> torch.Tensor:
    batch, length = clean.shape
    out = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        for j in range(length):
            if clean[b, j]:
                continue
            out[b, j] = sum(
                0.5 * p * (1 - p) ** (abs(i - j) - 1) for i in range(length) if i != j and clean[b, i]
            )
    return out.float()


def test_cart_weights_match_spec_check_values():
    length = 300
    single = torch.ones(1, length, dtype=torch.bool)
    single[0, 150] = False
    assert objective.cart_weights(single, 0.1)[0, 150].item() == pytest.approx(1.0, abs=1e-6)

    whole_response = torch.zeros(1, length, dtype=torch.bool)
    whole_response[0, :150] = True  # a long prompt, then the fully masked response
    w = objective.cart_weights(whole_response, 0.1)[0]
    assert w[150].item() == pytest.approx(0.5, abs=1e-6)
    assert w[160].item() == pytest.approx(0.17, abs=5e-3)  # the 11th response token
    assert w[200].item() == pytest.approx(2.6e-3, abs=5e-5)  # the 51st
    assert w[:150].abs().max().item() == 0.0  # clean positions get no weight


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_cart_weights_equal_the_double_sum(p):
    torch.manual_seed(0)
    clean = torch.rand(3, 40) < 0.5
    assert torch.allclose(objective.cart_weights(clean, p), brute_force_cart(clean, p), atol=1e-6)


def test_cart_weights_ignore_positions_that_are_not_clean():
    clean = torch.tensor([[True, True, False, False, False, False]])
    # positions 4, 5 could be padding: they are not clean, so they give no context
    w = objective.cart_weights(clean, 0.5)
    assert w[0, 2].item() == pytest.approx(0.25 * (1 + 0.5))


def test_prompt_tokens_are_never_masked_over_many_draws():
    ids = torch.arange(20).repeat(64, 1)
    maskable = torch.zeros(64, 20, dtype=torch.bool)
    maskable[:, 8:] = True
    for step in range(50):
        keys = noise.example_keys(0, step, torch.arange(64))
        t = noise.sample_t(keys, 1e-3)
        u = noise.token_uniforms(keys[:, None], torch.arange(20))
        noisy, masked = noise.mask_tokens(ids, maskable, t[:, None], u, mask_token_id=99)
        assert not masked[:, :8].any()
        assert torch.equal(noisy[:, :8], ids[:, :8])
        assert torch.equal(noisy[masked], torch.full_like(noisy[masked], 99))
    assert masked[:, 8:].any()


def test_mask_rate_follows_t():
    keys = noise.example_keys(1, 0, torch.arange(4))
    t = torch.tensor([0.0, 0.25, 0.75, 1.0])
    u = noise.token_uniforms(keys[:, None], torch.arange(4000))
    _, masked = noise.mask_tokens(
        torch.zeros(4, 4000, dtype=torch.long), torch.ones(4, 4000, dtype=torch.bool), t[:, None], u, 1
    )
    rates = masked.float().mean(1)
    assert rates[0] == 0 and rates[3] == 1
    assert rates[1].item() == pytest.approx(0.25, abs=0.03)
    assert rates[2].item() == pytest.approx(0.75, abs=0.03)


def test_sample_t_respects_t_min_and_is_uniform():
    t = noise.sample_t(noise.example_keys(0, 0, torch.arange(20000)), 0.2)
    assert t.min() >= 0.2 and t.max() < 1.0
    assert t.mean().item() == pytest.approx(0.6, abs=0.01)


def test_noise_of_an_example_depends_only_on_seed_step_id_and_position():
    ids = torch.tensor([5, 9, 2, 7])
    keys = noise.example_keys(3, 11, ids)
    alone = noise.example_keys(3, 11, ids[2:3])
    assert keys[2] == alone[0]
    u_full = noise.token_uniforms(keys[:, None], torch.arange(30))
    u_short = noise.token_uniforms(alone[:, None], torch.arange(10))
    assert torch.equal(u_full[2, :10], u_short[0])
    assert not torch.equal(noise.example_keys(3, 12, ids), keys)  # a new step, new noise


def test_shift_aligns_logits_of_position_i_minus_1_with_token_i():
    logits = torch.arange(5.0).view(1, 5, 1)
    shifted = objective.shift_logits(logits)
    assert shifted.flatten().tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]
    cols = torch.tensor([0, 1, 4, 6])
    positions = torch.tensor([0, 1, 4, 0])  # column 6 starts a second packed document
    assert objective.prediction_source(cols, positions, shift=True).tolist() == [0, 0, 3, 6]
    assert objective.prediction_source(cols, positions, shift=False).tolist() == [0, 1, 4, 6]


def test_token_weights_per_scheme():
    t = torch.tensor([[0.25, 0.25, 0.25], [0.5, 0.5, 0.5]])
    clean = torch.zeros(2, 3, dtype=torch.bool)
    doc_ids, positions = torch.tensor([[0] * 3, [1] * 3]), torch.arange(3).repeat(2, 1)

    def weights(scheme):
        return objective.token_weights(scheme, t, clean, doc_ids, positions, 2)

    assert weights("inv_t")[:, 0].tolist() == [4.0, 2.0]
    assert weights("linear")[:, 0].tolist() == [0.75, 0.5]
    assert weights("uniform").unique().tolist() == [1.0]
    with pytest.raises(ValueError):
        weights("bogus")


def test_cart_weights_of_packed_documents_ignore_their_neighbours():
    # two documents in one row: [clean, masked, masked] and [clean, clean, masked]
    clean = torch.tensor([[True, False, False, True, True, False]])
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    packed = objective.token_weights("cart", torch.ones(1, 6), clean, doc_ids, positions, 2, cart_p=0.5)
    alone = objective.cart_weights(torch.tensor([[True, False, False], [True, True, False]]), 0.5)
    assert torch.allclose(packed[0], alone.flatten())


def test_tail_as_one_shares_one_weight_among_each_documents_masked_tail_tokens():
    masked = torch.tensor([[False, True, True, True, False, True]])
    tail = torch.tensor([[False, False, True, True, True, True]])
    doc_ids = torch.zeros(1, 6, dtype=torch.long)
    factor = objective.eos_tail_factor(masked, tail, doc_ids, 1, tail_as_one=True)
    # three masked tail tokens -> each 1/3; response tokens keep 1
    assert factor[0].tolist() == pytest.approx([1, 1, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert (factor[0] * masked[0])[tail[0]].sum().item() == pytest.approx(1.0)
    assert objective.eos_tail_factor(masked, tail, doc_ids, 1, tail_as_one=False).unique().tolist() == [1.0]
    two_docs = torch.tensor([[0, 0, 0, 1, 1, 1]])  # tails of two packed documents are shared apart
    factor = objective.eos_tail_factor(masked, tail, two_docs, 2, tail_as_one=True)
    assert factor[0].tolist() == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5])


def test_normalization_denominators():
    supervised = torch.tensor([4.0, 2.0])
    assert objective.doc_denominator(supervised, "supervised").tolist() == [4.0, 2.0]
    assert objective.doc_denominator(supervised, "sequence").tolist() == [1.0, 1.0]
    assert objective.doc_loss_scale(supervised, "sequence").tolist() == [0.25, 0.5]


def test_grid_t_is_deterministic_and_covers_the_grid():
    t = noise.grid_t(torch.arange(8), 4, 0.0)
    assert t.tolist() == [0.125, 0.375, 0.625, 0.875] * 2
