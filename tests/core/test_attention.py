"""`attention_inputs`: the mask and positions each attention implementation gets."""

from __future__ import annotations

import torch

from sft.attention import attention_inputs

# one row holding documents 0 (3 tokens) and 1 (2 tokens) and one padding token
DOC_IDS = torch.tensor([[0, 0, 0, 1, 1, -1]])
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0]])


def packed_batch() -> dict[str, torch.Tensor]:
    return {
        "doc_ids": DOC_IDS,
        "positions": POSITIONS,
        "example_ids": torch.tensor([7, 9]),  # two documents in one row: packed
        "attention_mask": (DOC_IDS >= 0).long(),
    }


def test_a_padded_batch_keeps_its_2d_mask_and_positions():
    batch = {**packed_batch(), "doc_ids": torch.tensor([[0, 0, -1]]), "example_ids": torch.tensor([7])}
    batch["attention_mask"] = torch.tensor([[1, 1, 0]])
    batch["positions"] = torch.tensor([[0, 1, 0]])
    got = attention_inputs(batch, "sdpa", torch.float32)
    assert got["attention_mask"] is batch["attention_mask"]
    assert got["position_ids"] is batch["positions"]


def test_packed_rows_get_a_block_diagonal_mask_under_sdpa():
    mask = attention_inputs(packed_batch(), "sdpa", torch.float32)["attention_mask"]
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # padding attends only to itself: no empty row
        ],
        dtype=torch.bool,
    )
    assert mask.dtype == torch.bool and mask.shape == (1, 1, 6, 6)
    assert torch.equal(mask[0, 0], expected)


def test_eager_gets_the_same_blocks_as_an_additive_mask():
    sdpa = attention_inputs(packed_batch(), "sdpa", torch.float32)["attention_mask"]
    eager = attention_inputs(packed_batch(), "eager", torch.bfloat16)["attention_mask"]
    assert eager.dtype == torch.bfloat16
    assert torch.equal(eager == 0, sdpa)
    assert torch.all(eager[~sdpa] == torch.finfo(torch.bfloat16).min)
