"""Model shapes for planning: the dimensions that decide parameters and activations, from a
config.json (any family's layout) or from a family's built-in configs of the hub models it knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sft.errors import UserError
from sft.families import known_checkpoints
from sft.families.base import read_config
from sft.families.loader import find_family, known_config, release_family
from sft.families.shapes import MlpShape, read_layer_shape


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide a decoder-only transformer's parameter count and activations."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp: MlpShape  # dense or a mixture of experts (the family's `layer_shape`)
    tied_embeddings: bool
    qkv_bias: bool
    qk_norm: bool = False  # RMS norms on q and k (head_dim weights each)
    dtype: str = "float32"  # the checkpoint's own dtype (what `model.dtype: auto` loads)
    dense_layers: int = 0  # layers of a MoE model with a dense MLP instead: `dense_mlp`, set when any
    dense_mlp: MlpShape | None = None

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_mlps(self) -> list[tuple[MlpShape, int]]:
        """Each kind of MLP the decoder layers hold, with how many layers hold it."""
        kinds = [(self.mlp, self.num_layers - self.dense_layers)]
        if self.dense_layers:
            kinds.append((self.dense_mlp, self.dense_layers))
        return kinds

    def linear_shapes(self, mlp: MlpShape | None = None) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of a decoder layer with `mlp` (default the model's; routed
        experts are not linear layers)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.kv_dim
        return [(h, q), (h, kv), (h, kv), (q, h), *(mlp or self.mlp).linear_shapes(h)]

    def layer_params(self, mlp: MlpShape | None = None) -> int:
        """Parameters of a decoder layer with `mlp` (default the model's)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.kv_dim
        attention = 2 * h * q + 2 * h * kv + ((q + 2 * kv) if self.qkv_bias else 0)
        attention += 2 * self.head_dim if self.qk_norm else 0
        return attention + (mlp or self.mlp).params(h) + 2 * h

    def params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        layers = sum(count * self.layer_params(mlp) for mlp, count in self.layer_mlps())
        return embeddings + layers + self.hidden_size

    def lora_params(self, rank: int) -> int:
        """LoRA parameters with `target_modules: all-linear` (every linear layer but the LM head)."""
        kinds = self.layer_mlps()
        return sum(count * sum(rank * (a + b) for a, b in self.linear_shapes(mlp)) for mlp, count in kinds)


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A `ModelShape` from a config.json (transformers' keys, or a family's release layout)."""
    release = release_family(config)
    if release is not None:
        config = release.native_config(config, "config.json")
    family = find_family(config)
    layer_shape = family.layer_shape if family is not None else read_layer_shape
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        layer = layer_shape(config)
        return ModelShape(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            mlp=layer.mlp,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=layer.qkv_bias,
            qk_norm=layer.qk_norm,
            dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32").removeprefix("torch."),
            dense_layers=layer.dense_layers,
            dense_mlp=layer.dense_mlp,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"config.json lacks a model dimension ({err})",
            key="model.name_or_path",
            expected=f"a {known_checkpoints()} config.json",
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
