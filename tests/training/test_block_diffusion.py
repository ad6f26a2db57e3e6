"""Block-diffusion SFT: the block layout against hand-computed values, and the trainer's loss against
a hand-written reference that runs each block alone (a KV cache of the clean prompt and blocks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, create_mask
from transformers import DynamicCache

from sft.errors import UserError
from sft.loss import noise, objective
from sft.loss.block_diffusion import (
    block_attention_mask,
    block_flex_mask,
    block_prediction_source,
    compiled_create_block_mask,
)
from sft.recipe import build_run_config
from sft.training.noising import draw_noise
from sft.training.run import build_trainer
from tests.conftest import recipe_dict
from tests.loss.test_objective import brute_force_cart


def test_block_index_counts_from_each_documents_first_response_token():
    # one packed row: doc 0 = 2 prompt + 5 response tokens, doc 1 = 1 prompt + 3 response, 1 padding
    doc_ids = torch.tensor([[0] * 7 + [1] * 4 + [-1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0]])
    maskable = torch.tensor([[False, False] + [True] * 5 + [False] + [True] * 3 + [False]])
    blocks = noise.block_index(maskable, doc_ids, positions, 2)
    assert blocks.tolist() == [[-1, -1, 0, 0, 1, 1, 2, -1, 0, 0, 1, -1]]


def test_block_mask_is_block_diagonal_on_x_t_offset_causal_to_x_0_and_block_causal_on_x_0():
    doc_ids = torch.tensor([[0, 0, 0, 0, 0]])
    blocks = torch.tensor([[-1, 0, 0, 1, 1]])  # prompt, block 0, block 1
    allowed = block_attention_mask(doc_ids, blocks)[0].int()
    x_t, x_0 = slice(0, 5), slice(5, 10)
    # noisy block 1 (rows 3, 4): itself on x_t, the clean prompt and block 0 on x_0
    assert allowed[3, x_t].tolist() == [0, 0, 0, 1, 1] and allowed[3, x_0].tolist() == [1, 1, 1, 0, 0]
    # noisy block 0: itself, and the clean prompt only
    assert allowed[1, x_t].tolist() == [0, 1, 1, 0, 0] and allowed[1, x_0].tolist() == [1, 0, 0, 0, 0]
    # clean block 0 (row 6): the clean prompt and itself, never x_t
    assert allowed[6, x_t].tolist() == [0] * 5 and allowed[6, x_0].tolist() == [1, 1, 1, 0, 0]
    # the clean prompt sees only itself
    assert allowed[5, x_0].tolist() == [1, 0, 0, 0, 0]
    two_docs = block_attention_mask(torch.tensor([[0, 0, 1, 1, -1]]), torch.tensor([[-1, 0, -1, 0, -1]]))[0]
    assert not two_docs[1, 2:5].any() and not two_docs[1, 7:10].any()  # documents never meet
    assert two_docs[4].nonzero().flatten().tolist() == [4] and two_docs[9].nonzero().flatten().tolist() == [9]


def test_flex_block_mask_allows_exactly_the_dense_masks_entries():
    # two packed rows with documents of different prompt and response lengths, and padding
    doc_ids = torch.tensor([[0] * 7 + [1] * 4 + [-1], [2] * 5 + [3] * 5 + [-1] * 2])
    positions = torch.tensor([[*range(7), *range(4), 0], [*range(5), *range(5), 0, 0]])
    maskable = torch.tensor(
        [[0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.bool
    )
    blocks = noise.block_index(maskable, doc_ids, positions, 2)
    sparse = block_flex_mask(doc_ids, blocks)
    assert sparse.shape == (2, 1, 24, 24)
    dense = create_mask(sparse.mask_mod, 2, 1, 24, 24, device="cpu")[:, 0]
    assert torch.equal(dense, block_attention_mask(doc_ids, blocks))
    # CUDA's builder is compiled (compiled here on the CPU): the same tiles, at 4x4 tiles
    plain, compiled = (
        build(sparse.mask_mod, 2, None, 24, 24, device="cpu", BLOCK_SIZE=4)
        for build in (create_block_mask, compiled_create_block_mask())
    )
    assert 0 < plain.sparsity() < 100
    for tiles in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(compiled, tiles), getattr(plain, tiles)), tiles


def test_prediction_source_takes_the_clean_previous_token_at_block_starts():
    blocks = torch.tensor([[-1, -1, 0, 0, 1, 1]])
    positions = torch.arange(6)[None]
    rows, cols = torch.zeros(4, dtype=torch.long), torch.tensor([2, 3, 4, 5])
    shifted = block_prediction_source(rows, cols, positions, blocks, shift=True)
    assert shifted.tolist() == [6 + 1, 2, 6 + 3, 4]  # block starts read x_0 at i-1
    assert block_prediction_source(rows, cols, positions, blocks, shift=False).tolist() == [2, 3, 4, 5]


def brute_force_block_cart(masked, blocks, p):
    """CART over one document row, each token seeing the prompt, earlier blocks and its own block."""
    out = torch.zeros(masked.shape)
    for j in range(masked.shape[1]):
        if blocks[0, j] < 0:
            continue
        b = blocks[0, j]
        clean = (blocks < b) | ((blocks == b) & ~masked)
        out[0, j] = brute_force_cart(clean, p)[0, j]
    return out


def test_block_cart_sees_only_the_prompt_earlier_blocks_and_its_own_block():
    torch.manual_seed(0)
    maskable = torch.tensor([[False] * 3 + [True] * 9])
    doc_ids, positions = torch.zeros(1, 12, dtype=torch.long), torch.arange(12)[None]
    blocks = noise.block_index(maskable, doc_ids, positions, 4)
    masked = maskable & (torch.rand(1, 12) < 0.6)
    weights = objective.block_cart_weights(masked, doc_ids, positions, blocks, 4, 1, 0.3)
    assert torch.allclose(weights, brute_force_block_cart(masked, blocks, 0.3), atol=1e-6)
    # packed next to another document, nothing changes
    packed = objective.block_cart_weights(
        torch.cat([masked, masked], 1),
        torch.cat([doc_ids, doc_ids + 1], 1),
        torch.cat([positions, positions], 1),
        torch.cat([blocks, blocks], 1),
        4,
        2,
        0.3,
    )
    assert torch.allclose(packed[0, 12:], weights[0], atol=1e-6)


def test_every_block_draws_its_own_time():
    keys = noise.example_keys(0, 0, torch.arange(2000))
    t = noise.sample_t(noise.block_keys(keys[:, None], torch.arange(3)[None, :]), 0.0)
    assert not torch.equal(t[:, 0], t[:, 1])
    assert abs(torch.corrcoef(t.T)[0, 1].item()) < 0.1
    assert t.mean().item() == pytest.approx(0.5, abs=0.02)


@torch.no_grad()
def reference_loss(model, batch, step: int, seed: int, block: int, mask_id: int, shift: bool) -> torch.Tensor:
    """Σ_docs Σ_blocks Σ_{masked j} CE_j / t_block ÷ Σ supervised, each block run alone: the prompt
    goes into a KV cache (bidirectional), then per block the noisy block is run against the cache
    (and cropped away), then the clean block is appended to it. The first token of a block is
    predicted from the last clean token's logits (shift)."""
    keys = noise.example_keys(seed, step, batch["example_ids"])
    total = torch.zeros((), dtype=torch.float64)
    for d in range(batch["example_ids"].shape[0]):
        where = batch["doc_ids"] == d
        ids, maskable, positions = (
            batch["input_ids"][where],
            batch["maskable"][where],
            batch["positions"][where],
        )
        prompt = int((~maskable).sum())
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids[None, :prompt], position_ids=positions[None, :prompt], past_key_values=cache
        )
        last_clean = out.logits[0, -1]
        for start in range(prompt, ids.shape[0], block):
            span = slice(start, min(start + block, ids.shape[0]))
            t = noise.sample_t(noise.block_keys(keys[d], torch.tensor((start - prompt) // block)), 1e-3)
            masked = noise.token_uniforms(keys[d], positions[span]) < t
            noisy = torch.where(masked, torch.full_like(ids[span], mask_id), ids[span])
            logits = model(
                input_ids=noisy[None], position_ids=positions[None, span], past_key_values=cache
            ).logits[0]
            cache.crop(-(span.stop - span.start))
            if shift:
                logits = torch.cat([last_clean[None], logits[:-1]])
            ce = F.cross_entropy(logits[masked].double(), ids[span][masked], reduction="sum")
            total += ce / t.double()
            out = model(input_ids=ids[None, span], position_ids=positions[None, span], past_key_values=cache)
            last_clean = out.logits[0, -1]
    return total / batch["supervised"].sum().double()


def block_trainer(qwen2_dir, chat_file, tmp_path, name: str, *, attn: str = "sdpa", **diffusion):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / name, per_device_train_batch_size=4, seed=7)
    raw["diffusion"].update(diffusion)
    raw["model"]["attn_implementation"] = attn
    return build_trainer(build_run_config(raw))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_trainer_loss_equals_each_block_run_alone(qwen2_dir, chat_file, tmp_path, attn):
    trainer = block_trainer(qwen2_dir, chat_file, tmp_path, attn, attn=attn, block_size=3)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    denominator = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=denominator)
    expected = reference_loss(trainer.model, batch, 0, 7, 3, trainer.args.mask_token_id, shift=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_packed_batch_gives_the_padded_batchs_loss_and_gradients(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "pack", per_device_train_batch_size=4, seed=7)
    raw["diffusion"].update(block_size=4, weighting="cart")
    raw["data"].update(batching="pack", max_length=96)
    trainer = build_trainer(build_run_config(raw))
    collator = trainer.data_collator
    packed = collator([{"members": [0, 1, 2]}, {"members": [3, 4, 5]}])
    padded = collator([collator.examples[i] for i in range(6)])
    assert packed["input_ids"].shape[0] == 2 and padded["input_ids"].shape[0] == 6
    trainer.model.train()
    results = []
    for batch in (padded, packed):
        trainer.model.zero_grad()
        denominator = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        loss = trainer.training_step(trainer.model, batch, denominator)
        results.append((loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
    (loss_pad, grads_pad), (loss_pack, grads_pack) = results
    assert loss_pad.item() == pytest.approx(loss_pack.item(), rel=1e-5)
    for name, grad in grads_pad.items():
        assert torch.allclose(grad, grads_pack[name], atol=1e-6), name


def test_flex_attentions_block_mask_gives_each_block_run_alone_on_packed_rows(qwen2_dir, chat_file, tmp_path):
    """The path `auto` takes on CUDA, run forward on the CPU (flex-attention has no CPU backward):
    a packed batch through the BlockMask gives the loss of the reference run block by block."""
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "flex", per_device_train_batch_size=4, seed=7)
    raw["diffusion"].update(block_size=3)
    raw["data"].update(batching="pack", max_length=96)
    trainer = build_trainer(build_run_config(raw))
    batch = trainer.data_collator([{"members": [0, 1, 2]}, {"members": [3, 4, 5]}])
    trainer.model.train()
    denominator = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    trainer.model.set_attn_implementation("flex_attention")
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=denominator)
    trainer.model.set_attn_implementation("sdpa")
    expected = reference_loss(trainer.model, batch, 0, 7, 3, trainer.args.mask_token_id, shift=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_complementary_blocks_supervise_every_response_token_once(qwen2_dir, chat_file, tmp_path):
    trainer = block_trainer(qwen2_dir, chat_file, tmp_path, "pairs", block_size=2, complementary=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    doubled, complement = objective.complementary_pairs(batch)
    blocks = noise.block_index(doubled["maskable"], doubled["doc_ids"], doubled["positions"], 2)
    noised = draw_noise(doubled, trainer.args, trainer.state.global_step, True, complement, blocks)
    first, second = noised.masked[:4], noised.masked[4:]
    assert torch.equal(first ^ second, batch["maskable"]) and not (first & second).any()
    t = noised.t[noised.masked]
    per_block = {}
    for row, col in noised.masked.nonzero().tolist():
        per_block.setdefault((row, int(blocks[row, col])), set()).add(round(noised.t[row, col].item(), 6))
    assert all(len(times) == 1 for times in per_block.values()) and t.min() >= 1e-3


def test_a_cpu_block_diffusion_run_under_flex_attention_is_refused_before_training(
    qwen2_dir, chat_file, tmp_path
):
    with pytest.raises(UserError, match="model.attn_implementation: flex_attention has no backward"):
        block_trainer(qwen2_dir, chat_file, tmp_path, "flex", attn="flex_attention", block_size=4)


def test_block_size_must_be_positive(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "bad")
    raw["diffusion"]["block_size"] = 0
    with pytest.raises(Exception, match="block_size must be >= 1"):
        build_run_config(raw)
