"""SDAR (JetLM/SDAR-*-Chat; arXiv 2510.06303): Qwen3 weights trained as a block-diffusion LM.

SDAR's release layout: config.json with `model_type: sdar`, `architectures: [SDARForCausalLM]`,
`auto_map` to the hub's `configuration_sdar.py` / `modeling_sdar.py` (which import flash-attn and
use flex attention), Qwen3's config keys plus `block_size` (4 for the 1.7B chat model),
`mask_token_id` (151669) and training flags (`fuse_cross_entropy`, `micro_forward`, ...); weights
under Qwen3's names (`model.layers.N.self_attn.{q,k,v,o}_proj`, `q_norm`, `k_norm`, untied
`lm_head`). Its training loss reads the hidden state of a masked position itself (no shift) under
BD3-LMs' [x_t ; x_0] block mask. The weights therefore load into transformers' own
`Qwen3ForCausalLM` with `is_causal = False` (no remote code), and dlm-sft's block-diffusion
objective and block sampler (`diffusion.block_size`, `--block-size`, with the checkpoint's
`block_size`) apply. One difference: SDAR counts blocks from the first token of the packed
sequence, dlm-sft from the first response token. Export writes SDAR's config.json back.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from sft.config import ModelSettings
from sft.families.base import FAMILY_KEY, MASK_TOKEN, Family, instantiate, load_tokenizer
from sft.families.shapes import LayerShape, read_layer_shape

AUTO_MAP = {
    "AutoConfig": "configuration_sdar.SDARConfig",
    "AutoModel": "modeling_sdar.SDARModel",
    "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
}
BLOCK_KEY = "dlm_block_size"
"""Key under which a native (transformers) config keeps SDAR's `block_size`."""
_REMOTE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "attn_implementation")
_SDAR_ONLY = (
    "block_size",
    "debug",
    "ep_size",
    "fuse_cross_entropy",
    "micro_forward",
    "skip_checkpoint",
    "use_deepep",
)
_NATIVE_ONLY = (
    "rope_parameters",
    "layer_types",
    "is_causal",
    "dtype",
    FAMILY_KEY,
    BLOCK_KEY,
    "_name_or_path",
)
_SDAR_DEFAULTS = {
    "attn_implementation": "flex_attention",
    "debug": False,
    "ep_size": 1,
    "fuse_cross_entropy": True,
    "micro_forward": False,
    "skip_checkpoint": False,
    "use_deepep": False,
    "use_cache": False,
}
"""SDAR-1.7B-Chat's values of the keys its remote `SDARConfig` reads beyond Qwen3's."""

KNOWN_CONFIGS = {
    "JetLM/SDAR-1.7B-Chat": {  # its config.json
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 6144,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
}


def detect(config: dict[str, Any]) -> bool:
    return str(config.get("model_type", "")).lower() == "sdar"


def layer_shape(config: dict[str, Any]) -> LayerShape:
    """Qwen3's layers: no q/k/v biases, RMS norms on q and k."""
    return read_layer_shape(config, qk_norm=True)


def qwen3_config(config: dict[str, Any]) -> Qwen3Config:
    """transformers' Qwen3 config for an SDAR config.json (SDAR-only training flags dropped)."""
    return Qwen3Config(**{k: v for k, v in config.items() if k not in (*_REMOTE_KEYS, *_SDAR_ONLY)})


def native_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    native = {**qwen3_config(config).to_dict(), FAMILY_KEY: "sdar"}
    if config.get("block_size") is not None:
        native[BLOCK_KEY] = int(config["block_size"])
    return native


def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    return instantiate(Qwen3ForCausalLM, qwen3_config(config), settings)


def sdar_config(qwen3: dict[str, Any], template: dict[str, Any] | None = None) -> dict[str, Any]:
    """An SDAR-layout config.json for a Qwen3 config (dict): SDAR's `model_type`, `architectures`,
    `auto_map`, `block_size` and training flags (the base's own values when `template` is its SDAR
    config), `rope_theta` / `rope_scaling` / `torch_dtype` as its remote `SDARConfig` reads them."""
    rope = dict(qwen3.get("rope_parameters") or {})
    config = {k: v for k, v in qwen3.items() if k not in _NATIVE_ONLY}
    config["rope_theta"] = float(rope.pop("rope_theta", qwen3.get("rope_theta", 10000.0)))
    rope_type = rope.pop("rope_type", "default")
    config["rope_scaling"] = None if rope_type == "default" else {"rope_type": rope_type, **rope}
    if qwen3.get("dtype") is not None:
        config["torch_dtype"] = str(qwen3["dtype"]).removeprefix("torch.")
    config.update(_SDAR_DEFAULTS)
    config.update(model_type="sdar", architectures=["SDARForCausalLM"], auto_map=AUTO_MAP)
    config["block_size"] = int(qwen3.get(BLOCK_KEY) or 4)
    for key in ("model_type", "architectures", "auto_map", "block_size", *_SDAR_DEFAULTS):
        if template and key in template:
            config[key] = template[key]
    return config


def usage(where: str) -> list[str]:
    """Model-card lines: load SDAR's layout with transformers alone, or with SDAR's own code."""
    return [
        "```python",
        "from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'config = Qwen3Config.from_pretrained("{where}")  # SDAR is Qwen3 trained as block diffusion',
        "config.is_causal = False",
        f'model = Qwen3ForCausalLM.from_pretrained("{where}", config=config)',
        "```",
        "",
        f"Sample it block by block: `dlm-sft generate {where} --block-size 4`, or load it with SDAR's "
        "own remote code (which needs flash-attn).",
    ]


FAMILY = Family(
    name="sdar",
    titles=("SDAR",),
    shift=False,
    detect=detect,
    load_tokenizer=load_tokenizer,
    load_model=load_model,
    is_release_layout=detect,
    release_model_type="qwen3",
    native_config=native_config,
    release_config=sdar_config,
    mask_tokens=("<|MASK|>", MASK_TOKEN),
    known_configs=KNOWN_CONFIGS,
    layer_shape=layer_shape,
    export_classes={"qwen3": Qwen3ForCausalLM.__name__},
    release_usage=usage,
)
