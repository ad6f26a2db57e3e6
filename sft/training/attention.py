"""Attention inputs for padded and packed rows, per attention implementation.

A padded batch (one document per row) keeps the ordinary 2-D mask. A packed row holds several
documents that must not attend to each other; transformers separates them by restarting
`position_ids` only under flash attention and only at batch size 1, so a packed batch gets:

- `flash_attention_2` and `sdpa`: no mask, and the variable-length keywords transformers defines
  for flash-attn (`cu_seq_lens_q/k`, `max_length_q/k`): the document boundaries over the batch's
  R·L tokens read as one sequence, each row's padding a segment of its own. Flash-attn runs its
  varlen kernel on them at any batch size. For SDPA this module registers (transformers'
  `AttentionInterface`, name `sdpa`) transformers' own SDPA run once per segment when those
  keywords are present, so attention over a packed row costs Σ length² rather than L²; without
  them (padded batches, generation) it is transformers' SDPA unchanged.
- `eager`, the plain reference implementation: a block-diagonal additive 4-D mask (padding
  attends only to itself, so no row of the mask is empty).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def attention_inputs(
    batch: dict[str, torch.Tensor], attn_implementation: str, dtype: torch.dtype
) -> dict[str, torch.Tensor | int | None]:
    """`attention_mask`, `position_ids` and, for packed rows, the varlen keywords of the model call."""
    doc_ids = batch["doc_ids"]
    packed = batch["example_ids"].shape[0] > doc_ids.shape[0]
    if not packed:
        return {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}
    if attn_implementation != "eager":
        return {"attention_mask": None, "position_ids": batch["positions"], **varlen_keywords(doc_ids)}
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    padding = doc_ids < 0
    eye = torch.eye(doc_ids.shape[1], dtype=torch.bool, device=doc_ids.device)
    allowed = (same_doc & ~padding[:, :, None]) | (padding[:, :, None] & eye)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
    return {"attention_mask": mask[:, None], "position_ids": batch["positions"]}


def varlen_keywords(doc_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Segment boundaries of the flattened (R·L) batch: each document, and each row's padding."""
    rows = torch.arange(doc_ids.shape[0], device=doc_ids.device)[:, None]
    segment = torch.where(doc_ids >= 0, doc_ids, -1 - rows).reshape(-1)  # doc ids are unique per batch
    starts = torch.ones_like(segment, dtype=torch.bool)
    starts[1:] = segment[1:] != segment[:-1]
    end = torch.tensor([segment.numel()], device=doc_ids.device)
    cu_seq_lens = torch.cat([starts.nonzero().flatten(), end]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def segmented_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA; with `cu_seq_lens_q`, run within each segment of the flattened batch.

    query (B, H, L, D), key/value (B, H_kv, L, D) -> (B, L, H, D), as every attention function.
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    same_segments = cu_seq_lens_k is cu_seq_lens_q or torch.equal(cu_seq_lens_q, cu_seq_lens_k)
    if not same_segments or attention_mask is not None:
        raise ValueError("segmented SDPA needs the same query and key segments and no attention mask")
    batch, heads, width, _ = query.shape
    lengths = cu_seq_lens_q.diff().tolist()

    def segments(states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = states.transpose(1, 2).reshape(1, batch * width, states.shape[1], states.shape[3])
        return flat.transpose(1, 2).split(lengths, dim=2)

    outputs = [
        sdpa_attention_forward(module, q, k, v, None, **kwargs)[0]
        for q, k, v in zip(segments(query), segments(key), segments(value))
    ]
    return torch.cat(outputs, dim=1).view(batch, width, heads, -1), None


AttentionInterface.register("sdpa", segmented_sdpa_attention)
