"""Unknown families through the checkpoint's own remote code: an explicit, warned opt-in.

A config.json that no family recognises can still be loaded with the Python files it ships
(`auto_map`), but that runs code from the model directory, so it happens only when the recipe sets
`model.trust_remote_code: true`, and always with a warning. Such a model keeps whatever attention
its code implements (it may be causal, ignore `attn_implementation` or break peft); shift is assumed
as for AR-initialised models. Dream and LLaDA never need this: they load into transformers' classes.
"""

from __future__ import annotations

import warnings
from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sft.config import ModelSettings
from sft.families.base import Family, load_tokenizer, require_safetensors, torch_dtype


def detect(config: dict[str, Any]) -> bool:
    """Any config.json with remote code; consulted only after the known families."""
    return bool(config.get("auto_map"))


def _warn(settings: ModelSettings) -> None:
    """The loader lets this family load only with `model.trust_remote_code` (`runs_remote_code`)."""
    warnings.warn(
        f"running the remote code shipped with {settings.name_or_path} (model.trust_remote_code is set)",
        stacklevel=3,
    )


def tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    _warn(settings)
    return load_tokenizer(settings, trust_remote_code=True)


def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    _warn(settings)
    auto_map = config.get("auto_map") or {}
    model_class = AutoModelForCausalLM if "AutoModelForCausalLM" in auto_map else AutoModel
    dtype = torch_dtype(settings)
    if settings.from_scratch:
        model_config = AutoConfig.from_pretrained(settings.name_or_path, trust_remote_code=True)
        model = model_class.from_config(model_config, trust_remote_code=True)
        return model.to(dtype) if dtype is not None else model
    require_safetensors(settings.name_or_path)
    return model_class.from_pretrained(
        settings.name_or_path, trust_remote_code=True, dtype=dtype or "auto", use_safetensors=True
    )


FAMILY = Family(
    name="remote",
    titles=(),
    shift=True,
    detect=detect,
    load_tokenizer=tokenizer,
    load_model=load_model,
    runs_remote_code=True,
)
