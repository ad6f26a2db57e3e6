"""Model families: how a checkpoint becomes a bidirectional transformers model with a mask token.

Each family module (`dream`, `llada`, `ar`, `remote`) provides `FAMILY`, a `Family` that knows how to detect
its checkpoints from config.json, load them into transformers' own classes (no remote code) and
whether logits are shifted. `load_model(settings)` picks the family (or takes `model.family`).
Adding a family touches this folder only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config import ModelSettings
from sft.errors import UserError
from sft.tokenizer_files import load_tokenizer_dir

FAMILY_KEY = "dlm_family"
"""config.json key recording the family of checkpoints this toolkit writes."""


@dataclass(frozen=True)
class Family:
    """One model family's behaviour."""

    name: str
    shift: bool  # logits at i-1 predict token i
    detect: Callable[[dict[str, Any]], bool]  # does this config.json belong to the family?
    load_tokenizer: Callable[[ModelSettings], PreTrainedTokenizerBase]
    # (settings, config.json, tokenizer) -> model; may add the mask token to the tokenizer
    load_model: Callable[[ModelSettings, dict[str, Any], PreTrainedTokenizerBase], PreTrainedModel]


@dataclass
class LoadedModel:
    """A model ready for diffusion training or sampling."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family
    mask_token_id: int
    eos_token_id: int  # the token of the EOS tail (the tokenizer's pad token, else its EOS)


def families() -> dict[str, Family]:
    from sft.families import ar, dream, llada, remote

    # detection tries them in this order: `remote` (anything with auto_map) only after the others
    return {f.name: f for f in (dream.FAMILY, llada.FAMILY, ar.FAMILY, remote.FAMILY)}


def read_config(name_or_path: str) -> dict[str, Any]:
    """config.json of a local directory or hub id, as a dict."""
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return _json_object(local)
    if Path(name_or_path).exists():
        raise UserError(
            "no config.json in model directory",
            file=name_or_path,
            expected="a Hugging Face model directory",
        )
    from transformers.utils import cached_file

    try:
        return _json_object(Path(cached_file(name_or_path, "config.json")))
    except OSError as err:
        raise UserError(
            f"cannot fetch the model config: {str(err).splitlines()[0]}",
            file=name_or_path,
            expected="a reachable hub id or a local directory",
        ) from None


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"not valid JSON: {err}", file=str(path), expected="a model config.json") from None
    if not isinstance(value, dict):
        raise UserError("not a JSON object", file=str(path), expected="a model config.json") from None
    return value


def require_safetensors(name_or_path: str) -> None:
    """Weights are read only from safetensors: a local directory without them is refused (pickle
    `*.bin`/`*.pt` files are never loaded); hub downloads pass `use_safetensors=True`."""
    if Path(name_or_path).is_dir():
        from sft.checkpoint_io import shard_files

        shard_files(name_or_path)  # raises a UserError naming any pickle files


def detect_family(config: dict[str, Any], name_or_path: str) -> Family:
    known = families()
    recorded = config.get(FAMILY_KEY)
    if recorded in known:
        return known[recorded]
    for family in known.values():
        if family.detect(config):
            return family
    raise UserError(
        f"unknown model_type {config.get('model_type')!r}",
        file=name_or_path,
        key="model.family",
        expected="a Dream, LLaDA, Qwen2 or Llama checkpoint, or model.family set explicitly",
    )


def resolve_family(settings: ModelSettings) -> tuple[Family, dict[str, Any]]:
    """The family of `settings.name_or_path` (detected or as set) and its config.json."""
    config = read_config(settings.name_or_path)
    if settings.family == "auto":
        return detect_family(config, settings.name_or_path), config
    return families()[settings.family], config


def load_family_tokenizer(settings: ModelSettings) -> tuple[Family, PreTrainedTokenizerBase, int]:
    """The family, its tokenizer (pad token set) and the EOS-tail token id, without the weights."""
    family, _ = resolve_family(settings)
    tokenizer = family.load_tokenizer(settings)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(
                "the tokenizer has neither a pad nor an EOS token",
                file=settings.tokenizer or settings.name_or_path,
                expected="an eos_token in tokenizer_config.json",
            )
        tokenizer.pad_token = tokenizer.eos_token
    return family, tokenizer, int(tokenizer.pad_token_id)


def load_model(settings: ModelSettings, seed: int = 0) -> LoadedModel:
    """Load (or, with `from_scratch`, initialise) a model and tokenizer as a diffusion LM."""
    family, config = resolve_family(settings)
    _, tokenizer, eos_id = load_family_tokenizer(settings)
    torch.manual_seed(seed)
    model = family.load_model(settings, config, tokenizer)
    mask_id = _mask_token_id(model, tokenizer, settings)
    model.config.mask_token_id = mask_id
    setattr(model.config, FAMILY_KEY, family.name)
    return LoadedModel(model, tokenizer, family, mask_id, eos_id)


def _mask_token_id(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ModelSettings
) -> int:
    configured = getattr(model.config, "mask_token_id", None)
    if configured is not None:
        return int(configured)
    token_id = tokenizer.convert_tokens_to_ids(settings.mask_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(
            f"the tokenizer has no mask token {settings.mask_token!r}",
            file=settings.name_or_path,
            key="model.mask_token",
            expected="a token of the vocabulary, or family 'ar' to add one",
        )
    return int(token_id)


# ----------------------------------------------------------------- helpers shared by the families
def load_tokenizer(settings: ModelSettings, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return load_tokenizer_dir(
        settings.tokenizer or settings.name_or_path, trust_remote_code=trust_remote_code
    )


def instantiate(
    model_class: type[PreTrainedModel], model_config: Any, settings: ModelSettings
) -> PreTrainedModel:
    """Build `model_class` from a (bidirectional) config: from scratch or with the weights."""
    attn = resolve_attn_implementation(settings.attn_implementation)
    dtype = None if settings.dtype == "auto" else getattr(torch, settings.dtype)
    model_config.is_causal = False
    model_config._attn_implementation = attn
    if settings.from_scratch:
        model = model_class(model_config)
        return model.to(dtype) if dtype is not None else model
    require_safetensors(settings.name_or_path)
    return model_class.from_pretrained(
        settings.name_or_path,
        config=model_config,
        dtype=dtype or "auto",
        attn_implementation=attn,
        use_safetensors=True,
    )


def resolve_attn_implementation(requested: str) -> str:
    """flash_attention_2 when installed, else SDPA with a warning."""
    if requested != "flash_attention_2":
        return requested
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        return requested
    import warnings

    warnings.warn("flash-attn is not installed (pip install 'dlm-sft[flash]'); using SDPA", stacklevel=2)
    return "sdpa"
