"""What every model family shares: the `Family` record, reading config.json, tokenizers without
remote code, building a transformers class from a bidirectional config, and mask-token lookup.

A family module (`dream`, `llada`, `ar`, `remote`) fills one `Family` with its behaviour (detection,
loading, shift) and its *formats*: how its release layout's config.json and weight names map to
transformers' own classes and back (for export: which class each model type exports as), which tokens
may be its mask token, the config of the hub models it knows and the shape of its layers (for planning
without a download). `sft/families/__init__.py` registers the families; `sft/families/loader.py` picks
one and loads a model with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Tokenizer

from sft import hub
from sft.config import ModelSettings
from sft.errors import UserError
from sft.families.attention import resolve_attn_implementation
from sft.families.shapes import LayerShape, read_layer_shape
from sft.families.weights import shard_files

FAMILY_KEY = "dlm_family"
"""config.json key recording the family of checkpoints this toolkit writes."""

MASK_TOKEN = "<|mask|>"
"""The mask token of AR-initialised models (added when missing) and Dream's tokenizer."""


def _same(value: Any, *_: Any) -> Any:
    return value


@dataclass(frozen=True)
class Family:
    """One model family: its behaviour and its formats."""

    name: str
    titles: tuple[str, ...]  # the checkpoints it takes, as messages name them ("Dream",); empty: unlisted
    shift: bool  # logits at i-1 predict token i
    detect: Callable[[dict[str, Any]], bool]  # does this config.json belong to the family?
    load_tokenizer: Callable[[ModelSettings], PreTrainedTokenizerBase]
    # (settings, config.json, tokenizer) -> model; may add the mask token to the tokenizer
    load_model: Callable[[ModelSettings, dict[str, Any], PreTrainedTokenizerBase], PreTrainedModel]
    runs_remote_code: bool = False  # loading runs the checkpoint's own code: needs model.trust_remote_code
    # (model, tokenizer, mask token): add the mask token where the vocabulary lacks one; None: it cannot
    add_mask_token: Callable[[PreTrainedModel, PreTrainedTokenizerBase, str], None] | None = None
    # ---- formats: the family's release layout (None: it has none beyond transformers' own)
    is_release_layout: Callable[[dict[str, Any]], bool] | None = None
    release_model_type: str | None = None  # the transformers model_type its release layout can hold
    # (config.json in any of the family's layouts, its path for messages) -> transformers config dict
    native_config: Callable[[dict[str, Any], str], dict[str, Any]] = _same
    # (transformers config dict, the base's own release config or None) -> release config.json
    release_config: Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]] = _same
    native_name: Callable[[str], str] = _same  # release weight name -> transformers name
    release_name: Callable[[str], str] = _same  # transformers weight name -> release name
    mask_tokens: tuple[str, ...] = (MASK_TOKEN,)  # tried in order when no config names the id
    known_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # hub id -> config.json keys
    generation_defaults: dict[str, Any] = field(default_factory=dict)  # generation_config.json extras
    # transformers model_type -> the causal-LM class an export of that type names (`architectures`);
    # a model type missing here cannot be exported
    export_classes: dict[str, str] = field(default_factory=dict)
    # transformers config dict -> q/k/v biases and the MLP (dense or experts), for the memory planner
    layer_shape: Callable[[dict[str, Any]], LayerShape] = read_layer_shape
    # checkpoint location -> markdown lines: how to load the release layout (for model cards)
    release_usage: Callable[[str], list[str]] | None = None


@dataclass
class LoadedModel:
    """A model ready for diffusion training or sampling."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family
    mask_token_id: int
    eos_token_id: int  # the token of the EOS tail (the tokenizer's pad token, else its EOS)


# ----------------------------------------------------------------------------------- config.json
def read_config(name_or_path: str) -> dict[str, Any]:
    """config.json of a local directory or hub id (its cached snapshot, fetched when missing), as a dict."""
    directory = hub.model_dir(name_or_path, weights=False)
    if not (directory / "config.json").is_file():
        raise UserError(
            "no config.json in model directory" if directory.exists() else "model directory not found",
            file=str(name_or_path),
            expected="a Hugging Face model directory or hub id",
        )
    return _json_object(directory / "config.json")


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"not valid JSON: {err}", file=str(path), expected="a model config.json") from None
    if not isinstance(value, dict):
        raise UserError("not a JSON object", file=str(path), expected="a model config.json") from None
    return value


# ------------------------------------------------------------------------------------- tokenizers
def load_tokenizer_dir(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer directory or hub id (its cached snapshot) without running code shipped with it.

    Dream's tokenizer_config.json names a `DreamTokenizer` (remote code) that is Qwen2's byte-level
    BPE, so it is read with transformers' own `Qwen2Tokenizer`; everything else goes through
    `AutoTokenizer` with `trust_remote_code` off unless the caller opts in (a model directory whose
    config.json has an `auto_map` would otherwise make transformers ask interactively)."""
    directory = hub.model_dir(name_or_path, weights=False)
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared == "DreamTokenizer":
            return Qwen2Tokenizer.from_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)


def load_tokenizer(settings: ModelSettings, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer (`model.tokenizer`, else the model's); `model.trust_remote_code` lets a
    tokenizer run the code it ships (never needed for Dream's)."""
    return load_tokenizer_dir(
        settings.tokenizer or settings.name_or_path,
        trust_remote_code=trust_remote_code or settings.trust_remote_code,
    )


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of `token`, or None when the vocabulary lacks it."""
    found = tokenizer.convert_tokens_to_ids(token)
    return None if found is None or found == tokenizer.unk_token_id else int(found)


# ----------------------------------------------------------------------------------------- models
def require_safetensors(name_or_path: str) -> None:
    """Weights are read only from safetensors: a local directory without them is refused (pickle
    `*.bin`/`*.pt` files are never loaded); hub downloads pass `use_safetensors=True`."""
    if Path(name_or_path).is_dir():
        shard_files(name_or_path)  # raises a UserError naming any pickle files


def torch_dtype(settings: ModelSettings) -> torch.dtype | None:
    """`model.dtype` as a torch dtype; None for `auto` (the checkpoint's own)."""
    return None if settings.dtype == "auto" else getattr(torch, settings.dtype)


def instantiate(
    model_class: type[PreTrainedModel], model_config: Any, settings: ModelSettings, **load_kwargs: Any
) -> PreTrainedModel:
    """Build `model_class` from a config made bidirectional: from scratch or with the weights
    (`load_kwargs` go to `from_pretrained`, e.g. LLaDA's `key_mapping`)."""
    attn = resolve_attn_implementation(settings.attn_implementation)
    dtype = torch_dtype(settings)
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
        **load_kwargs,
    )
