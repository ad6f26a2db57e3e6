"""Load a checkpoint for sampling or evaluation: a model directory or a LoRA adapter directory.

A checkpoint is a local directory or a hub id (read from its cached snapshot, `sft.hub`). A model
directory is anything `sft.families.load_model` reads: a training output (`runs/quickstart`,
whose config.json records `dlm_family` and `mask_token_id`), an exported checkpoint, or a Dream /
LLaDA / Qwen2 / Llama directory. An adapter directory (adapter_config.json) names its base model in
`base_model_name_or_path`; the base is loaded through `load_model` and the adapter applied with peft.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sft import hub
from sft.config import ModelSettings
from sft.errors import UserError
from sft.families.base import LoadedModel
from sft.families.loader import load_model

EXPECTED = "a model directory written by dlm-sft (train, quickstart, export) or a LoRA adapter directory"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_sampling(path: str | Path, device: str | None = None, dtype: str = "auto") -> LoadedModel:
    """The checkpoint at `path` as a `LoadedModel` in eval mode on `device` (default: cuda if any)."""
    directory = hub.model_dir(path)
    if not directory.is_dir():
        raise UserError("checkpoint directory not found", file=str(path), expected=EXPECTED)
    adapter_config = directory / "adapter_config.json"
    if adapter_config.is_file():
        loaded = _load_adapter(directory, adapter_config, dtype)
    elif (directory / "config.json").is_file():
        loaded = load_model(ModelSettings(name_or_path=str(directory), dtype=dtype))
    else:
        raise UserError("neither config.json nor adapter_config.json", file=str(path), expected=EXPECTED)
    loaded.model.to(device or default_device()).eval()
    return loaded


def _load_adapter(directory: Path, adapter_config: Path, dtype: str) -> LoadedModel:
    from peft import PeftModel

    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(
            "the adapter records no base model",
            file=str(adapter_config),
            key="base_model_name_or_path",
            expected="the base model's directory or hub id",
        )
    base = _base_with_weights(str(base), directory)
    has_tokenizer = (directory / "tokenizer_config.json").is_file()
    settings = ModelSettings(
        name_or_path=base, tokenizer=str(directory) if has_tokenizer else None, dtype=dtype
    )
    loaded = load_model(settings)
    loaded.model = PeftModel.from_pretrained(loaded.model, str(directory))
    return loaded


def _base_with_weights(base: str, adapter_dir: Path) -> str:
    """The recorded base, or the run's `base/` copy when the recorded one is a local directory
    without weights (a from-scratch run records its config directory; training saves the initial
    weights to `<output_dir>/base`)."""
    recorded = Path(base)
    has_weights = any(recorded.glob("*.safetensors")) or any(recorded.glob("*.bin"))
    saved = adapter_dir / "base"
    if recorded.is_dir() and not has_weights and (saved / "config.json").is_file():
        return str(saved)
    return base
