"""Packing: best-fit-decreasing rows, per-example losses and no attention across examples."""

from __future__ import annotations

import random

import pytest
import torch

from sft import objective
from sft.attention import attention_inputs
from sft.collate import DiffusionCollator, pack_examples
from sft.config import DataSettings, ModelSettings
from sft.data import load_chat_rows, tokenize_dataset
from sft.families.loader import load_model
from sft.packing import best_fit_decreasing
from sft.recipe import build_run_config
from sft.run import build_trainer
from tests.conftest import recipe_dict


def test_best_fit_decreasing_fills_rows_without_overflow():
    rng = random.Random(0)
    sizes = [rng.randint(1, 30) for _ in range(500)]
    rows = best_fit_decreasing(sizes, 32)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(sizes[i] for i in row) <= 32 for row in rows)
    assert len(rows) <= sum(sizes) / 32 * 1.25  # close to the lower bound
    assert best_fit_decreasing(sizes, 32) == rows  # deterministic
    assert best_fit_decreasing([5, 4, 3, 3], 8) == [[0, 2], [1, 3]]  # 5+3, then 4+3 (best fit)
    with pytest.raises(ValueError):
        best_fit_decreasing([9], 8)


@pytest.fixture(scope="module")
def setup(qwen2_dir, tmp_path_factory):
    from tests.conftest import sort_rows, write_chat_rows

    path = write_chat_rows(tmp_path_factory.mktemp("pack") / "rows.jsonl", sort_rows(12, seed=3))
    loaded = load_model(ModelSettings(name_or_path=str(qwen2_dir)))
    loaded.model.eval()
    examples = tokenize_dataset(
        load_chat_rows(str(path)),
        loaded.tokenizer,
        DataSettings(train=str(path), max_length=64),
        loaded.eos_token_id,
    ).dataset
    collator = DiffusionCollator(
        eos_token_id=loaded.eos_token_id, max_length=64, eos_tail="first_n", eos_tail_n=3, examples=examples
    )
    return loaded, examples, collator


def per_example_losses(model, batch, weighting="cart", tail_as_one=False):
    """Each example's summed weighted CE, keyed by example id, computed as the trainer does."""
    keys = objective.example_keys(0, 7, batch["example_ids"])
    t = objective.sample_t(keys, 1e-3)
    noised = objective.add_noise(
        batch["input_ids"],
        batch["maskable"],
        batch["tail"],
        batch["doc_ids"],
        batch["positions"],
        t,
        keys,
        mask_token_id=3,
        weighting=weighting,
        cart_p=0.1,
        tail_as_one=tail_as_one,
    )
    rows, cols = noised.masked.nonzero(as_tuple=True)
    source = objective.prediction_source(cols, batch["positions"][rows, cols], shift=True)
    with torch.no_grad():
        logits = model(input_ids=noised.noisy_ids, **attention_inputs(batch, "sdpa", torch.float32)).logits
    ce = torch.nn.functional.cross_entropy(
        logits[rows, source], batch["input_ids"][rows, cols], reduction="none"
    )
    docs = batch["doc_ids"][rows, cols]
    sums = torch.zeros(len(batch["example_ids"])).index_add_(0, docs, ce * noised.weights[rows, cols])
    counts = torch.zeros(len(batch["example_ids"])).index_add_(0, docs, torch.ones_like(ce))
    return {int(e): (s.item(), int(c)) for e, s, c in zip(batch["example_ids"], sums, counts)}


@pytest.mark.parametrize("weighting", ["cart", "inv_t"])
def test_packed_batch_gives_each_example_the_loss_it_has_unpacked(setup, weighting):
    loaded, examples, collator = setup
    packed_rows = pack_examples(examples, collator)
    assert len(packed_rows) < len(examples)  # several examples share a row
    packed = collator([packed_rows[i] for i in range(len(packed_rows))])
    unpacked = collator([examples[i] for i in range(len(examples))])
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    a = per_example_losses(loaded.model, packed, weighting)
    b = per_example_losses(loaded.model, unpacked, weighting)
    assert a.keys() == b.keys() and len(a) == len(examples)
    for example_id, (loss, count) in a.items():
        assert count == b[example_id][1]
        assert loss == pytest.approx(b[example_id][0], abs=1e-5)
    assert sum(count for _, count in a.values()) > 20
    assert torch.equal(packed["supervised"].sort().values, unpacked["supervised"].sort().values)


def test_no_attention_across_packed_examples(setup):
    loaded, examples, collator = setup
    packed_rows = pack_examples(examples, collator)
    row = next(r for r in (packed_rows[i] for i in range(len(packed_rows))) if len(r["members"]) >= 2)
    batch = collator([row])
    first = batch["doc_ids"][0] == 0
    changed = batch["input_ids"].clone()
    changed[0, ~first & (batch["doc_ids"][0] >= 0)] = 5  # rewrite every other example in the row
    inputs = attention_inputs(batch, "sdpa", torch.float32)
    with torch.no_grad():
        a = loaded.model(input_ids=batch["input_ids"], **inputs).logits[0, first]
        b = loaded.model(input_ids=changed, **inputs).logits[0, first]
    assert torch.allclose(a, b, atol=1e-6)
    # and the same row with a plain 2-D mask *does* leak, so the test can tell
    plain = {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}
    with torch.no_grad():
        leaky = loaded.model(input_ids=changed, **plain).logits[0, first]
    assert not torch.allclose(a, leaky, atol=1e-4)


def test_eager_attention_gets_an_additive_block_mask(setup):
    _, examples, collator = setup
    packed_rows = pack_examples(examples, collator)
    batch = collator([packed_rows[0]])
    eager = attention_inputs(batch, "eager", torch.float32)["attention_mask"]
    sdpa = attention_inputs(batch, "sdpa", torch.float32)["attention_mask"]
    assert eager.dtype == torch.float32 and sdpa.dtype == torch.bool
    assert torch.equal(eager == 0, sdpa)
    assert attention_inputs(batch, "flash_attention_2", torch.float32)["attention_mask"] is None


def test_training_with_packing_runs_and_needs_a_packable_tail_policy(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "packed", max_steps=2)
    raw["data"]["batching"] = "pack"
    trainer = build_trainer(build_run_config(raw))
    assert "members" in trainer.train_dataset.column_names
    trainer.train()
    assert trainer.state.global_step == 2
    raw["diffusion"]["eos_tail"] = "all"
    from sft.errors import UserError

    with pytest.raises(UserError, match="nothing to pack"):
        build_run_config(raw)
