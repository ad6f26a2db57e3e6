"""Diffusion sampling with Dream's argument names: fill the mask tokens of a canvas, a few per step.

The canvas is the prompt followed by `max_new_tokens` mask tokens; mask tokens inside the prompt
are filled too (that is how infilling works, as in Dream). One loop serves every option:

    blocks: the generated span is cut into blocks of `block_length` (default: one block, Dream);
            block b's positions become candidates only once blocks < b are complete (LLaDA's
            semi-autoregressive decoding). Masks inside the prompt belong to the first block.
            `steps` is shared out evenly over the blocks.
    in each block, timesteps = linspace(1, eps, k + 1) for its k steps; at step i (t, s):
      alg="origin":        each candidate is revealed with probability 1 - s/t
      alg="maskgit_plus":  reveal the int(n_candidates·(1 - s/t)) most confident candidates,
                           confidence = probability of the sampled token (`topk_margin`: top1 -
                           top2; `entropy`: negative entropy). With `alg_temp` the revealed set
                           is sampled from softmax(confidence / alg_temp) instead (Gumbel top-k).
                           LLaDA's "low-confidence remasking" is maskgit_plus with blocks.
      threshold:           additionally reveal every candidate whose confidence exceeds
                           `threshold`, and at least one per step (Fast-dLLM's parallel
                           decoding); a block that is complete early ends early.
    the block's last step reveals everything left. Revealed and prompt tokens never change.
    block_size:          block-diffusion sampling for models trained with `diffusion.block_size`
                         (`sft.sampling.block_sampler`): the same steps and reveal rules, but each
                         forward runs only the current block against a KV cache of the prompt and
                         the finished blocks. `block_length` keeps LLaDA's cache-less blocks.

Prompts may differ in length: they are left-padded, with attention masks and position ids so a
padded prompt gives the same output as the prompt alone (padding is never a candidate). Logits are
shifted for Dream/AR-initialised families (position i-1 predicts token i).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from sft.loss.objective import shift_logits
from sft.sampling.block_sampler import SamplerStats, block_generate
from sft.sampling.settings import block_schedule, check_settings


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, prompt + max_new_tokens)
    history: list[torch.Tensor] | None = None  # the canvas before the first and after every step


def _filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the first token above top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg: str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a token per row of `logits` (N, V); return (confidence, token)."""
    if temperature > 0:
        logits = logits / temperature
    logits = _filter_logits(logits.float(), top_p, top_k)
    probs = logits.softmax(-1)
    if temperature > 0:
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    else:
        tokens = probs.argmax(-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs.clamp(min=1e-10))).sum(-1)
    else:
        confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    return confidence, tokens


@torch.no_grad()
def diffusion_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    mask_token_id: int,
    shift: bool = True,
    max_new_tokens: int = 64,
    steps: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "maskgit_plus",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    block_length: int | None = None,
    threshold: float | None = None,
    block_size: int | None = None,
    output_history: bool = False,
    return_dict_in_generate: bool = True,
    generator: torch.Generator | None = None,
    stop_token_ids: Iterable[int] = (),
    stats: SamplerStats | None = None,
) -> GenerationOutput | torch.Tensor:
    """Dream-style diffusion generation for left-padded prompts (B, P).

    Returns a `GenerationOutput` (sequences, history) or, with `return_dict_in_generate=False`,
    just the sequences (B, P + max_new_tokens), as Dream does. (Dream's default is False; here it
    is True, which earlier callers rely on.) The sequences keep the EOS tail: cut at the first
    stop token with `cut_at_stop` / `trim_after_eos`. `stop_token_ids` lets the block sampler stop
    once every row has one; `stats` (a `SamplerStats`) counts the forwards.
    """
    check_settings(
        max_new_tokens=max_new_tokens,
        steps=steps,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        alg=alg,
        alg_temp=alg_temp,
        eps=eps,
        block_length=block_length,
        threshold=threshold,
        block_size=block_size,
    )
    if block_size is not None:
        if (input_ids == mask_token_id).any():
            raise ValueError("block_size sampling continues a prompt; it does not fill masks inside it")

        def choose_step(
            block_ids: torch.Tensor, candidates: torch.Tensor, logits: torch.Tensor, step: int, n: int
        ) -> torch.Tensor:
            timesteps = torch.linspace(1, eps, n + 1)
            confidence, tokens = sample_tokens(logits[candidates], temperature, top_p, top_k, alg, generator)
            fraction = 1.0 if step == n - 1 else float(1 - timesteps[step + 1] / timesteps[step])
            reveal = _choose(candidates, confidence, fraction, alg, alg_temp, threshold, generator)
            proposal = torch.full_like(block_ids, mask_token_id)
            proposal[candidates] = tokens
            return torch.where(reveal, proposal, block_ids)

        history = [] if output_history else None
        x = block_generate(
            model,
            input_ids,
            torch.ones_like(input_ids) if attention_mask is None else attention_mask,
            mask_token_id=mask_token_id,
            shift=shift,
            max_new_tokens=max_new_tokens,
            block_size=block_size,
            steps=steps,
            choose_step=choose_step,
            stop_token_ids=tuple(stop_token_ids),
            stats=stats,
            history=history,
        )
        return GenerationOutput(x, history) if return_dict_in_generate else x
    device = input_ids.device
    batch, prompt_width = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    canvas = torch.full((batch, max_new_tokens), mask_token_id, dtype=input_ids.dtype, device=device)
    x = torch.cat([input_ids, canvas], dim=1)
    attention = torch.cat([attention_mask.to(input_ids.dtype), torch.ones_like(canvas)], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    # Block of each column: prompt columns (infill masks) belong to block 0.
    length = block_length or max(max_new_tokens, 1)
    block_of = (torch.arange(x.shape[1], device=device) - prompt_width).clamp(min=0) // length
    blocks = int(block_of.max()) + 1
    history = [x.clone()] if output_history else None
    for block, block_steps in enumerate(block_schedule(steps, blocks)):
        in_block = (block_of == block)[None, :] & attention.bool()
        timesteps = torch.linspace(1, eps, block_steps + 1, device=device)
        for i in range(block_steps):
            candidates = (x == mask_token_id) & in_block
            if not candidates.any():
                break
            logits = model(input_ids=x, attention_mask=attention, position_ids=position_ids).logits
            if stats is not None:
                stats.add_forward(x.shape[1], x.shape[1])
            if shift:
                logits = shift_logits(logits)
            confidence, tokens = sample_tokens(logits[candidates], temperature, top_p, top_k, alg, generator)
            t, s = timesteps[i], timesteps[i + 1]
            fraction = 1.0 if i == block_steps - 1 else float(1 - s / t)
            reveal = _choose(candidates, confidence, fraction, alg, alg_temp, threshold, generator)
            proposal = torch.full_like(x, mask_token_id)
            proposal[candidates] = tokens
            x = torch.where(reveal, proposal, x)
            if history is not None:
                history.append(x.clone())
    if stats is not None:
        stats.generated += max_new_tokens
    if not return_dict_in_generate:
        return x
    return GenerationOutput(x, history)


def _choose(
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    fraction: float,
    alg: str,
    alg_temp: float | None,
    threshold: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The candidate positions (B, L) to reveal this step.

    `origin`: each with probability `fraction`. Otherwise, per row, the int(n · fraction) best by
    confidence (top-k, or sampled without replacement from softmax(confidence / alg_temp) by the
    Gumbel top-k trick), plus, with `threshold`, every candidate above it and at least one.
    """
    if alg == "origin":
        reveal = torch.zeros_like(candidates)
        draws = torch.rand(confidence.shape, device=confidence.device, generator=generator)
        reveal[candidates] = draws < fraction
        return reveal
    scores = torch.full(candidates.shape, float("-inf"), device=confidence.device)
    scores[candidates] = confidence.float()
    ranking = scores
    if alg_temp:
        uniform = torch.rand(confidence.shape, device=confidence.device, generator=generator)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        ranking = scores.clone()
        ranking[candidates] = confidence.float() / alg_temp + gumbel
    count = (candidates.sum(-1).float() * fraction).long()
    if threshold is not None:
        count = count.clamp(min=1)
    rank = ranking.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    reveal = (rank < count[:, None]) & candidates
    if threshold is not None:
        reveal |= candidates & (scores > threshold)
    return reveal


def infill(
    model: torch.nn.Module,
    prefix_ids: list[list[int]],
    suffix_ids: list[list[int]],
    span_length: int,
    *,
    mask_token_id: int,
    pad_token_id: int,
    **sampling: object,
) -> list[list[int]]:
    """Fill `span_length` tokens between each prefix and suffix; returns the filled spans.

    Each row is `prefix + [mask] * span_length + suffix`, left-padded into one batch and decoded
    with `max_new_tokens=0`; prefix and suffix tokens are never changed.
    """
    rows = [p + [mask_token_id] * span_length + s for p, s in zip(prefix_ids, suffix_ids)]
    ids, attention = left_pad(rows, pad_token_id)
    device = next(model.parameters()).device
    sampling = {**sampling, "max_new_tokens": 0, "return_dict_in_generate": False}
    out = diffusion_generate(
        model, ids.to(device), attention.to(device), mask_token_id=mask_token_id, **sampling
    )
    spans = []
    for row, suffix in enumerate(suffix_ids):
        start = ids.shape[1] - len(suffix) - span_length
        spans.append(out[row, start : start + span_length].tolist())
    return spans


def left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids, attention_mask), both (B, longest)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row)
            attention[i, width - len(row) :] = 1
    return ids, attention


def cut_at_stop(tokens: list[int], stop_ids: Iterable[int]) -> list[int]:
    """Tokens up to (not including) the first stop token."""
    stops = set(stop_ids)
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i]
    return tokens


def trim_after_eos(sequences: torch.Tensor, start: int, eos_token_id: int) -> torch.Tensor:
    """Copy of `sequences` where every generated token (columns >= start) after the first EOS is EOS."""
    generated = sequences[:, start:]
    seen = (generated == eos_token_id).long().cumsum(-1) > 0
    return torch.cat([sequences[:, :start], generated.masked_fill(seen, eos_token_id)], dim=1)
