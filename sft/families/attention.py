"""Attention inputs for padded and packed rows, per attention implementation.

A padded batch (one document per row) keeps the ordinary 2-D mask. A packed row holds several
documents that must not attend to each other; transformers separates them by restarting
`position_ids` only under flash attention and only at batch size 1, so a packed batch gets:

- `flash_attention_2`, `torch_varlen` and `sdpa` (`PACKED_VARLEN`): no mask, and the
  variable-length keywords transformers defines for flash-attn (`cu_seq_lens_q/k`,
  `max_length_q/k`): the document boundaries over the batch's R·L tokens read as one sequence,
  each row's padding a segment of its own. Flash-attn runs its varlen kernel on them at any batch
  size. `torch_varlen` (registered here through transformers' `AttentionInterface`) hands them to
  torch's own varlen FlashAttention (`torch.nn.attention.varlen.varlen_attn`, CUDA, torch >= 2.10),
  bidirectional. For SDPA this module registers (name `sdpa`) transformers' own SDPA run once per
  segment when those keywords are present, so attention over a packed row costs Σ length² rather
  than L²; without them (padded batches, generation) both are transformers' SDPA unchanged.
- `eager`, the plain reference implementation: a block-diagonal additive 4-D mask (padding
  attends only to itself, so no row of the mask is empty).

Where the varlen keywords are given they alone say which tokens attend to which (with the model's
`is_causal`): a mask transformers derives from the restarted `position_ids` (causal models only,
e.g. an AR baseline) describes the same documents and is not used.

Any other implementation (e.g. `flex_attention`, which ignores the varlen keywords) would let packed
documents attend to each other: packed rows under it are a `UserError`. Block diffusion builds its
own mask over packed documents (`block_diffusion_attention` picks the implementation).
`model.attn_implementation: auto` picks flash-attn, else `torch_varlen` on CUDA, else SDPA
(`resolve_attn_implementation`).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from sft.errors import UserError

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

TORCH_VARLEN = "torch_varlen"
VARLEN_DTYPES = (torch.float16, torch.bfloat16)
"""The dtypes torch's `varlen_attn` (aten's flash kernels) takes."""
PACKED_VARLEN = ("flash_attention_2", TORCH_VARLEN, "sdpa")
"""Implementations that keep packed documents apart given the varlen keywords."""


def attention_inputs(
    batch: dict[str, torch.Tensor], attn_implementation: str, dtype: torch.dtype
) -> dict[str, torch.Tensor | int | None]:
    """`attention_mask`, `position_ids` and, for packed rows, the varlen keywords of the model call."""
    doc_ids = batch["doc_ids"]
    packed = batch["example_ids"].shape[0] > doc_ids.shape[0]
    if not packed:
        return {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}
    if attn_implementation in PACKED_VARLEN:
        return {"attention_mask": None, "position_ids": batch["positions"], **varlen_keywords(doc_ids)}
    if attn_implementation != "eager":
        raise UserError(
            f"{attn_implementation!r} attention would let packed documents attend to each other",
            key="model.attn_implementation",
            expected=f"auto, eager or one of {', '.join(PACKED_VARLEN)} with data.batching: pack",
        )
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
    if not same_segments:
        raise ValueError("segmented SDPA needs the same query and key segments")
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


def torch_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """With `cu_seq_lens_q`, torch's `varlen_attn` over the flattened batch (bidirectional unless the
    model says `is_causal`, as a diffusion LM never does; grouped K/V heads repeated where this
    torch's kernel has no `enable_gqa`); float32 inputs, which the kernel does not take, run the
    per-segment SDPA instead. Without them transformers' SDPA.

    query (B, H, L, D), key/value (B, H_kv, L, D) -> (B, L, H, D), as every attention function.
    """
    segmented = cu_seq_lens_q is not None and query.dtype in VARLEN_DTYPES
    if not segmented or varlen_attn is None:
        return segmented_sdpa_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            cu_seq_lens_q,
            cu_seq_lens_k,
            max_length_q,
            max_length_k,
            scaling=scaling,
            dropout=dropout,
            **kwargs,
        )
    if dropout:
        raise ValueError("torch_varlen attention has no dropout")
    batch, heads, width, dim = query.shape
    q, k, v = (s.transpose(1, 2).reshape(batch * width, s.shape[1], dim) for s in (query, key, value))
    parameters = kernel_parameters(varlen_attn)
    options: dict[str, object] = {}
    if k.shape[1] != heads:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            k, v = (s.repeat_interleave(heads // s.shape[1], dim=1) for s in (k, v))
    if "scale" in parameters:
        options["scale"] = scaling
    elif scaling is not None and not math.isclose(scaling, dim**-0.5):
        raise ValueError(
            "this torch's varlen_attn has no `scale`; the model's scaling is not 1/sqrt(head_dim)"
        )
    causal = kwargs.get("is_causal")  # the model passes its config's; transformers' default otherwise
    causal = getattr(module, "is_causal", True) if causal is None else causal
    if "window_size" in parameters:  # torch >= 2.11: (-1, -1) full attention, (-1, 0) causal
        options["window_size"] = (-1, 0) if causal else (-1, -1)
    else:  # torch 2.10
        options["is_causal"] = causal
    out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, **options)
    return out.view(batch, width, heads, dim), None


@functools.lru_cache(maxsize=4)
def kernel_parameters(kernel: Callable) -> frozenset[str]:
    """The keyword names `kernel` accepts (torch's `varlen_attn` gained some across releases)."""
    return frozenset(inspect.signature(kernel).parameters)


def resolve_attn_implementation(requested: str) -> str:
    """`auto`: flash-attn when installed and on CUDA, else `torch_varlen` on CUDA, else SDPA.
    `flash_attention_2` without flash-attn and `torch_varlen` without CUDA fall back to SDPA with
    a warning."""
    from transformers.utils import is_flash_attn_2_available

    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda and is_flash_attn_2_available():
            return "flash_attention_2"
        return TORCH_VARLEN if cuda and varlen_attn is not None else "sdpa"
    if requested == "flash_attention_2" and not is_flash_attn_2_available():
        warnings.warn("flash-attn is not installed (pip install 'dlm-sft[flash]'); using SDPA", stacklevel=2)
        return "sdpa"
    if requested == TORCH_VARLEN and not (cuda and varlen_attn is not None):
        warnings.warn("torch_varlen needs CUDA and torch >= 2.10; using SDPA", stacklevel=2)
        return "sdpa"
    return requested


def block_diffusion_attention(requested: str, loaded: str, device: torch.device) -> str:
    """The attention of a block-diffusion run, whose [x_t ; x_0] row needs the mask of
    `sft.loss.block_diffusion`: with `auto` (`requested`) flex-attention's sparse block mask on
    CUDA, SDPA's dense one elsewhere; else the `loaded` implementation, where it can take that
    mask and train on `device` (flex-attention has no backward pass on the CPU)."""
    if requested == "auto":
        return "flex_attention" if device.type == "cuda" else "sdpa"
    if loaded in ("flash_attention_2", TORCH_VARLEN):
        raise UserError(
            f"block diffusion needs an attention mask (noisy block ⊕ clean prefix), which {loaded} "
            "cannot take",
            key="model.attn_implementation",
            expected="auto, flex_attention, sdpa or eager with diffusion.block_size",
        )
    if loaded == "flex_attention" and device.type == "cpu":
        raise UserError(
            "flex_attention has no backward pass on the CPU",
            key="model.attn_implementation",
            expected="auto, sdpa or eager on the CPU",
        )
    return loaded


AttentionInterface.register("sdpa", segmented_sdpa_attention)
AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
AttentionMaskInterface.register(TORCH_VARLEN, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
