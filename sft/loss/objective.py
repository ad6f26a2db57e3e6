"""The masked-diffusion SFT objective, as small pure-torch functions (after Dream's and LLaDA's SFT code).

One training example (a *document*) is `prompt + response (+ EOS tail)`. Per document a time `t`
is drawn; every *maskable* token (response and supervised EOS tail, never the prompt) is replaced
by the mask token with probability `t`; the model predicts the clean token at each masked
position; the loss is a weighted cross-entropy over masked positions only, normalised over the
global batch:

    loss = Σ_docs scale_d · Σ_{j masked in d} w_j · CE(logits at src(j), x_j)  /  denominator

    t_d    = t_min + (1 - t_min) · u_d              u_d ~ U[0, 1)
    masked = maskable ∧ (u_j < t_d)
    src(j) = j - 1 (shift, Dream / AR-initialised; 0 for j = 0)  or  j (LLaDA)
    w_j    = 1/t (inv_t) | 1 - t (linear) | 1 (uniform) | CART(clean, p)_j (cart)
             × EOS-tail factor (policy `one`: 1 / #masked tail tokens of the document)

Complementary masks (`complementary_pairs`): every document appears twice in its micro-batch, once
with the mask above and once with its complement (maskable ∧ ¬masked, time 1 - t, so its weights
are those of a draw at 1 - t and each half is an unbiased estimate of the same loss); then
t = t_min + (1 - 2·t_min)·u so both halves keep t ≥ t_min. Every maskable token is supervised
exactly once per pair, and the pair counts twice in the denominator.

Block diffusion (`noise.block_index`, `noise.block_keys`, `block_cart_weights`; the model inputs are built by
`sft.loss.block_diffusion`): the maskable tokens of a document are cut into blocks of B from the first
response token, each block draws its own t from hash(document key, block), and CART sees, for a
token of block b, the prompt, the clean blocks < b and its block's unmasked tokens.

A batch is rows of tokens; each token belongs to a document (`doc_ids`, -1 for padding) at a
position within it (`positions`). A padded batch has one document per row, a packed batch several:
every function here works per document, so packing never changes an example's loss.

The random draws are counter-based (`sft.loss.noise`), so an example's noise never depends on how
its global batch is split. Nothing here knows about models, trainers or files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from sft.loss.noise import token_uniforms

Weighting = Literal["inv_t", "linear", "uniform", "cart"]
"""Loss weight of a masked token (see `token_weights`); `DiffusionSFTConfig.weighting` takes these."""
Normalization = Literal["supervised", "sequence"]
"""What the summed loss is divided by (see `doc_loss_scale`)."""
EosTail = Literal["all", "first_n", "one", "none"]
"""How the EOS tail after a response is trained (`sft.data.collate` lays it out; `one` is
`eos_tail_factor`'s `tail_as_one`)."""


# --------------------------------------------------------------------------- counter-based noise


# --------------------------------------------------------------------------- masking and shift


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Align logits with targets for shifted models: out[:, i] = logits[:, i-1], out[:, 0] = logits[:, 0]."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def prediction_source(target_cols: torch.Tensor, target_positions: torch.Tensor, shift: bool) -> torch.Tensor:
    """Column whose output predicts the token at `target_cols`: i-1 when shifted, except at the
    first token of a document (position 0), which predicts itself as in Dream."""
    if not shift:
        return target_cols
    return torch.where(target_positions > 0, target_cols - 1, target_cols)


# --------------------------------------------------------------------------- weights
def cart_weights(clean: torch.Tensor, p: float) -> torch.Tensor:
    """Dream's context-adaptive token weights (CART) for one document per row.

    w_j = Σ_{i clean, i≠j} ½·p·(1-p)^{|i-j|-1} at every position j that is not clean; 0 where clean.
    `clean` is a (B, L) bool tensor (prompt, unmasked response and unmasked EOS tail; never padding).

    The sum is two one-sided geometric convolutions of the clean indicator (left and right
    context), done with FFTs in float64: O(L log L) time and O(L) memory, never an L×L matrix.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"cart p must be in (0, 1], got {p}")
    length = clean.shape[1]
    c = clean.to(torch.float64)
    lags = torch.arange(length, dtype=torch.float64, device=clean.device)
    kernel = torch.where(lags > 0, (1.0 - p) ** (lags - 1), torch.zeros_like(lags))  # r^(m-1)
    n = 2 * length
    spectrum = torch.fft.rfft(kernel, n=n)

    def one_sided(x: torch.Tensor) -> torch.Tensor:  # Σ_{i<j} x_i r^(j-i-1)
        return torch.fft.irfft(torch.fft.rfft(x, n=n) * spectrum, n=n)[:, :length]

    both = one_sided(c) + one_sided(c.flip(1)).flip(1)
    weights = (0.5 * p * both).clamp(min=0.0).to(torch.float32)
    return torch.where(clean, torch.zeros_like(weights), weights)


def per_document(
    fn: Callable[[torch.Tensor], torch.Tensor],
    values: torch.Tensor,
    doc_ids: torch.Tensor,
    positions: torch.Tensor,
    n_docs: int,
) -> torch.Tensor:
    """Apply a row-wise `fn` to each document alone: scatter tokens into a (documents, length)
    matrix (padded with False), apply `fn`, gather the results back to the tokens' places."""
    real = doc_ids >= 0
    docs = torch.zeros(
        n_docs, int(positions[real].max()) + 1 if real.any() else 1, dtype=values.dtype, device=values.device
    )
    docs[doc_ids[real], positions[real]] = values[real]
    out = torch.zeros(values.shape, dtype=torch.float32, device=values.device)
    out[real] = fn(docs)[doc_ids[real], positions[real]]
    return out


def token_weights(
    weighting: Weighting,
    t: torch.Tensor,
    clean: torch.Tensor,
    doc_ids: torch.Tensor,
    positions: torch.Tensor,
    n_docs: int,
    cart_p: float = 0.1,
) -> torch.Tensor:
    """Per-token loss weight (B, L) for the scheme; `t` is per token. Only masked positions are used."""
    if weighting == "cart":
        return per_document(lambda c: cart_weights(c, cart_p), clean, doc_ids, positions, n_docs)
    per_token = {"inv_t": lambda: 1.0 / t, "linear": lambda: 1.0 - t, "uniform": lambda: torch.ones_like(t)}
    if weighting not in per_token:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(get_args(Weighting))}")
    return per_token[weighting]().to(torch.float32)


def eos_tail_factor(
    masked: torch.Tensor, tail: torch.Tensor, doc_ids: torch.Tensor, n_docs: int, tail_as_one: bool
) -> torch.Tensor:
    """Extra factor on EOS-tail tokens: with `tail_as_one` the masked tail tokens of a document share
    one token's weight (each gets 1 / #masked tail tokens); otherwise every factor is 1."""
    ones = torch.ones(masked.shape, dtype=torch.float32, device=masked.device)
    if not tail_as_one:
        return ones
    masked_tail = masked & tail
    counts = torch.zeros(n_docs, dtype=torch.float32, device=masked.device)
    counts.index_add_(0, doc_ids[masked_tail], torch.ones_like(doc_ids[masked_tail], dtype=torch.float32))
    per_token = counts.clamp(min=1.0)[doc_ids.clamp(min=0)]
    return torch.where(tail, 1.0 / per_token, ones)


# --------------------------------------------------------------------------- block diffusion


def block_cart_weights(
    masked: torch.Tensor,
    doc_ids: torch.Tensor,
    positions: torch.Tensor,
    blocks: torch.Tensor,
    block_size: int,
    n_docs: int,
    p: float,
) -> torch.Tensor:
    """CART weights (`cart_weights`) of each token as the model sees its block: the clean
    context is the prompt, every earlier block (clean) and the unmasked tokens of its own block;
    later blocks are not seen. One virtual row per (document, block): (Σ blocks, longest doc)."""
    real = doc_ids >= 0
    width = int(positions[real].max()) + 1 if real.any() else 1
    doc_masked = torch.zeros(n_docs, width, dtype=torch.bool, device=masked.device)
    doc_masked[doc_ids[real], positions[real]] = masked[real]
    n_blocks = torch.zeros(n_docs, dtype=torch.long, device=masked.device)
    n_blocks.scatter_reduce_(0, doc_ids[real], blocks[real] + 1, reduce="amax")
    first = torch.full((n_docs,), width, dtype=torch.long, device=masked.device)  # first response position
    in_response = real & (blocks >= 0)
    first.scatter_reduce_(0, doc_ids[in_response], positions[in_response], reduce="amin")
    length = torch.zeros(n_docs, dtype=torch.long, device=masked.device)
    length.scatter_reduce_(0, doc_ids[real], positions[real] + 1, reduce="amax")
    row_start = torch.cumsum(n_blocks, 0) - n_blocks  # first virtual row of each document
    owner = torch.repeat_interleave(torch.arange(n_docs, device=masked.device), n_blocks)
    block = torch.arange(owner.shape[0], device=masked.device) - row_start[owner]
    start = first[owner] + block * block_size
    end = torch.minimum(start + block_size, length[owner])
    cols = torch.arange(width, device=masked.device)[None, :]
    own_block = (cols >= start[:, None]) & (cols < end[:, None])
    clean = (cols < start[:, None]) | (own_block & ~doc_masked[owner])
    weights = cart_weights(clean, p)
    out = torch.zeros(masked.shape, dtype=torch.float32, device=masked.device)
    at = in_response
    out[at] = weights[row_start[doc_ids[at]] + blocks[at], positions[at]]
    return out


# --------------------------------------------------------------------------- loss
def doc_loss_scale(supervised: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Per-document factor on its summed token losses: 1 (÷ global supervised tokens) or
    1 / its supervised tokens (LLaDA: per-sequence mean, then mean over the global batch)."""
    if normalization == "supervised":
        return torch.ones_like(supervised, dtype=torch.float32)
    if normalization == "sequence":
        return 1.0 / supervised.to(torch.float32).clamp(min=1.0)
    raise ValueError(
        f"unknown normalization {normalization!r}; expected one of {', '.join(get_args(Normalization))}"
    )


def doc_denominator(supervised: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Each document's share of the global denominator: its supervised tokens, or 1 (one sequence)."""
    if normalization == "supervised":
        return supervised.to(torch.float32)
    return (supervised > 0).to(torch.float32)


# --------------------------------------------------------------------------- complementary masks
ROW_KEYS = ("input_ids", "attention_mask", "doc_ids", "positions", "maskable", "tail")
DOC_KEYS = ("example_ids", "supervised")


def complementary_pairs(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each document twice: the rows repeated below themselves, the copies' documents numbered
    D..2D-1. Returns (the doubled batch, `complement` (2D,) bool: True for the second copies)."""
    n_docs = batch["example_ids"].shape[0]
    doubled = dict(batch)
    for key in ROW_KEYS:
        if key in batch:
            copy = batch[key]
            if key == "doc_ids":
                copy = torch.where(copy >= 0, copy + n_docs, copy)
            doubled[key] = torch.cat([batch[key], copy])
    for key in DOC_KEYS:
        doubled[key] = torch.cat([batch[key], batch[key]])
    complement = torch.arange(2 * n_docs, device=batch["example_ids"].device) >= n_docs
    return doubled, complement


@dataclass
class NoisedBatch:
    """A batch after the forward process: what the model sees and what the loss needs."""

    noisy_ids: torch.Tensor  # (B, L) input ids with masked tokens replaced by the mask id
    masked: torch.Tensor  # (B, L) bool
    t: torch.Tensor  # (B, L) each token's document time
    weights: torch.Tensor  # (B, L) float32 loss weight of each position (used where masked)
    doc_t: torch.Tensor  # (D,) each document's time


def add_noise(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    tail: torch.Tensor,
    doc_ids: torch.Tensor,
    positions: torch.Tensor,
    doc_t: torch.Tensor,
    doc_keys: torch.Tensor,
    *,
    mask_token_id: int,
    weighting: Weighting,
    cart_p: float,
    tail_as_one: bool,
    complement: torch.Tensor | None = None,
    token_t: torch.Tensor | None = None,
    blocks: torch.Tensor | None = None,
    block_size: int | None = None,
) -> NoisedBatch:
    """The forward process and its loss weights in one call (the trainer's single entry point).

    `doc_t` and `doc_keys` are per document (D,); `doc_ids`/`positions` place each token. Documents
    flagged in `complement` (D,) bool take the complement of the mask their (t, key) draws, at time
    1 - t (see `complementary_pairs`). Block diffusion passes each token's block time `token_t`
    (R, L; then `doc_t` is only reported) and, for CART, `blocks` and `block_size`."""
    owner = doc_ids.clamp(min=0)
    t = doc_t[owner] if token_t is None else token_t
    uniforms = token_uniforms(doc_keys[owner], positions)
    masked = maskable & (uniforms < t)
    if complement is not None:
        flipped = complement[owner]
        masked = torch.where(flipped, maskable & ~masked, masked)
        t = torch.where(flipped, 1.0 - t, t)
        doc_t = torch.where(complement, 1.0 - doc_t, doc_t)
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    n_docs = doc_t.shape[0]
    clean = (doc_ids >= 0) & ~masked
    if blocks is not None and weighting == "cart":
        assert block_size is not None, "block CART needs the block size"
        weights = block_cart_weights(masked, doc_ids, positions, blocks, block_size, n_docs, cart_p)
    else:
        weights = token_weights(weighting, t, clean, doc_ids, positions, n_docs, cart_p)
    weights = weights * eos_tail_factor(masked, tail, doc_ids, n_docs, tail_as_one)
    return NoisedBatch(noisy, masked, t, weights, doc_t)


def masked_token_weights(
    noised: NoisedBatch,
    doc_ids: torch.Tensor,
    supervised: torch.Tensor,
    normalization: Normalization,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each masked position's factor in the loss of the module docstring, scale_d · w_j ÷ denominator,
    (N,) in `noised.masked.nonzero()` order: the loss is Σ_j factor_j · CE_j (the fused LM head,
    `sft.loss.linear_cross_entropy`, computes that sum). `supervised` (D,) is each document's supervised
    tokens; `denominator` the global batch's (see `doc_denominator`, at least 1); None uses this
    batch's own (evaluation)."""
    rows, cols = noised.masked.nonzero(as_tuple=True)
    scale = doc_loss_scale(supervised, normalization)
    if denominator is None:
        denominator = doc_denominator(supervised, normalization).sum().clamp(min=1)
    return noised.weights[rows, cols] * scale[doc_ids[rows, cols]] / denominator


def noise_stats(noised: NoisedBatch, tail: torch.Tensor, maskable: torch.Tensor) -> torch.Tensor:
    """Sums to log (add them over ranks, then divide): [masked tokens, Σ document t, documents,
    EOS-tail tokens, maskable tokens]."""
    return torch.stack(
        [
            noised.masked.sum().float(),
            noised.doc_t.float().sum(),
            torch.tensor(float(noised.doc_t.shape[0]), device=noised.doc_t.device),
            tail.sum().float(),
            maskable.sum().float(),
        ]
    ).detach()
