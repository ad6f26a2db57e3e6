"""Counter-based noise for the diffusion objective (`sft.loss.objective`), pure torch.

Every random number is a hash of (seed, step, example id, position), so an example's noise never
depends on how its global batch is split across gradient-accumulation micro-batches, data-parallel
ranks, padding or packing: `example_keys` → per-document times (`sample_t`, `sample_pair_t` for
complementary pairs, `grid_t` for evaluation) and per-token uniforms (`token_uniforms`,
`mask_tokens`). Block diffusion cuts each response into blocks (`block_index`) that draw their own
time from hash(document key, block) (`block_keys`).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF

_T_STREAM = _MASK32  # hash key of a document's `t` draw; token positions never reach it


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32; no product overflows int64)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def _combine(h: torch.Tensor, key: torch.Tensor | int) -> torch.Tensor:
    """Hash `key` into the running hash `h` (broadcasting)."""
    return _mix32((h * 0x01000193 + (torch.as_tensor(key, device=h.device) & _MASK32)) & _MASK32)


def _to_unit(h: torch.Tensor) -> torch.Tensor:
    """Map 32-bit hashes to float32 uniforms in [0, 1) with 24 bits of resolution."""
    return (h >> 8).to(torch.float32) / float(1 << 24)


def example_keys(seed: int, step: int, example_ids: torch.Tensor) -> torch.Tensor:
    """One random key per example: hash(seed, step, example id). Same shape as `example_ids`."""
    h = _mix32(torch.full_like(example_ids, seed & _MASK32, dtype=torch.int64))
    return _combine(_combine(h, step), example_ids.to(torch.int64))


def sample_t(keys: torch.Tensor, t_min: float) -> torch.Tensor:
    """Per-example time t = t_min + (1 - t_min)·u, u ~ U[0, 1). t_min = 0 reproduces Dream."""
    return t_min + (1.0 - t_min) * _to_unit(_combine(keys, _T_STREAM))


def sample_pair_t(keys: torch.Tensor, t_min: float) -> torch.Tensor:
    """t of a complementary pair: t_min + (1 - 2·t_min)·u, so that t and 1 - t are both >= t_min."""
    return t_min + (1.0 - 2.0 * t_min) * _to_unit(_combine(keys, _T_STREAM))


def grid_t(example_ids: torch.Tensor, grid_size: int, t_min: float) -> torch.Tensor:
    """Deterministic eval times: example k gets the midpoint of cell (k mod grid_size) of [t_min, 1]."""
    cell = (example_ids.to(torch.int64) % grid_size).to(torch.float32)
    return t_min + (1.0 - t_min) * (cell + 0.5) / grid_size


def token_uniforms(token_keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """U[0, 1) per token from its example's key and its position *within the example* (elementwise)."""
    return _to_unit(_combine(token_keys, positions.to(torch.int64)))


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    t: torch.Tensor,
    uniforms: torch.Tensor,
    mask_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each maskable token with probability `t` (per token, (B, L)). Returns (noisy ids, masked)."""
    masked = maskable & (uniforms < t)
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids), masked


_BLOCK_STREAM = 0x5BD1E995  # hash key of the block draws, distinct from every small block index


def block_index(
    maskable: torch.Tensor, doc_ids: torch.Tensor, positions: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Block of every token (R, L): (position − the document's prompt length) // B on maskable
    tokens (response and EOS tail), -1 on the prompt and on padding."""
    n_docs = int(doc_ids.max()) + 1 if (doc_ids >= 0).any() else 0
    prompt = (doc_ids >= 0) & ~maskable
    prompt_length = torch.zeros(n_docs, dtype=torch.long, device=doc_ids.device)
    prompt_length.index_add_(0, doc_ids[prompt], torch.ones_like(doc_ids[prompt]))
    offset = positions - prompt_length[doc_ids.clamp(min=0)]
    return torch.where(
        maskable, torch.div(offset, block_size, rounding_mode="floor"), torch.full_like(offset, -1)
    )


def block_keys(token_keys: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """One random key per (document, block): the document's key hashed with the block index."""
    return _combine(_combine(token_keys, _BLOCK_STREAM), blocks.to(torch.int64))
