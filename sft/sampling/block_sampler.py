"""Block-diffusion sampling: semi-autoregressive, block by block, with a KV cache of finished blocks.

For models trained with `diffusion.block_size: B` (the conditional of `sft/loss/block_diffusion.py`):

    prefill:  the prompt runs once (bidirectional within itself); its keys/values are cached
    block b:  B mask tokens at positions after the text so far; each denoising step runs only
              these B tokens against the cache (`steps` shared out over the blocks, the
              `alg`/`threshold` rules of `sampler._choose` inside the block; a block whose
              tokens are all revealed ends early); the noisy block's keys/values are dropped
              from the cache after every step
    commit:   the finished (clean) block runs once more to append its keys/values to the cache
              — the clean block attends to the cache and itself, as x_0 does in training — and
              its last logits predict the next block's first token (shift families)
    stop:     once every row holds a stop token, the rest of the canvas is filled with it

A forward therefore processes at most B tokens instead of the whole prompt + canvas. `SamplerStats`
counts forwards and how many attended keys came from the cache (printed by the quickstart).
Prompts may differ in length (left padding, 2-D attention masks and position ids).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from sft.sampling.settings import block_schedule


@dataclass
class SamplerStats:
    """Counters filled by the samplers (pass one as `stats=`): forwards, the canvas tokens decided
    per row, the query tokens run per row and the keys they attended per row (cached + new)."""

    forwards: int = 0
    generated: int = 0
    queries: int = 0
    keys: int = 0

    def add_forward(self, queries: int, keys: int) -> None:
        self.forwards += 1
        self.queries += queries
        self.keys += keys

    @property
    def forwards_per_token(self) -> float:
        return self.forwards / max(self.generated, 1)

    @property
    def cache_share(self) -> float:
        """Share of the attended keys that were read from the KV cache rather than recomputed."""
        return 1.0 - self.queries / max(self.keys, 1)

    def line(self) -> str:
        return (
            f"{self.forwards} forwards for {self.generated} generated tokens per row "
            f"({self.forwards_per_token:.2f} forwards per token); {self.queries / max(self.forwards, 1):.1f} "
            f"tokens run per forward, {100 * self.cache_share:.0f}% of attended keys read from the KV cache"
        )


def _forward(model, ids, attention, positions, cache, stats: SamplerStats | None) -> torch.Tensor:
    if stats is not None:
        stats.add_forward(ids.shape[1], attention.shape[1])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    keywords = {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "use_cache": True}
    return model(**keywords, **{cache_keyword(type(base)): cache}).logits


@functools.cache
def cache_keyword(model_class: type) -> str:
    """The KV cache's keyword of `model_class.forward`: `cache` from transformers 5.2x on (where
    `past_key_values` still works but warns), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def block_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_token_id: int,
    shift: bool,
    max_new_tokens: int,
    block_size: int,
    steps: int,
    choose_step,
    stop_token_ids: tuple[int, ...] = (),
    stats: SamplerStats | None = None,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sequences (B, P + max_new_tokens) for left-padded prompts (B, P).

    `choose_step(block_ids, candidates, logits, step, block_steps)` returns the new block ids
    (the sampler's token sampling and reveal rule; see `sampler.diffusion_generate`)."""

    batch, prompt_width = input_ids.shape
    device = input_ids.device
    attention = attention_mask.to(input_ids.dtype)
    lengths = attention.sum(-1)
    cache = DynamicCache(config=getattr(model, "config", None))
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = _forward(model, input_ids, attention, positions, cache, stats)
    last_logits = logits[:, -1]
    out = torch.cat(
        [input_ids, torch.full((batch, max_new_tokens), mask_token_id, dtype=input_ids.dtype, device=device)],
        1,
    )
    n_blocks = max(-(-max_new_tokens // block_size), 1) if max_new_tokens else 0
    schedule = block_schedule(steps, n_blocks) if n_blocks else []
    stops = torch.tensor(sorted(stop_token_ids), dtype=out.dtype, device=device)
    done = 0
    for block_steps in schedule:
        width = min(block_size, max_new_tokens - done)
        block_ids = torch.full((batch, width), mask_token_id, dtype=out.dtype, device=device)
        block_positions = lengths[:, None] + done + torch.arange(width, device=device)[None, :]
        block_attention = torch.cat([attention, torch.ones_like(block_ids)], dim=1)
        for step in range(block_steps):
            candidates = block_ids == mask_token_id
            if not candidates.any():
                break
            logits = _forward(model, block_ids, block_attention, block_positions, cache, stats)
            cache.crop(-width)  # the noisy block never stays in the cache
            if shift:
                logits = torch.cat([last_logits[:, None], logits[:, :-1]], dim=1)
            block_ids = choose_step(block_ids, candidates, logits, step, block_steps)
            if history is not None:
                history.append(
                    torch.cat(
                        [out[:, : prompt_width + done], block_ids, out[:, prompt_width + done + width :]], 1
                    )
                )
        out[:, prompt_width + done : prompt_width + done + width] = block_ids
        done += width
        if stops.numel() and torch.isin(out[:, prompt_width : prompt_width + done], stops).any(-1).all():
            first_stop = _first_stop(out[:, prompt_width:], stops)
            out[:, prompt_width + done :] = first_stop[:, None]
            break
        if done < max_new_tokens:  # commit the clean block to the cache
            logits = _forward(model, block_ids, block_attention, block_positions, cache, stats)
            last_logits = logits[:, -1]
            attention = block_attention
    if stats is not None:
        stats.generated += max_new_tokens
    return out


def _first_stop(generated: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """Each row's first stop token (every row has one)."""
    is_stop = torch.isin(generated, stops)
    first = is_stop.long().argmax(-1)
    return generated.gather(1, first[:, None]).squeeze(1)
