"""`attention_inputs` and the segmented SDPA: what each attention implementation gets for packed rows."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sft.training.attention import attention_inputs, segmented_sdpa_attention

# two rows: documents 0 (3 tokens) and 1 (2 tokens) then one padding token; document 2 (4 tokens)
# then two padding tokens
DOC_IDS = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]])
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])


def packed_batch() -> dict[str, torch.Tensor]:
    return {
        "doc_ids": DOC_IDS,
        "positions": POSITIONS,
        "example_ids": torch.tensor([7, 9, 4]),  # three documents in two rows: packed
        "attention_mask": (DOC_IDS >= 0).long(),
    }


def test_a_padded_batch_keeps_its_2d_mask_and_positions():
    batch = {**packed_batch(), "doc_ids": torch.tensor([[0, 0, -1]]), "example_ids": torch.tensor([7])}
    batch["attention_mask"] = torch.tensor([[1, 1, 0]])
    batch["positions"] = torch.tensor([[0, 1, 0]])
    for implementation in ("sdpa", "eager", "flash_attention_2"):
        got = attention_inputs(batch, implementation, torch.float32)
        assert got == {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}


@pytest.mark.parametrize("implementation", ["sdpa", "flash_attention_2"])
def test_packed_rows_get_segment_boundaries_over_the_flattened_batch(implementation):
    got = attention_inputs(packed_batch(), implementation, torch.float32)
    assert got["attention_mask"] is None and got["position_ids"] is POSITIONS
    # segments: doc 0 | doc 1 | row 0's padding | doc 2 | row 1's padding
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["cu_seq_lens_k"] is got["cu_seq_lens_q"]
    assert got["max_length_q"] == got["max_length_k"] == 4


def test_eager_gets_an_additive_block_diagonal_mask():
    mask = attention_inputs(packed_batch(), "eager", torch.bfloat16)["attention_mask"]
    allowed = torch.tensor(
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
    assert mask.dtype == torch.bfloat16 and mask.shape == (2, 1, 6, 6)
    assert torch.equal(mask[0, 0] == 0, allowed)
    assert torch.all(mask[0, 0][~allowed] == torch.finfo(torch.bfloat16).min)


class Attention(torch.nn.Module):
    """What transformers' attention functions read from the calling module (4 heads, 2 KV heads)."""

    num_key_value_groups = 2
    is_causal = False


def qkv(batch: int, width: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    # laid out (B, L, H, D) and viewed (B, H, L, D), as the models hand them over
    return tuple(torch.randn(batch, width, heads, 8).transpose(1, 2) for heads in (4, 2, 2))


def test_segmented_sdpa_equals_sdpa_under_the_block_diagonal_mask():
    query, key, value = qkv(2, 6)
    inputs = attention_inputs(packed_batch(), "sdpa", torch.float32)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = segmented_sdpa_attention(
        Attention(), query, key, value, None, scaling=0.3, is_causal=False, **inputs
    )
    same_segment = (DOC_IDS[:, :, None] == DOC_IDS[:, None, :])[:, None]  # a row's padding is one segment
    expected, _ = sdpa_attention_forward(
        Attention(), query, key, value, same_segment, scaling=0.3, is_causal=False
    )
    assert got.shape == (2, 6, 4, 8)
    assert torch.allclose(got, expected, atol=1e-6)


def test_sdpa_without_segments_is_transformers_sdpa():
    query, key, value = qkv(2, 6)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    got, _ = AttentionInterface()["sdpa"](Attention(), query, key, value, mask, scaling=0.3, is_causal=False)
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, mask, scaling=0.3, is_causal=False)
    assert torch.equal(got, expected)
    assert AttentionInterface()["sdpa"] is segmented_sdpa_attention  # what the models dispatch to
