"""Tiny checkpoints in Dream's and LLaDA's release layouts, with their real config keys and weight names.

The LLaDA checkpoint is written from a state dict in LLaDA's own names, and `llada_logits` computes
its forward pass from those names directly (LLaDA's `LLaDALlamaBlock` math: RMSNorm, RoPE on head
halves, bidirectional attention, `ff_out(silu(ff_proj(x)) * up_proj(x))`, `ln_f`, LM head `ff_out`),
so a loader that maps a name wrongly gives different logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen2ForCausalLM

from tests.conftest import tiny_qwen2_config

LLADA_DIMS = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, embedding_size=384)
LLADA_BLOCK = (
    "q_proj",
    "k_proj",
    "v_proj",
    "attn_out",
    "ff_proj",
    "up_proj",
    "ff_out",
    "attn_norm",
    "ff_norm",
)


def llada_config(tokenizer, **overrides) -> dict:
    """config.json as LLaDA-8B's (same keys), with tiny dimensions."""
    config = {
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
        "eos_token_id": tokenizer.eos_token_id,
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
        "mask_token_id": tokenizer.convert_tokens_to_ids("<|mask|>"),
        "max_sequence_length": 128,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "pad_token_id": tokenizer.pad_token_id,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": len(tokenizer),
        "weight_tying": False,
        **LLADA_DIMS,
    }
    config.update(overrides)
    return config


def llada_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    d, hidden, rows = config["d_model"], config["mlp_hidden_size"], config["embedding_size"]
    kv = config["n_kv_heads"] * d // config["n_heads"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    state = {"model.transformer.wte.weight": rand(rows, d), "model.transformer.ln_f.weight": 1 + rand(d)}
    for i in range(config["n_layers"]):
        shapes = dict(
            q_proj=(d, d), k_proj=(kv, d), v_proj=(kv, d), attn_out=(d, d), ff_proj=(hidden, d),
            up_proj=(hidden, d), ff_out=(d, hidden), attn_norm=(d,), ff_norm=(d,),
        )  # fmt: skip
        for name, shape in shapes.items():
            tensor = rand(*shape)
            state[f"model.transformer.blocks.{i}.{name}.weight"] = 1 + tensor if len(shape) == 1 else tensor
    state["model.transformer.ff_out.weight"] = rand(rows, d)
    return state


def write_sharded(directory: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """Weights in `shards` safetensors files plus model.safetensors.index.json."""
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i::shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in state.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def write_llada_dir(directory: Path, tokenizer, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """A LLaDA release-layout checkpoint (sharded, with a stand-in for its remote code); its weights."""
    directory.mkdir(parents=True, exist_ok=True)
    config = llada_config(tokenizer, **overrides)
    state = llada_state_dict(config, seed)
    write_sharded(directory, state)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "configuration_llada.py").write_text("# stand-in for LLaDA's remote configuration code\n")
    (directory / "modeling_llada.py").write_text("# stand-in for LLaDA's remote modeling code\n")
    tokenizer.save_pretrained(directory)
    return state


def llada_logits(state: dict[str, torch.Tensor], config: dict, ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward pass computed from its own weight names (no padding, all positions attend)."""
    d, heads, kv_heads = config["d_model"], config["n_heads"], config["n_kv_heads"]
    head_dim, eps = d // heads, config["rms_norm_eps"]

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(x: torch.Tensor) -> torch.Tensor:  # (B, h, T, hd); LLaDA rotates the two halves of each head
        inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.outer(torch.arange(x.shape[2]).float(), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return x * angles.cos() + torch.cat((-second, first), dim=-1) * angles.sin()

    batch, length = ids.shape
    x = state["model.transformer.wte.weight"][ids]
    for i in range(config["n_layers"]):
        w = {name: state[f"model.transformer.blocks.{i}.{name}.weight"] for name in LLADA_BLOCK}
        h = norm(x, w["attn_norm"])
        q = (h @ w["q_proj"].T).view(batch, length, heads, head_dim).transpose(1, 2)
        k = (h @ w["k_proj"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        v = (h @ w["v_proj"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
        attended = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=False)
        x = x + attended.transpose(1, 2).reshape(batch, length, d) @ w["attn_out"].T
        h = norm(x, w["ff_norm"])
        x = x + (F.silu(h @ w["ff_proj"].T) * (h @ w["up_proj"].T)) @ w["ff_out"].T
    return norm(x, state["model.transformer.ln_f.weight"]) @ state["model.transformer.ff_out.weight"].T


def write_dream_dir(directory: Path, tokenizer, seed: int = 1) -> Qwen2ForCausalLM:
    """A Dream release-layout checkpoint (sharded, Dream's config keys, remote-code stand-ins); the
    bidirectional Qwen2 model it holds."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, is_causal=False)).eval()
    write_sharded(directory, {k: v.clone() for k, v in model.state_dict().items()})
    config = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "mask_token_id": tokenizer.convert_tokens_to_ids("<|mask|>"),
        "max_position_embeddings": 128,
        "max_window_layers": 28,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": tokenizer.pad_token_id,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": len(tokenizer),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "configuration_dream.py").write_text("# stand-in for Dream's remote configuration code\n")
    (directory / "modeling_dream.py").write_text("# stand-in for Dream's remote modeling code\n")
    tokenizer.save_pretrained(directory)
    return model
