"""LLaDA (GSAI-ML/LLaDA-8B-*): a LLaMA-like bidirectional model trained *without* shift.

Checkpoints in LLaMA layout (as this toolkit saves them, with `dlm_family: llada`) load into
transformers' `LlamaForCausalLM` with `is_causal = False`. LLaDA's own OLMo-style release format
(`model_type: llada`, weights under `model.transformer.`) needs a weight-name mapping that is not
implemented yet; such a directory is refused with a clear error rather than loaded wrongly.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sft.config import ModelSettings
from sft.errors import UserError
from sft.families import Family, instantiate, load_tokenizer


def detect(config: dict[str, Any]) -> bool:
    return str(config.get("model_type", "")).lower() == "llada"


def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    if config.get("model_type") != "llama":
        raise UserError(
            "LLaDA's original (OLMo-style) checkpoint layout cannot be read yet",
            file=settings.name_or_path,
            key="model.name_or_path",
            expected="a LLaDA checkpoint in LLaMA layout (model_type: llama)",
        )
    return instantiate(LlamaForCausalLM, AutoConfig.from_pretrained(settings.name_or_path), settings)


FAMILY = Family(
    name="llada", shift=False, detect=detect, load_tokenizer=load_tokenizer, load_model=load_model
)
