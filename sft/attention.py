"""Attention inputs for padded and packed rows, per attention implementation.

With bidirectional attention transformers does not split a packed row by `position_ids` under
SDPA or eager, so documents in one row would attend to each other. A packed batch therefore gets
a block-diagonal 4-D mask (bool for SDPA, additive float for eager; padding attends only to
itself, so no row of the mask is empty); under `flash_attention_2` the restarting `position_ids`
select the variable-length kernels, which keep documents apart, and no mask is passed.
A padded batch (one document per row) keeps the ordinary 2-D mask.
"""

from __future__ import annotations

import torch


def attention_inputs(
    batch: dict[str, torch.Tensor], attn_implementation: str, dtype: torch.dtype
) -> dict[str, torch.Tensor | None]:
    """`attention_mask` and `position_ids` for the model call."""
    doc_ids = batch["doc_ids"]
    packed = batch["example_ids"].shape[0] > doc_ids.shape[0]
    if not packed:
        return {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}
    if attn_implementation.startswith("flash_attention"):
        return {"attention_mask": None, "position_ids": batch["positions"]}
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    padding = doc_ids < 0
    eye = torch.eye(doc_ids.shape[1], dtype=torch.bool, device=doc_ids.device)
    allowed = (same_doc & ~padding[:, :, None]) | (padding[:, :, None] & eye)
    mask = allowed[:, None]
    if attn_implementation == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return {"attention_mask": mask, "position_ids": batch["positions"]}
