"""Dream (Dream-org/Dream-v0-*-7B): Qwen2 weights, bidirectional attention, shifted logits.

Dream's config.json says `model_type: Dream` and points at remote code that hard-codes SDPA and
breaks peft; the weights use Qwen2's names, so they load into transformers' own `Qwen2ForCausalLM`
with `is_causal = False` instead (FlashAttention, gradient checkpointing and LoRA then just work).
Export writes Dream's config.json back (`release_config`); the weight names need no change.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from sft.config import ModelSettings
from sft.families.base import FAMILY_KEY, Family, instantiate, load_tokenizer
from sft.families.shapes import LayerShape, read_layer_shape

_REMOTE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")
AUTO_MAP = {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}
# Keys of transformers' own configs that Dream's remote `DreamConfig` does not use
_NATIVE_ONLY = ("rope_parameters", "layer_types", "is_causal", "dtype", "dlm_family", "_name_or_path")

_DREAM_7B = {  # Qwen2.5-7B's shape (Dream-v0 is initialised from it)
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
KNOWN_CONFIGS = {"Dream-org/Dream-v0-Base-7B": _DREAM_7B, "Dream-org/Dream-v0-Instruct-7B": _DREAM_7B}


def detect(config: dict[str, Any]) -> bool:
    return str(config.get("model_type", "")).lower() == "dream"


def qwen2_config(config: dict[str, Any]) -> Qwen2Config:
    """transformers' Qwen2 config for a Dream config.json."""
    return Qwen2Config(**{k: v for k, v in config.items() if k not in _REMOTE_KEYS})


def native_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    return {**qwen2_config(config).to_dict(), FAMILY_KEY: "dream"}


def layer_shape(config: dict[str, Any]) -> LayerShape:
    """Qwen2's layers: biases on q, k and v."""
    return read_layer_shape(config, qkv_bias=True)


def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    return instantiate(Qwen2ForCausalLM, qwen2_config(config), settings)


def dream_config(qwen2: dict[str, Any], template: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Dream-layout config.json for a Qwen2 config (dict): Dream's `model_type`, `architectures`,
    `auto_map` (or those of `template`, the base's own Dream config) and the keys its remote
    `DreamConfig` reads (`rope_theta`, `rope_scaling`, `torch_dtype`, `mask_token_id`, ...)."""
    rope = dict(qwen2.get("rope_parameters") or {})
    config = {k: v for k, v in qwen2.items() if k not in _NATIVE_ONLY}
    config["rope_theta"] = float(rope.pop("rope_theta", qwen2.get("rope_theta", 10000.0)))
    rope_type = rope.pop("rope_type", "default")
    config["rope_scaling"] = None if rope_type == "default" else {"rope_type": rope_type, **rope}
    if qwen2.get("dtype") is not None:
        config["torch_dtype"] = str(qwen2["dtype"]).removeprefix("torch.")
    config.update(model_type="Dream", architectures=["DreamModel"], auto_map=AUTO_MAP, use_cache=False)
    for key in ("model_type", "architectures", "auto_map"):
        if template and key in template:
            config[key] = template[key]
    return config


def usage(where: str) -> list[str]:
    """Model-card lines: load Dream's layout with transformers alone, or with Dream's own code."""
    return [
        "```python",
        "from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'config = Qwen2Config.from_pretrained("{where}")  # Dream is Qwen2 with bidirectional attention',
        "config.is_causal = False",
        f'model = Qwen2ForCausalLM.from_pretrained("{where}", config=config)',
        "```",
        "",
        "or with Dream's own code and sampler (`diffusion_generate`):",
        "",
        "```python",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{where}", trust_remote_code=True)',
        "# model.diffusion_generate(input_ids, attention_mask=..., max_new_tokens=256, steps=256)",
        "```",
    ]


FAMILY = Family(
    name="dream",
    titles=("Dream",),
    shift=True,
    detect=detect,
    load_tokenizer=load_tokenizer,
    load_model=load_model,
    is_release_layout=detect,
    release_model_type="qwen2",
    native_config=native_config,
    release_config=dream_config,
    known_configs=KNOWN_CONFIGS,
    release_usage=usage,
    export_classes={"qwen2": Qwen2ForCausalLM.__name__},
    layer_shape=layer_shape,
)
