"""Model shapes for planning: the dimensions that decide parameters and activations, from a
config.json (any family's layout) or from a family's built-in configs of the hub models it knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sft.errors import UserError
from sft.families.base import read_config
from sft.families.loader import known_config, release_family


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide a decoder-only transformer's parameter count and activations."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    qkv_bias: bool
    dtype: str = "float32"  # the checkpoint's own dtype (what `model.dtype: auto` loads)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.kv_dim, self.intermediate_size
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def layer_params(self) -> int:
        bias = self.num_heads * self.head_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linear_shapes()) + bias + 2 * self.hidden_size

    def params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return embeddings + self.num_layers * self.layer_params() + self.hidden_size

    def lora_params(self, rank: int) -> int:
        """LoRA parameters with `target_modules: all-linear` (every linear layer but the LM head)."""
        return self.num_layers * sum(rank * (a + b) for a, b in self.linear_shapes())


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A `ModelShape` from a config.json (Qwen2/Llama keys, or a family's release layout)."""
    family = release_family(config)
    if family is not None:
        config = family.native_config(config, "config.json")
    model_type = str(config.get("model_type", "")).lower()
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return ModelShape(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
            dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32").removeprefix("torch."),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"config.json lacks a model dimension ({err})",
            key="model.name_or_path",
            expected="a Qwen2, Llama, Dream or LLaDA config.json",
        ) from None


def model_shape(name_or_path: str) -> tuple[ModelShape, str]:
    """The model's shape and where it came from: a local config.json, the built-in table, or the hub
    cache."""
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return shape_from_config(yaml.safe_load(local.read_text(encoding="utf-8"))), f"{local}"
    known = known_config(name_or_path)
    if known is not None:
        return shape_from_config(known), f"built-in shape of {name_or_path} (no weights needed)"
    return shape_from_config(read_config(name_or_path)), f"config.json of {name_or_path}"
