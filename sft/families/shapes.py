"""What a family tells the memory planner about one decoder layer beyond its standard dimensions:
whether q, k and v carry biases, and its MLP, dense or a mixture of experts (MoE).

`Family.layer_shape` reads a transformers config (as a dict); `read_layer_shape` reads the keys
transformers' own configs use: a dense MLP of `intermediate_size`, or routed experts
(`num_local_experts` / `num_experts` / `n_routed_experts`, `num_experts_per_tok`, each of
`moe_intermediate_size`, else `intermediate_size`) with optional shared experts that every token passes
(`shared_expert_intermediate_size`, Qwen2-MoE's, with a sigmoid gate; or `n_shared_experts` of the
expert width); q/k/v biases from
`qkv_bias` or `attention_bias`, else the family's default for its model type; per-head RMS norms on
q and k (Qwen3's) from `use_qk_norm`, else the family's default. A MoE model may keep
a dense MLP (`intermediate_size` wide) in some layers, as transformers builds them: Qwen-MoE's
`mlp_only_layers` and the layers off its `decoder_sparse_step`, the first `first_k_dense_replace`
layers of DeepSeek-style configs (`dense_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class MlpShape:
    """One decoder layer's MLP: dense (`experts` 0) or routed experts plus optional shared ones."""

    intermediate_size: int  # the dense MLP's width, or each routed expert's
    experts: int = 0  # routed experts (0: a dense MLP)
    experts_per_token: int = 0
    shared_intermediate_size: int = 0  # total width of the shared experts (0: none)
    shared_gate: bool = False  # a sigmoid gate (hidden -> 1) on the shared experts' output

    @property
    def active_width(self) -> int:
        """The MLP width one token runs through (what its activations scale with)."""
        if not self.experts:
            return self.intermediate_size
        return self.experts_per_token * self.intermediate_size + self.shared_intermediate_size

    def linear_shapes(self, hidden: int) -> list[tuple[int, int]]:
        """(in, out) of the MLP's `nn.Linear` layers (what LoRA's all-linear targets): the dense MLP's
        gate, up and down projections, or the shared experts' (transformers keeps routed experts and
        the router as fused parameters, not linear layers)."""
        width = self.shared_intermediate_size if self.experts else self.intermediate_size
        gate = [(hidden, 1)] if self.shared_gate else []
        return [(hidden, width), (hidden, width), (width, hidden), *gate] if width else []

    def params(self, hidden: int) -> int:
        """Parameters of the MLP: every routed expert and the router included."""
        linear = sum(a * b for a, b in self.linear_shapes(hidden))
        if not self.experts:
            return linear
        return linear + self.experts * 3 * hidden * self.intermediate_size + hidden * self.experts


@dataclass(frozen=True)
class LayerShape:
    """What a decoder layer holds besides attention's standard projections and the norms."""

    qkv_bias: bool
    mlp: MlpShape
    qk_norm: bool = False  # an RMS norm (head_dim weights) on q and on k
    dense_layers: int = 0  # layers of a MoE model whose MLP is dense: `dense_mlp`, set when any
    dense_mlp: MlpShape | None = None


def read_layer_shape(config: dict[str, Any], qkv_bias: bool = False, qk_norm: bool = False) -> LayerShape:
    """The layer shape of a transformers config (see the module docstring); `qkv_bias` and `qk_norm`
    are the defaults when the config has no key for them. Raises KeyError when the MLP width is missing."""
    bias = bool(config.get("qkv_bias", config.get("attention_bias", qkv_bias)))
    norm = bool(config.get("use_qk_norm", qk_norm))
    experts = next((int(config[k]) for k in _EXPERT_KEYS if config.get(k)), 0)
    if not experts:
        return LayerShape(bias, MlpShape(int(config["intermediate_size"])), norm)
    width = int(config.get("moe_intermediate_size") or config["intermediate_size"])
    gated = int(config.get("shared_expert_intermediate_size") or 0)
    shared = gated or int(config.get("n_shared_experts") or 0) * width
    mlp = MlpShape(width, experts, int(config.get("num_experts_per_tok") or 1), shared, bool(gated))
    dense = dense_layers(config)
    return LayerShape(bias, mlp, norm, dense, MlpShape(int(config["intermediate_size"])) if dense else None)


def dense_layers(config: dict[str, Any]) -> int:
    """How many layers of a MoE config transformers builds with a dense MLP (module docstring)."""
    only = set(config.get("mlp_only_layers") or ())
    step = int(config.get("decoder_sparse_step") or 1)
    first = int(config.get("first_k_dense_replace") or 0)
    layers = range(int(config["num_hidden_layers"]))
    return sum(1 for i in layers if i in only or (i + 1) % step or i < first)
