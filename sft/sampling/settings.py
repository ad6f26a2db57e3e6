"""The sampler's options as users pick them (CLI flags, lm-eval `--model_args`, presets, benchmarks),
checked without loading torch; `sft.sampling.sampler` runs them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@dataclass
class SamplerSettings:
    """The sampler options a user picks (CLI, eval, benchmarks); `kwargs()` feeds `diffusion_generate`."""

    max_new_tokens: int = 64
    steps: int = 64
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg: str = "maskgit_plus"
    alg_temp: float | None = None
    eps: float = 1e-3
    block_length: int | None = None
    threshold: float | None = None
    block_size: int | None = None

    def kwargs(self) -> dict[str, object]:
        return asdict(self)

    def check(self) -> None:
        """Raise ValueError for settings the sampler cannot run."""
        check_settings(**self.kwargs())


SAMPLER_OPTIONS = tuple(f.name for f in fields(SamplerSettings) if f.name != "max_new_tokens")
"""The sampler's options other than the canvas length (CLI flags, lm-eval `--model_args`, presets)."""


def check_settings(
    *,
    max_new_tokens: int,
    steps: int,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg: str,
    alg_temp: float | None,
    eps: float,
    block_length: int | None,
    threshold: float | None,
    block_size: int | None = None,
) -> None:
    if alg not in ALGORITHMS:
        raise ValueError(f"unknown alg {alg!r}; expected one of {', '.join(ALGORITHMS)}")
    if max_new_tokens < 0 or steps < 1:
        raise ValueError("max_new_tokens must be >= 0 and steps >= 1")
    if temperature < 0 or not 0 < eps < 1:
        raise ValueError("temperature must be >= 0 and eps in (0, 1)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if alg_temp is not None and alg_temp < 0:
        raise ValueError(f"alg_temp must be >= 0, got {alg_temp}")
    if block_length is not None:
        if block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {block_length}")
        blocks = max(-(-max_new_tokens // block_length), 1)
        if steps < blocks:
            raise ValueError(f"steps ({steps}) must be >= the number of blocks ({blocks})")
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if block_length is not None:
            raise ValueError(
                "block_size (block diffusion, KV cache) and block_length (LLaDA's blocks) exclude each other"
            )
        blocks = max(-(-max_new_tokens // block_size), 1)
        if steps < blocks:
            raise ValueError(f"steps ({steps}) must be >= the number of blocks ({blocks})")
    if threshold is not None and alg == "origin":
        raise ValueError("threshold needs a confidence alg (maskgit_plus, topk_margin or entropy)")


def block_schedule(steps: int, blocks: int) -> list[int]:
    """Steps per block: `steps` shared out evenly, earlier blocks taking the remainder."""
    return [steps // blocks + (b < steps % blocks) for b in range(blocks)]
