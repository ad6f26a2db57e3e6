"""Packing: best-fit-decreasing rows, per-example losses and no attention across examples."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import modeling_flash_attention_utils as fa_utils

import sft.families.attention
from sft.config import DataSettings, ModelSettings
from sft.data.collate import DiffusionCollator, pack_examples
from sft.data.packing import best_fit_decreasing
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_dataset
from sft.families.attention import TORCH_VARLEN, attention_inputs
from sft.families.loader import load_model
from sft.loss import noise, objective
from sft.recipe import build_run_config
from sft.training.run import build_trainer
from tests.conftest import recipe_dict
from tests.families.test_attention import reference_varlen_attn

pytestmark = pytest.mark.smoke  # in `make test-min`


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

    path = write_chat_rows(tmp_path_factory.mktemp("pack") / "rows.jsonl", sort_rows(24, seed=3))
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


def reference_flash(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash-attn's `flash_attn_func` in plain torch: q (B, L, H, D), k/v (B, L, H_kv, D), no mask."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        dropout_p=dropout_p,
        scale=softmax_scale,
        is_causal=causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2)


def reference_flash_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
):
    """flash-attn's `flash_attn_varlen_func` in plain torch: q/k/v (T, H, D), attention within segments."""
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and int(cu_seqlens_q.diff().max()) == int(max_seqlen_q)
    bounds = cu_seqlens_q.tolist()
    return torch.cat(
        [
            reference_flash(q[None, s:e], k[None, s:e], v[None, s:e], dropout_p, softmax_scale, causal)[0]
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
    )


@pytest.fixture
def attention(setup, monkeypatch):
    """Switch the model to an attention implementation; `flash_attention_2` runs transformers' own
    flash path (`_flash_attention_forward`) with the reference kernels above in flash-attn's place,
    `torch_varlen` torch 2.11's `varlen_attn` signature with a reference kernel (float32 allowed)."""
    model = setup[0].model

    def use(implementation: str) -> str:
        if implementation == "flash_attention_2":
            kernels = (
                reference_flash,
                reference_flash_varlen,
                None,
                fa_utils._pad_input,
                fa_utils._unpad_input,
            )
            monkeypatch.setattr(fa_utils, "_lazy_imports", lambda *args, **kwargs: kernels)
            monkeypatch.setattr(fa_utils, "_loaded_implementation", None)
        if implementation == TORCH_VARLEN:
            monkeypatch.setattr(sft.families.attention, "varlen_attn", reference_varlen_attn)
            monkeypatch.setattr(sft.families.attention, "VARLEN_DTYPES", (torch.float32,))
        model.config._attn_implementation = implementation
        return implementation

    yield use
    model.config._attn_implementation = "sdpa"


def device_batch(examples, collator, rows: int = 4) -> dict[str, torch.Tensor]:
    """One device batch of `rows` packed rows, each holding several examples."""
    packed_rows = pack_examples(examples, collator)
    chosen = [packed_rows[i] for i in range(len(packed_rows)) if len(packed_rows[i]["members"]) >= 2][:rows]
    assert len(chosen) == rows
    return collator(chosen)


def weighted_token_losses(model, batch, implementation, weighting="cart", tail_as_one=False):
    """Each masked token's weighted CE and its document, computed as the trainer does."""
    keys = noise.example_keys(0, 7, batch["example_ids"])
    t = noise.sample_t(keys, 1e-3)
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
    logits = model(
        input_ids=noised.noisy_ids, **attention_inputs(batch, implementation, torch.float32)
    ).logits
    ce = F.cross_entropy(logits[rows, source], batch["input_ids"][rows, cols], reduction="none")
    return ce * noised.weights[rows, cols], batch["doc_ids"][rows, cols]


def per_example_losses(model, batch, implementation, weighting="cart", tail_as_one=False):
    """Each example's summed weighted CE and masked-token count, keyed by example id."""
    with torch.no_grad():
        losses, docs = weighted_token_losses(model, batch, implementation, weighting, tail_as_one)
    sums = torch.zeros(len(batch["example_ids"])).index_add_(0, docs, losses)
    counts = torch.zeros(len(batch["example_ids"])).index_add_(0, docs, torch.ones_like(losses))
    return {int(e): (s.item(), int(c)) for e, s, c in zip(batch["example_ids"], sums, counts)}


@pytest.mark.parametrize(
    "implementation,weighting",
    [
        ("sdpa", "cart"),
        ("sdpa", "inv_t"),
        ("eager", "cart"),
        ("flash_attention_2", "cart"),
        (TORCH_VARLEN, "cart"),
    ],
)
def test_packed_device_batch_gives_each_example_the_loss_it_has_unpacked(
    setup, attention, implementation, weighting
):
    loaded, examples, collator = setup
    packed = device_batch(examples, collator)
    members = packed["example_ids"].tolist()
    unpacked = collator([examples[i] for i in range(len(examples)) if examples[i]["example_id"] in members])
    assert packed["input_ids"].shape[0] == 4 < unpacked["input_ids"].shape[0]
    expected = per_example_losses(loaded.model, unpacked, "sdpa", weighting)  # one example per row
    got = per_example_losses(loaded.model, packed, attention(implementation), weighting)
    assert got.keys() == expected.keys() and len(got) == len(members) >= 8
    for example_id, (loss, count) in got.items():
        assert count == expected[example_id][1]
        assert loss == pytest.approx(expected[example_id][0], abs=1e-5)
    assert sum(count for _, count in got.values()) > 20
    assert torch.equal(packed["supervised"].sort().values, unpacked["supervised"].sort().values)


@pytest.mark.parametrize("implementation", ["sdpa", "flash_attention_2", TORCH_VARLEN])
def test_packed_device_batch_gives_the_gradients_of_the_unpacked_one(setup, attention, implementation):
    loaded, examples, collator = setup
    packed = device_batch(examples, collator)
    members = packed["example_ids"].tolist()
    unpacked = collator([examples[i] for i in range(len(examples)) if examples[i]["example_id"] in members])
    parameters = [p for p in loaded.model.parameters() if p.requires_grad]

    def gradients(batch, implementation):
        loss = weighted_token_losses(loaded.model, batch, implementation)[0].sum()
        return torch.autograd.grad(loss, parameters)

    expected = gradients(unpacked, "sdpa")
    got = gradients(packed, attention(implementation))
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flash_attention_2", TORCH_VARLEN])
def test_changing_one_packed_example_never_changes_another(setup, attention, implementation):
    loaded, examples, collator = setup
    batch = device_batch(examples, collator)
    doc_ids = batch["doc_ids"]
    kept = (doc_ids >= 0) & (doc_ids % 2 == 0)  # every other example of the device batch, all rows
    changed = batch["input_ids"].clone()
    changed[(doc_ids >= 0) & ~kept] = 5  # rewrite the others
    inputs = attention_inputs(batch, attention(implementation), torch.float32)
    with torch.no_grad():
        a = loaded.model(input_ids=batch["input_ids"], **inputs).logits[kept]
        b = loaded.model(input_ids=changed, **inputs).logits[kept]
        # positive control: restarting positions alone (no mask, no varlen keywords) leak at batch 4
        leaky = {"attention_mask": None, "position_ids": batch["positions"]}
        c = loaded.model(input_ids=changed, **leaky).logits[kept]
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-4)


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
