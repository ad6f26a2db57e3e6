"""AR-initialised diffusion LMs: any Qwen2 / Llama causal LM turned into a masked diffusion LM.

As Dream was made from Qwen2.5 and DiffuLLaMA from LLaMA: attention becomes bidirectional
(`is_causal = False`), a `<|mask|>` token is added when the tokenizer lacks one (embeddings resized,
new row initialised at the mean), and training keeps the AR model's shift (logits at i-1 predict i).
"""

from __future__ import annotations

from typing import Any

from transformers import (
    AddedToken,
    AutoConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2ForCausalLM,
)

from sft.config import ModelSettings
from sft.errors import UserError
from sft.families.base import Family, instantiate, load_tokenizer
from sft.families.shapes import LayerShape, read_layer_shape

MODEL_CLASSES = {"qwen2": Qwen2ForCausalLM, "llama": LlamaForCausalLM}
QKV_BIAS = ("qwen2",)
"""Model types whose q, k and v projections always carry biases (their configs have no key for it)."""


def _qwen2(
    vocab: int, hidden: int, layers: int, heads: int, kv: int, inter: int, tied: bool
) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    }


KNOWN_CONFIGS = {
    "Qwen/Qwen2.5-0.5B": _qwen2(151936, 896, 24, 14, 2, 4864, True),
    "Qwen/Qwen2.5-1.5B": _qwen2(151936, 1536, 28, 12, 2, 8960, True),
    "Qwen/Qwen2.5-3B": _qwen2(151936, 2048, 36, 16, 2, 11008, True),
    "Qwen/Qwen2.5-7B": _qwen2(152064, 3584, 28, 28, 4, 18944, False),
}


def detect(config: dict[str, Any]) -> bool:
    return config.get("model_type") in MODEL_CLASSES


def layer_shape(config: dict[str, Any]) -> LayerShape:
    return read_layer_shape(config, qkv_bias=config.get("model_type") in QKV_BIAS)


def load_model(
    settings: ModelSettings, config: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise UserError(
            f"model_type {model_type!r} is not a supported causal LM",
            file=settings.name_or_path,
            key="model.family",
            expected=f"one of {', '.join(MODEL_CLASSES)}",
        )
    model_config = AutoConfig.from_pretrained(settings.name_or_path)
    model = instantiate(MODEL_CLASSES[model_type], model_config, settings)
    if getattr(model.config, "mask_token_id", None) is None:
        add_mask_token(model, tokenizer, settings.mask_token)
    return model


def add_mask_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, token: str) -> None:
    """Add `token` to the tokenizer when it lacks it, and resize the embeddings to the vocabulary."""
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


FAMILY = Family(
    name="ar",
    titles=tuple(c.__name__.removesuffix("ForCausalLM") for c in MODEL_CLASSES.values()),
    shift=True,
    detect=detect,
    load_tokenizer=load_tokenizer,
    load_model=load_model,
    known_configs=KNOWN_CONFIGS,
    export_classes={model_type: cls.__name__ for model_type, cls in MODEL_CLASSES.items()},
    layer_shape=layer_shape,
    add_mask_token=add_mask_token,
)
