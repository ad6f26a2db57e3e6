"""Dream (Dream-org/Dream-v0-*-7B): Qwen2 weights, bidirectional attention, shifted logits.

Dream's config.json says `model_type: Dream` and points at remote code that hard-codes SDPA and
breaks peft; the weights use Qwen2's names, so they load into transformers' own `Qwen2ForCausalLM`
with `is_causal = False` instead (FlashAttention, gradient checkpointing and LoRA then just work).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from sft.config import ModelSettings
from sft.families import Family, instantiate, load_tokenizer

_REMOTE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")


def detect(config: dict[str, Any]) -> bool:
    return str(config.get("model_type", "")).lower() == "dream"


def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    qwen2_config = Qwen2Config(**{k: v for k, v in config.items() if k not in _REMOTE_KEYS})
    return instantiate(Qwen2ForCausalLM, qwen2_config, settings)


def tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    """Dream ships a `DreamTokenizer` (remote code) that is Qwen2's BPE: load it as Qwen2's."""
    directory = Path(settings.tokenizer or settings.name_or_path)
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared == "DreamTokenizer":
            from transformers import Qwen2Tokenizer

            return Qwen2Tokenizer.from_pretrained(str(directory))
    return load_tokenizer(settings)


FAMILY = Family(name="dream", shift=True, detect=detect, load_tokenizer=tokenizer, load_model=load_model)
