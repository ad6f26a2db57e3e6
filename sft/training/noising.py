"""The noise of one micro-batch as the trainer draws it (`sft.loss.noise`, `sft.loss.objective`):
training keys on (seed, optimizer step, example id); evaluation on a fixed t grid and seed, so eval
loss is deterministic; complementary halves; per-block times for block diffusion."""

from __future__ import annotations

import torch

from sft.config import DiffusionSFTConfig
from sft.loss import noise, objective


def draw_noise(
    inputs: dict[str, torch.Tensor],
    args: DiffusionSFTConfig,
    step: int,
    training: bool,
    complement: torch.Tensor | None = None,
    blocks: torch.Tensor | None = None,
) -> objective.NoisedBatch:
    """Training draws each document's t and noise from (seed, step, example id); evaluation uses a
    fixed t grid and seed, so eval loss is deterministic. `complement` flags the second halves
    of complementary pairs. With `blocks`, every block draws its own t from hash(key, block)
    (evaluation: grid cell example id + block); the document's t is then their mean."""
    docs = inputs["example_ids"]
    draw = noise.sample_pair_t if complement is not None else noise.sample_t
    if training:
        keys = noise.example_keys(args.seed, step, docs)
        t = draw(keys, args.t_min)
    else:
        keys = noise.example_keys(args.eval_seed, 0, docs)
        t = noise.grid_t(docs, args.eval_t_grid, args.t_min)
    token_t = None
    if blocks is not None:
        doc_ids, maskable = inputs["doc_ids"], inputs["maskable"]
        owner = doc_ids.clamp(min=0)
        if training:
            token_t = draw(noise.block_keys(keys[owner], blocks), args.t_min)
        else:
            token_t = noise.grid_t(docs[owner] + blocks.clamp(min=0), args.eval_t_grid, args.t_min)
        sums = torch.zeros_like(t).index_add_(0, doc_ids[maskable], token_t[maskable])
        counts = torch.zeros_like(t).index_add_(0, doc_ids[maskable], torch.ones_like(token_t[maskable]))
        t = torch.where(counts > 0, sums / counts.clamp(min=1), t)
    return objective.add_noise(
        inputs["input_ids"],
        inputs["maskable"],
        inputs["tail"],
        inputs["doc_ids"],
        inputs["positions"],
        t,
        keys,
        mask_token_id=args.mask_token_id,
        weighting=args.weighting,
        cart_p=args.cart_p,
        tail_as_one=args.eos_tail == "one",
        complement=complement,
        token_t=token_t,
        blocks=blocks,
        block_size=args.block_size,
    )
