"""Complementary masks (`diffusion.complementary`): the pair against hand-computed expectations and
the trainer's loss against a reference that runs each half alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sft.loss import noise, objective
from sft.recipe import build_run_config
from sft.training.run import build_trainer
from tests.conftest import recipe_dict


def one_row_batch(length: int = 12, prompt: int = 4, docs: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.arange(docs * length).view(docs, length) % 50 + 5
    maskable = torch.zeros(docs, length, dtype=torch.bool)
    maskable[:, prompt:] = True
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(docs, length, dtype=torch.long),
        "doc_ids": torch.arange(docs)[:, None].expand(docs, length).clone(),
        "positions": torch.arange(length).repeat(docs, 1),
        "maskable": maskable,
        "tail": torch.zeros(docs, length, dtype=torch.bool),
        "example_ids": torch.arange(docs),
        "supervised": torch.full((docs,), float(length - prompt)),
    }


def paired_noise(
    batch: dict, step: int, weighting: str, t_min: float = 1e-3
) -> tuple[dict, objective.NoisedBatch]:
    doubled, complement = objective.complementary_pairs(batch)
    keys = noise.example_keys(0, step, doubled["example_ids"])
    t = noise.sample_pair_t(keys, t_min)
    noised = objective.add_noise(
        doubled["input_ids"],
        doubled["maskable"],
        doubled["tail"],
        doubled["doc_ids"],
        doubled["positions"],
        t,
        keys,
        mask_token_id=99,
        weighting=weighting,
        cart_p=0.1,
        tail_as_one=False,
        complement=complement,
    )
    return doubled, noised


def test_the_two_halves_partition_the_response_at_times_t_and_1_minus_t():
    batch = one_row_batch(docs=3)
    for step in range(20):
        doubled, noised = paired_noise(batch, step, "inv_t")
        first, second = noised.masked[:3], noised.masked[3:]
        assert not (first & second).any()
        assert torch.equal(first | second, batch["maskable"])  # each response token exactly once
        assert torch.allclose(noised.doc_t[3:], 1 - noised.doc_t[:3])
        assert noised.doc_t.min() >= 1e-3
        assert torch.equal(doubled["doc_ids"][3:], batch["doc_ids"] + 3)
        assert torch.equal(
            noised.noisy_ids[noised.masked], torch.full_like(noised.noisy_ids[noised.masked], 99)
        )


def pair_loss(batch: dict, step: int, weighting: str, token_loss: torch.Tensor) -> float:
    """Σ factor_j · c_j over the pair, for fixed per-token losses c (a model ignoring context)."""
    doubled, noised = paired_noise(batch, step, weighting)
    factors = objective.masked_token_weights(noised, doubled["doc_ids"], doubled["supervised"], "supervised")
    rows, cols = noised.masked.nonzero(as_tuple=True)
    return float((factors * token_loss.repeat(2, 1)[rows, cols]).sum())


def test_uniform_weights_give_the_expectation_on_every_draw():
    # every response token supervised once in 2N supervised slots: loss = Σ c_j / 2N, no variance
    batch = one_row_batch()
    c = torch.linspace(0.5, 3.0, 12)[None]
    expected = c[0, 4:].sum().item() / 16
    for step in range(10):
        assert pair_loss(batch, step, "uniform", c) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("weighting", "expectation"), [("inv_t", 1.0), ("linear", 1 / 6)])
def test_the_pair_loss_is_unbiased_for_the_unpaired_expectation(weighting, expectation):
    # E[1{u<t} w(t) + 1{u>=t} w(1-t)] / 2 = E_t[t w(t)] = 1 (inv_t) or 1/6 (linear, t ~ U(0, 1))
    batch = one_row_batch()
    c = torch.linspace(0.5, 3.0, 12)[None]
    mean_c = c[0, 4:].mean().item()
    draws = torch.tensor([pair_loss(batch, step, weighting, c) for step in range(3000)])
    assert draws.mean().item() == pytest.approx(expectation * mean_c, rel=0.03)


def reference_pair_loss(model, batch: dict, step: int, mask_token_id: int) -> torch.Tensor:
    """Each half of each pair run alone through the plain model (full logits, shift), inv_t
    weights at t and 1 - t, summed and divided by twice the batch's supervised tokens."""
    keys = noise.example_keys(42, step, batch["example_ids"])
    t = noise.sample_pair_t(keys, 1e-3)
    total = torch.zeros(())
    for d in range(batch["example_ids"].shape[0]):
        row, real = batch["input_ids"][d], batch["doc_ids"][d] >= 0
        ids, maskable, positions = row[real], batch["maskable"][d][real], batch["positions"][d][real]
        first = maskable & (noise.token_uniforms(keys[d], positions) < t[d])
        for masked, time in ((first, t[d]), (maskable & ~first, 1 - t[d])):
            noisy = torch.where(masked, torch.full_like(ids, mask_token_id), ids)
            logits = model(input_ids=noisy[None]).logits[0]
            logits = torch.cat([logits[:1], logits[:-1]])  # shift
            ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="sum")
            total = total + ce / time
    return total / (2 * batch["supervised"].sum())


def test_trainer_loss_equals_each_half_run_alone(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "pair", per_device_train_batch_size=4)
    raw["diffusion"] = {"complementary": True, "eos_tail": "none"}
    raw["training"]["seed"] = 42
    trainer = build_trainer(build_run_config(raw))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    denominator = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    assert denominator.item() == 2 * batch["supervised"].sum().item()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=denominator)
    with torch.no_grad():
        expected = reference_pair_loss(trainer.model, batch, 0, trainer.args.mask_token_id)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def gradients(qwen2_dir, chat_file, tmp_path, micro: int):
    raw = recipe_dict(
        qwen2_dir,
        chat_file,
        tmp_path / f"split{micro}",
        per_device_train_batch_size=8 // micro,
        gradient_accumulation_steps=micro,
    )
    raw["diffusion"] = {"complementary": True, "eos_tail": "one", "weighting": "cart"}
    trainer = build_trainer(build_run_config(raw))
    examples = [trainer.train_dataset[i] for i in range(8)]
    batches = [trainer.data_collator(examples[i : i + 8 // micro]) for i in range(0, 8, 8 // micro)]
    denominator = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    trainer.model.zero_grad()
    loss = sum(trainer.training_step(trainer.model, b, denominator) for b in batches)
    return loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_pairs_keep_loss_and_gradients_independent_of_the_split(qwen2_dir, chat_file, tmp_path):
    loss_1, grads_1 = gradients(qwen2_dir, chat_file, tmp_path, 1)
    loss_4, grads_4 = gradients(qwen2_dir, chat_file, tmp_path, 4)
    assert loss_1.item() == pytest.approx(loss_4.item(), abs=1e-6)
    for name, grad in grads_1.items():
        assert torch.allclose(grad, grads_4[name], atol=1e-6), name


def test_complementary_needs_t_min_below_one_half(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "bad")
    raw["diffusion"] = {"complementary": True, "t_min": 0.6}
    with pytest.raises(Exception, match="t_min < 0.5"):
        build_run_config(raw)
