"""Reading checkpoints: LLaDA's release layout, Dream's, sharded safetensors, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from sft.config import ModelSettings
from sft.errors import UserError
from sft.families import base, loader
from sft.families.llada import to_llada_name, to_llama_name
from sft.families.loader import load_model
from sft.families.weights import INDEX_FILE, shard_files
from sft.recipe import build_run_config
from sft.training.run import train
from tests.conftest import recipe_dict, tiny_qwen2_config
from tests.format_fixtures import llada_config, llada_logits, write_dream_dir, write_llada_dir

IDS = torch.tensor([[1, 5, 6, 7, 8, 3, 3, 2]])


def test_llada_release_layout_loads_into_llama_and_gives_llada_logits(tokenizer, tmp_path):
    state = write_llada_dir(tmp_path, tokenizer)
    loaded = load_model(ModelSettings(name_or_path=str(tmp_path)))
    assert isinstance(loaded.model, LlamaForCausalLM)
    assert loaded.family.name == "llada" and not loaded.family.shift
    assert loaded.model.config.is_causal is False
    assert loaded.mask_token_id == tokenizer.convert_tokens_to_ids("<|mask|>")
    assert loaded.model.get_input_embeddings().weight.shape[0] == 384  # embedding_size, padded past the vocab
    with torch.no_grad():
        ours = loaded.model.eval()(IDS).logits
    expected = llada_logits(state, llada_config(tokenizer), IDS)
    assert (ours - expected).abs().max() < 1e-5


def test_llada_reading_supports_gradient_checkpointing_and_bf16(tokenizer, tmp_path):
    write_llada_dir(tmp_path, tokenizer)
    loaded = load_model(ModelSettings(name_or_path=str(tmp_path), dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16
    loaded.model.gradient_checkpointing_enable()
    loaded.model.train()
    loaded.model(IDS).logits.float().sum().backward()
    assert loaded.model.model.layers[0].mlp.gate_proj.weight.grad is not None


def test_llada_and_llama_weight_names_map_both_ways():
    pairs = {
        "model.transformer.wte.weight": "model.embed_tokens.weight",
        "model.transformer.ln_f.weight": "model.norm.weight",
        "model.transformer.ff_out.weight": "lm_head.weight",
        "model.transformer.blocks.7.ff_proj.weight": "model.layers.7.mlp.gate_proj.weight",
        "model.transformer.blocks.7.up_proj.weight": "model.layers.7.mlp.up_proj.weight",
        "model.transformer.blocks.7.ff_out.weight": "model.layers.7.mlp.down_proj.weight",
        "model.transformer.blocks.0.attn_out.weight": "model.layers.0.self_attn.o_proj.weight",
        "model.transformer.blocks.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "model.transformer.blocks.0.ff_norm.weight": "model.layers.0.post_attention_layernorm.weight",
        "model.transformer.blocks.31.k_proj.weight": "model.layers.31.self_attn.k_proj.weight",
    }
    for llada, llama in pairs.items():
        assert to_llama_name(llada) == llama
        assert to_llada_name(llama) == llada
    with pytest.raises(UserError):
        to_llama_name("model.transformer.blocks.0.att_proj.weight")


@pytest.mark.parametrize(
    "override",
    [{"alibi": True}, {"block_group_size": 2}, {"include_qkv_bias": True}, {"block_type": "sequential"}],
)
def test_llada_features_llama_lacks_are_refused(tokenizer, tmp_path, override):
    write_llada_dir(tmp_path, tokenizer, **override)
    with pytest.raises(UserError, match=next(iter(override))):
        load_model(ModelSettings(name_or_path=str(tmp_path)))


def test_sharded_dream_checkpoint_loads_as_bidirectional_qwen2(tokenizer, tmp_path):
    reference = write_dream_dir(tmp_path, tokenizer)
    assert (tmp_path / INDEX_FILE).is_file()
    loaded = load_model(ModelSettings(name_or_path=str(tmp_path)))
    assert isinstance(loaded.model, Qwen2ForCausalLM) and loaded.family.name == "dream"
    with torch.no_grad():
        assert (loaded.model.eval()(IDS).logits - reference(IDS).logits).abs().max() < 1e-5


def test_pickle_weights_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        shard_files(tmp_path)


REMOTE_CONFIG = """from transformers import Qwen2Config


class TinyRemoteConfig(Qwen2Config):
    model_type = "tiny_remote"
"""
REMOTE_MODEL = """from transformers import Qwen2ForCausalLM

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCausalLM(Qwen2ForCausalLM):
    config_class = TinyRemoteConfig
"""


def test_unknown_family_loads_its_remote_code_only_when_explicitly_trusted(tokenizer, tmp_path):
    torch.manual_seed(2)
    reference = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer)).eval()
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (tmp_path / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(
        model_type="tiny_remote",
        auto_map={
            "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM",
        },
    )
    (tmp_path / "config.json").write_text(json.dumps(config))

    with pytest.raises(UserError, match="trust_remote_code"):
        load_model(ModelSettings(name_or_path=str(tmp_path)))
    with pytest.warns(UserWarning, match="remote code"):
        loaded = load_model(ModelSettings(name_or_path=str(tmp_path), trust_remote_code=True))
    assert loaded.family.name == "remote"
    model = loaded.model
    assert type(model).__name__ == "TinyRemoteForCausalLM"
    with torch.no_grad():
        assert (model.eval()(IDS).logits - reference(IDS).logits).abs().max() < 1e-5


def test_a_training_run_reads_config_json_and_detects_the_family_once(
    hub_cache, chat_file, tmp_path, monkeypatch
):
    reads, detections = [], []
    read, find = base._json_object, loader.find_family
    monkeypatch.setattr(base, "_json_object", lambda path: reads.append(path) or read(path))
    monkeypatch.setattr(loader, "find_family", lambda config: detections.append(config) or find(config))
    raw = recipe_dict("Dream-org/Dream-v0-Base-7B", chat_file, tmp_path / "run", max_steps=1)
    trainer = train(build_run_config(raw))
    assert trainer.state.global_step == 1
    assert [p.name for p in reads] == ["config.json"] and len(detections) == 1
