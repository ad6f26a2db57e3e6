"""LLaDA (GSAI-ML/LLaDA-8B-*): a LLaMA-like bidirectional model trained *without* shift.

Two layouts load into transformers' `LlamaForCausalLM` with `is_causal = False`:
- LLaMA layout (`model_type: llama`, `dlm_family: llada`), as this toolkit saves a trained LLaDA;
- LLaDA's own release layout (`model_type: llada`, remote code `LLaDAModelLM`): OLMo-style config keys
  (`d_model`, `n_heads`, `n_kv_heads`, `n_layers`, `mlp_hidden_size`, `embedding_size`, ...) and weights
  under `model.transformer.` (`wte`, `blocks.N.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out,
  attn_norm,ff_norm}`, `ln_f`, `ff_out`). The names are renamed while loading (transformers'
  `key_mapping`), shard by shard; export writes them back with `to_llada_name` and `llada_config`.

In LLaDA's `LLaDALlamaBlock` the MLP is `ff_out(act(ff_proj(x)) * up_proj(x))`: `ff_proj` is LLaMA's
`gate_proj`, `up_proj` its `up_proj` and the block's `ff_out` its `down_proj`; the model-level `ff_out`
is the LM head (absent with `weight_tying`). RoPE (`rotate_half` on the two halves of each head) and
RMSNorm match LLaMA's, so the weights need renaming only, no permutation. Features LLaMA lacks
(ALiBi, QK layer norm, biases, scaled logits, block groups, other activations) are refused.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sft.config import ModelSettings
from sft.errors import UserError
from sft.families.base import FAMILY_KEY, Family, instantiate, load_tokenizer, token_id

MASK_TOKEN = "<|mdm_mask|>"
MASK_TOKEN_ID = 126336  # LLaDA-8B's mask token, used when neither config nor tokenizer name one

BLOCK_NAMES = {  # LLaDA block module -> LLaMA decoder-layer module
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}
TOP_NAMES = {  # LLaDA model-level module -> LLaMA module
    "model.transformer.wte": "model.embed_tokens",
    "model.transformer.ln_f": "model.norm",
    "model.transformer.ff_out": "lm_head",
}
_LLADA_BLOCK = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(\w+)")
_LLAMA_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(\w+)")

# What LLaDA's LLaMA-like architecture needs: key -> (value required, ModelConfig default when absent)
_REQUIRED = {
    "block_type": ("llama", "sequential"),
    "activation_type": ("silu", "swiglu"),
    "layer_norm_type": ("rms", "default"),
    "rope": (True, False),
    "alibi": (False, False),
    "attention_layer_norm": (False, False),
    "include_bias": (False, False),
    "include_qkv_bias": (False, False),
    "input_emb_norm": (False, False),
    "scale_logits": (False, False),
    "block_group_size": (1, 1),
    "layer_norm_with_affine": (True, True),
}
_DEFAULT_CONFIG: dict[str, Any] = {  # LLaDA-8B's config.json apart from the model's dimensions
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        "AutoModel": "modeling_llada.LLaDAModelLM",
    },
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "embedding_dropout": 0.0,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mlp_ratio": 4,
    "model_type": "llada",
    "multi_query_attention": None,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rope": True,
    "rope_full_precision": True,
    "scale_logits": False,
    "use_cache": False,
}


def detect(config: dict[str, Any]) -> bool:
    return str(config.get("model_type", "")).lower() == "llada"


def is_llada_layout(config: dict[str, Any]) -> bool:
    """Is this config.json LLaDA's own (OLMo-style) layout rather than LLaMA's?"""
    return detect(config) and "d_model" in config


def native_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """transformers' Llama config (as a dict) for a LLaDA-layout config.json."""
    values = LlamaConfig(**llama_config(config, source)).to_dict()
    values["torch_dtype"] = config.get("torch_dtype", "bfloat16")
    return {**values, FAMILY_KEY: "llada"}


_LLADA_8B = {  # d_model 4096, 32 layers, 32 heads (no GQA), mlp_hidden_size 12288, embedding_size 126464
    "model_type": "llama",
    "vocab_size": 126464,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "intermediate_size": 12288,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
KNOWN_CONFIGS = {"GSAI-ML/LLaDA-8B-Base": _LLADA_8B, "GSAI-ML/LLaDA-8B-Instruct": _LLADA_8B}


# ------------------------------------------------------------------------------------ weight names
def to_llama_name(name: str) -> str:
    """`model.transformer.blocks.3.ff_proj.weight` -> `model.layers.3.mlp.gate_proj.weight`."""
    block = _LLADA_BLOCK.fullmatch(name)
    if block and block.group(2) in BLOCK_NAMES:
        return f"model.layers.{block.group(1)}.{BLOCK_NAMES[block.group(2)]}.{block.group(3)}"
    module, _, leaf = name.rpartition(".")
    if module in TOP_NAMES:
        return f"{TOP_NAMES[module]}.{leaf}"
    raise UserError(
        f"unknown LLaDA weight {name!r}", expected="LLaDALlamaBlock weights under model.transformer."
    )


def to_llada_name(name: str) -> str:
    """The inverse of `to_llama_name`."""
    layer = _LLAMA_LAYER.fullmatch(name)
    if layer:
        for llada, llama in BLOCK_NAMES.items():
            if layer.group(2) == llama:
                return f"model.transformer.blocks.{layer.group(1)}.{llada}.{layer.group(3)}"
    module, _, leaf = name.rpartition(".")
    for llada, llama in TOP_NAMES.items():
        if module == llama:
            return f"{llada}.{leaf}"
    raise UserError(
        f"LLaMA weight {name!r} has no LLaDA name", expected="a LLaMA decoder without extra modules"
    )


def key_mapping() -> dict[str, str]:
    """Regex renames (LLaDA -> LLaMA) for `from_pretrained(key_mapping=...)`."""
    mapping = {
        rf"^model\.transformer\.blocks\.(\d+)\.{llada}\.": rf"model.layers.\1.{llama}."
        for llada, llama in BLOCK_NAMES.items()
    }
    mapping.update({rf"^{re.escape(llada)}\.": f"{llama}." for llada, llama in TOP_NAMES.items()})
    return mapping


# ----------------------------------------------------------------------------------------- configs
def llama_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """LlamaConfig keyword arguments for a LLaDA-layout config.json (refusing what LLaMA cannot do)."""
    for key, (required, default) in _REQUIRED.items():
        value = config.get(key, default)
        if value != required and not (key == "include_qkv_bias" and value is None):
            raise UserError(
                f"LLaDA config {key}={value!r} has no LLaMA equivalent",
                file=source,
                key=key,
                expected=repr(required),
            )
    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    if config.get("n_kv_heads") is not None:
        kv_heads = int(config["n_kv_heads"])
    else:
        kv_heads = 1 if config.get("multi_query_attention") else n_heads
    values = dict(
        vocab_size=int(config.get("embedding_size") or config["vocab_size"]),
        hidden_size=d_model,
        intermediate_size=int(config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d_model),
        num_hidden_layers=int(config["n_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=kv_heads,
        head_dim=d_model // n_heads,
        hidden_act="silu",
        max_position_embeddings=int(config.get("max_sequence_length", 1024)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(config.get("weight_tying", True)),
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=float(config.get("attention_dropout", 0.0)),
        initializer_range=float(config.get("init_std", 0.02)),
        use_cache=False,
    )
    for key in ("eos_token_id", "pad_token_id", "bos_token_id", "mask_token_id"):
        if config.get(key) is not None or key == "bos_token_id":  # not LlamaConfig's default bos 1
            values[key] = config.get(key)
    return values


def llada_config(llama: dict[str, Any], template: dict[str, Any] | None = None) -> dict[str, Any]:
    """A LLaDA-layout config.json for a LLaMA config (dict): `template` (the base's own LLaDA config,
    when there is one) or LLaDA-8B's settings, with this model's dimensions and token ids."""
    for key in ("attention_bias", "mlp_bias"):
        if llama.get(key):
            raise UserError(f"a LLaMA model with {key} cannot be written in LLaDA's layout", key=key)
    hidden, heads = int(llama["hidden_size"]), int(llama["num_attention_heads"])
    if llama.get("head_dim") not in (None, hidden // heads):
        raise UserError("LLaDA needs head_dim = hidden_size / num_attention_heads", key="head_dim")
    rope = llama.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"LLaDA has no {rope['rope_type']!r} RoPE scaling", key="rope_parameters")
    config = {**_DEFAULT_CONFIG, **(template or {})}
    embedding = int(llama["vocab_size"])
    vocab = int(config.get("vocab_size") or embedding)
    config.update(
        d_model=hidden,
        n_heads=heads,
        n_kv_heads=int(llama.get("num_key_value_heads") or heads),
        n_layers=int(llama["num_hidden_layers"]),
        mlp_hidden_size=int(llama["intermediate_size"]),
        embedding_size=embedding,
        vocab_size=vocab if vocab <= embedding else embedding,
        max_sequence_length=int(
            llama.get("max_position_embeddings") or config.get("max_sequence_length", 4096)
        ),
        rope_theta=float(rope.get("rope_theta", llama.get("rope_theta", 10000.0))),
        rms_norm_eps=float(llama.get("rms_norm_eps", 1e-5)),
        weight_tying=bool(llama.get("tie_word_embeddings", False)),
    )
    for key in ("eos_token_id", "pad_token_id", "bos_token_id", "mask_token_id"):
        if llama.get(key) is not None:
            config[key] = llama[key]
    if llama.get("dtype") is not None:
        config["torch_dtype"] = str(llama["dtype"]).removeprefix("torch.")
    return config


# ----------------------------------------------------------------------------------------- loading
def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    if not is_llada_layout(config):
        if config.get("model_type") != "llama":
            raise UserError(
                f"model_type {config.get('model_type')!r} is neither LLaDA's layout nor LLaMA's",
                file=settings.name_or_path,
                key="model.family",
                expected="a LLaDA checkpoint (model_type llada or llama)",
            )
        return instantiate(LlamaForCausalLM, AutoConfig.from_pretrained(settings.name_or_path), settings)
    values = llama_config(config, f"{settings.name_or_path}/config.json")
    if "mask_token_id" not in values:
        found = token_id(tokenizer, MASK_TOKEN)
        values["mask_token_id"] = MASK_TOKEN_ID if found is None else found
    model_config = LlamaConfig(**values)
    if settings.from_scratch:
        return instantiate(LlamaForCausalLM, model_config, settings)
    model = instantiate(LlamaForCausalLM, model_config, settings, key_mapping=key_mapping())
    # transformers remembers the renaming and would undo it in save_pretrained; a trained LLaDA is saved
    # in LLaMA's names (its config.json says llama), so forget it. Export writes LLaDA's names back.
    model._weight_conversions = None
    return model


def _native_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Either LLaDA layout: the release's (converted) or LLaMA's as this toolkit saves it."""
    return native_config(config, source) if is_llada_layout(config) else dict(config)


def usage(where: str) -> list[str]:
    """Model-card lines: LLaDA's layout loads with LLaDA's own code (shipped with the checkpoint)."""
    return [
        "```python",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModel.from_pretrained("{where}", trust_remote_code=True)',
        "```",
    ]


FAMILY = Family(
    name="llada",
    titles=("LLaDA",),
    shift=False,
    detect=detect,
    load_tokenizer=load_tokenizer,
    load_model=load_model,
    is_release_layout=is_llada_layout,
    release_model_type="llama",
    native_config=_native_config,
    release_config=llada_config,
    native_name=to_llama_name,
    release_name=to_llada_name,
    mask_tokens=(MASK_TOKEN,),
    known_configs=KNOWN_CONFIGS,
    generation_defaults={"block_length": 32, "remasking": "low_confidence"},  # LLaDA's semi-AR sampling
    release_usage=usage,
    export_classes={"llama": LlamaForCausalLM.__name__},
)
