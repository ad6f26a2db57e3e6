"""Block-diffusion SFT (`diffusion.block_size: B`): pure-torch pieces of the x_t ⊕ x_0 construction.

Each document's response (with its EOS tail) is cut into blocks of B tokens counted from the
response's first token; the prompt is block -1. Every block gets its own time t (counter-based:
a hash of the document's key and the block index) and is masked with it (`sft.loss.objective`:
`block_index`, `block_keys`, `block_cart_weights`). The model must predict a
masked token of block b from the noisy block b (bidirectionally) and the *clean* prompt and clean
blocks < b, which is the conditional a semi-autoregressive sampler with a KV cache of finished
blocks uses. One forward gives every block that view (BD3-LMs, Arriola et al. 2025, arXiv
2503.09573, "vectorized training"): the row is the noisy sequence x_t followed by the clean one
x_0, both with the same position ids, under the mask

    x_t query of block b:  x_t keys of block b (block-diagonal)  and  x_0 keys of blocks < b
    x_0 query of block b:  x_0 keys of blocks <= b (block-causal; the prompt is one block)

within its document only (packed rows), padding attending only to itself: a dense (2L)² mask per
row for SDPA and eager, a sparse `BlockMask` of the same rule for flex-attention (`auto` on CUDA).
A clean block's states therefore depend only on the clean text up to its end — exactly what a KV
cache built block by block holds. With the shift of AR-initialised families (position i-1 predicts
token i), the first token of a block is predicted from the x_0 copy of the token before it (the
last token of the previous clean block or of the prompt), the others from x_t; without shift, from
x_t itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask


def may_attend(
    q_doc: torch.Tensor,
    k_doc: torch.Tensor,
    q_block: torch.Tensor,
    k_block: torch.Tensor,
    q_clean: torch.Tensor,
    k_clean: torch.Tensor,
    same_position: torch.Tensor,
) -> torch.Tensor:
    """The mask rule of the module docstring for a query and a key of the [x_t ; x_0] row: their
    documents, blocks, halves (clean = x_0) and whether they are one position. Elementwise, so it
    serves both the dense mask (broadcast tensors) and flex-attention's `mask_mod` (indices)."""
    same_doc = (q_doc == k_doc) & (q_doc >= 0)
    noisy_query = ~q_clean & ((~k_clean & (k_block == q_block)) | (k_clean & (k_block < q_block)))
    clean_query = q_clean & k_clean & (k_block <= q_block)
    return (same_doc & (noisy_query | clean_query)) | ((q_doc < 0) & same_position)


def block_attention_mask(doc_ids: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """The (R, 2L, 2L) bool mask of the module docstring over [x_t ; x_0] (True = may attend)."""
    doc = torch.cat([doc_ids, doc_ids], dim=1)
    block = torch.cat([blocks, blocks], dim=1)
    index = torch.arange(doc.shape[1], device=doc_ids.device)
    clean = index >= doc_ids.shape[1]
    return may_attend(
        doc[:, :, None],
        doc[:, None, :],
        block[:, :, None],
        block[:, None, :],
        clean[None, :, None],
        clean[None, None, :],
        index[None, :, None] == index[None, None, :],
    )


def block_flex_mask(doc_ids: torch.Tensor, blocks: torch.Tensor) -> BlockMask:
    """The same mask as flex-attention's sparse `BlockMask`: tiles of the (2L)² grid that no query
    may attend are skipped, and on CUDA no dense mask is materialised (its builder is compiled)."""
    doc = torch.cat([doc_ids, doc_ids], dim=1)
    block = torch.cat([blocks, blocks], dim=1)
    width = doc_ids.shape[1]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return may_attend(doc[b, q], doc[b, k], block[b, q], block[b, k], q >= width, k >= width, q == k)

    rows, length = doc.shape
    build = compiled_create_block_mask() if doc.is_cuda else create_block_mask
    return build(mask_mod, rows, None, length, length, device=doc.device)


@functools.cache
def compiled_create_block_mask() -> Callable[..., BlockMask]:
    """`create_block_mask` compiled (once per process; new shapes compile dynamically): it then
    evaluates `mask_mod` tile by tile instead of materialising the (2L)² mask and its index tensors."""
    return torch.compile(create_block_mask)


def block_model_inputs(
    noisy_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    doc_ids: torch.Tensor,
    positions: torch.Tensor,
    blocks: torch.Tensor,
    attn_implementation: str,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor | BlockMask]:
    """`input_ids`, `position_ids` and the attention mask of the [x_t ; x_0] row: a `BlockMask` for
    flex-attention, else 4-D, bool for SDPA, additive (0 / dtype min) for eager. Flash-attn and
    torch_varlen take no such mask (`sft.families.attention.block_diffusion_attention` refuses them)."""
    if attn_implementation == "flex_attention":
        mask = block_flex_mask(doc_ids, blocks)
    else:
        allowed = block_attention_mask(doc_ids, blocks)[:, None]
        mask = allowed
        if attn_implementation == "eager":
            mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
    return {
        "input_ids": torch.cat([noisy_ids, clean_ids], dim=1),
        "position_ids": torch.cat([positions, positions], dim=1),
        "attention_mask": mask,
    }


def block_prediction_source(
    rows: torch.Tensor,
    cols: torch.Tensor,
    positions: torch.Tensor,
    blocks: torch.Tensor,
    shift: bool,
) -> torch.Tensor:
    """Column of the [x_t ; x_0] row whose output predicts the masked token at (rows, cols) of x_t:
    without shift the token's own x_t column; with shift its x_t neighbour i-1 inside the same
    block, else the x_0 copy of i-1 (the first token of a document predicts itself, as in Dream)."""
    if not shift:
        return cols
    width = blocks.shape[1]
    previous = (cols - 1).clamp(min=0)
    first_of_doc = positions[rows, cols] == 0
    same_block = blocks[rows, previous] == blocks[rows, cols]
    source = torch.where(same_block, previous, width + previous)
    return torch.where(first_of_doc, cols, source)
