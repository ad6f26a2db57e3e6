"""Diffusion sampling with Dream's argument names: fill `max_new_tokens` mask tokens after a prompt.

    timesteps = linspace(1, eps, steps + 1); at step i (t = timesteps[i], s = timesteps[i+1]):
      alg="origin":        each masked token is revealed with probability 1 - s/t
      alg="maskgit_plus":  reveal the int(n_masked·(1 - s/t)) most confident tokens, confidence =
                           probability of the sampled token (`topk_margin`: top1 - top2;
                           `entropy`: negative entropy); with `alg_temp` the revealed set is sampled
                           from softmax(confidence / alg_temp) instead of taken top-k
    the last step reveals everything left. Revealed and prompt tokens never change.

Prompts may differ in length: they are left-padded, with attention masks and position ids so
that a padded prompt gives the same output as the prompt alone. Logits are shifted for
Dream/AR-initialised families (position i-1 predicts token i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, prompt + max_new_tokens)
    history: list[torch.Tensor] | None = None


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
    output_history: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Dream-style diffusion generation for left-padded prompts (B, P)."""
    if alg not in ALGORITHMS:
        raise ValueError(f"unknown alg {alg!r}; expected one of {', '.join(ALGORITHMS)}")
    device = input_ids.device
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    canvas = torch.full((batch, max_new_tokens), mask_token_id, dtype=input_ids.dtype, device=device)
    x = torch.cat([input_ids, canvas], dim=1)
    attention = torch.cat([attention_mask, torch.ones_like(canvas)], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    timesteps = torch.linspace(1, eps, steps + 1, device=device)
    history = [x.clone()] if output_history else None
    for i in range(steps):
        masked = x == mask_token_id
        masked[:, : input_ids.shape[1]] = False
        if not masked.any():
            break
        logits = model(input_ids=x, attention_mask=attention, position_ids=position_ids).logits
        if shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        t, s = timesteps[i], timesteps[i + 1]
        last = i == steps - 1
        confidence, tokens = sample_tokens(logits[masked], temperature, top_p, top_k, alg, generator)
        if alg == "origin":
            p_reveal = 1.0 if last else float(1 - s / t)
            reveal_flat = torch.rand(tokens.shape, device=device, generator=generator) < p_reveal
            reveal = torch.zeros_like(masked)
            reveal[masked] = reveal_flat
        else:
            scores = torch.full(masked.shape, float("-inf"), device=device)
            scores[masked] = confidence
            reveal = _choose(scores, masked, 1.0 if last else float(1 - s / t), alg_temp, generator)
        proposal = torch.full_like(x, mask_token_id)
        proposal[masked] = tokens
        x = torch.where(reveal, proposal, x)
        if history is not None:
            history.append(x.clone())
    return GenerationOutput(x, history)


def _choose(
    scores: torch.Tensor,
    masked: torch.Tensor,
    fraction: float,
    alg_temp: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Per row, pick int(n_masked · fraction) masked positions by confidence (top-k or sampled)."""
    reveal = torch.zeros_like(masked)
    counts = (masked.sum(-1).float() * fraction).long()
    for row in range(masked.shape[0]):
        k = int(counts[row])
        if k == 0:
            continue
        if alg_temp:
            probs = F.softmax(scores[row] / alg_temp, dim=-1)
            chosen = torch.multinomial(probs, k, replacement=False, generator=generator)
        else:
            chosen = scores[row].topk(k).indices
        reveal[row, chosen] = True
    return reveal


def cut_at_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """Tokens up to (not including) the first stop token."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i]
    return tokens
