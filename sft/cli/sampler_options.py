"""The sampler options `generate` and `eval` share: flags mirroring Dream's `diffusion_generate` (see
`sft/sampling/sampler.py`). Options left unset keep `SamplerSettings`' defaults, or with
`eval --preset` the preset's value."""

from __future__ import annotations

import argparse

from sft.errors import UserError
from sft.sampling.settings import ALGORITHMS, SAMPLER_OPTIONS, SamplerSettings

CHECKPOINT_HELP = "a model directory (training output, export), a LoRA adapter, or a hub id"


def add_sampler_options(parser: argparse.ArgumentParser, max_new_tokens: int | None) -> None:
    group = parser.add_argument_group("sampler (Dream's diffusion_generate options)")
    auto = "default: fits the task's longest reference answer" if max_new_tokens is None else None
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=auto or f"canvas length (default {max_new_tokens})",
    )
    group.add_argument("--steps", type=int, default=None, help="denoising steps (default: max-new-tokens)")
    group.add_argument("--temperature", type=float, default=None, help="0 = greedy, deterministic (default)")
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument(
        "--alg", choices=ALGORITHMS, default=None, help="which tokens to reveal (default maskgit_plus)"
    )
    group.add_argument(
        "--alg-temp", type=float, default=None, help="sample the revealed set (confidence algs)"
    )
    group.add_argument("--eps", type=float, default=None, help="last timestep (default 1e-3)")
    group.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks (LLaDA)")
    group.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="block-diffusion sampling with a KV cache (models trained with diffusion.block_size)",
    )
    group.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="also reveal every token above this confidence (Fast-dLLM)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for temperature > 0 and alg-temp")
    group.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def given_sampler_options(args: argparse.Namespace) -> dict[str, object]:
    """The sampler options set on the command line (None = not given)."""
    names = ("max_new_tokens", *SAMPLER_OPTIONS)
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def sampler_settings(args: argparse.Namespace, max_new_tokens: int) -> SamplerSettings:
    given = {k: v for k, v in given_sampler_options(args).items() if k in SAMPLER_OPTIONS}
    settings = SamplerSettings(**{"max_new_tokens": max_new_tokens, "steps": max_new_tokens, **given})
    try:
        settings.check()
    except ValueError as err:
        raise UserError(str(err), key="sampler options") from None
    return settings
