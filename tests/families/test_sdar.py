"""SDAR (JetLM/SDAR-1.7B-Chat) in its release layout, under its real hub id in the stand-in hub cache:
loading without remote code, block-diffusion training, block sampling, export back to SDAR's layout."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from sft import hub
from sft.config import ModelSettings
from sft.export.exporter import export_checkpoint
from sft.families.loader import known_config, load_model
from sft.families.weights import tensor_names
from sft.planning.shapes import shape_from_config
from sft.recipe import build_run_config
from sft.sampling.sampler import diffusion_generate
from sft.training.run import train
from tests.conftest import recipe_dict, sort_rows, write_chat_rows
from tests.hub_cache import SDAR_IDS

SDAR = SDAR_IDS[0]
IDS = torch.tensor([[1, 9, 12, 15, 3, 3, 3, 2]])


def reference_model(snapshot) -> Qwen3ForCausalLM:
    """The snapshot's weights in transformers' Qwen3, configured by hand (bidirectional)."""
    release = json.loads((snapshot / "config.json").read_text())
    config = Qwen3Config(
        vocab_size=release["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        is_causal=False,
    )
    model = Qwen3ForCausalLM(config)
    model.load_state_dict(load_file(snapshot / "model.safetensors"))
    return model.eval()


def test_sdar_loads_from_its_hub_id_without_remote_code_and_bidirectionally(hub_cache):
    loaded = load_model(ModelSettings(name_or_path=SDAR))
    snapshot = hub.model_dir(SDAR)
    release = json.loads((snapshot / "config.json").read_text())
    assert release["model_type"] == "sdar" and release["block_size"] == 4
    assert loaded.family.name == "sdar" and not loaded.family.shift
    assert loaded.mask_token_id == release["mask_token_id"]
    assert isinstance(loaded.model, Qwen3ForCausalLM) and loaded.model.config.is_causal is False
    assert "model.layers.0.self_attn.q_norm.weight" in tensor_names(snapshot)
    with torch.no_grad():
        ours = loaded.model.eval()(IDS).logits
        assert torch.allclose(ours, reference_model(snapshot)(IDS).logits, atol=1e-5)
        changed = IDS.clone()
        changed[0, -1] = 20
        assert (loaded.model(changed).logits[0, 0] - ours[0, 0]).abs().max() > 1e-5  # bidirectional
    assert known_config(SDAR)["hidden_size"] == 2048  # planning knows the real model's shape
    planned = shape_from_config(release)  # Qwen3's q/k norms counted
    assert planned.params() == sum(p.numel() for p in reference_model(snapshot).parameters())


def test_sdar_trains_as_block_diffusion_samples_by_blocks_and_exports_in_its_layout(hub_cache, tmp_path):
    chat = write_chat_rows(tmp_path / "train.jsonl", sort_rows(16))
    raw = recipe_dict(SDAR, chat, tmp_path / "run", max_steps=2, learning_rate=2e-2)
    raw["diffusion"].update(block_size=4)
    trainer = train(build_run_config(raw))
    assert trainer.state.global_step == 2 and not trainer.args.shift

    out = tmp_path / "export"
    result = export_checkpoint(tmp_path / "run", out)
    assert result.format == "sdar"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sdar" and config["architectures"] == ["SDARForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_sdar.SDARForCausalLM"
    assert config["block_size"] == 4 and config["attn_implementation"] == "flex_attention"
    assert config["mask_token_id"] == trainer.args.mask_token_id and config["rope_theta"] == 1e6
    assert (out / "modeling_sdar.py").is_file()  # the base's remote-code files travel with it
    assert tensor_names(out) == tensor_names(hub.model_dir(SDAR))

    reloaded = load_model(ModelSettings(name_or_path=str(out)))
    assert reloaded.family.name == "sdar"
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded.model.eval()(IDS).logits, trained(IDS).logits, atol=1e-5)
    prompt = IDS[:, :4]  # no mask token inside
    sequences = diffusion_generate(
        reloaded.model,
        prompt,
        mask_token_id=reloaded.mask_token_id,
        shift=False,
        max_new_tokens=8,
        steps=8,
        block_size=config["block_size"],
        return_dict_in_generate=False,
    )
    assert sequences.shape == (1, 4 + 8) and torch.equal(sequences[:, :4], prompt)
    assert not (sequences == reloaded.mask_token_id).any()
