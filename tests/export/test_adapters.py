"""LoRA adapters on disk: finding one, and merging it tensor by tensor as peft's own merge does."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2ForCausalLM

from sft.errors import UserError
from sft.export.adapters import LoraMerger, choose_adapter, find_adapters
from tests.conftest import tiny_qwen2_config


def save_adapter(tokenizer, directory, **lora):
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer))
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False, **lora
    )
    model = get_peft_model(base, config)
    model.save_pretrained(directory)
    merged = model.merge_and_unload().state_dict()
    return reference, merged


@pytest.mark.parametrize(
    "lora",
    [{}, {"use_rslora": True}, {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"down_proj": 3}}],
    ids=["plain", "rslora", "patterns"],
)
def test_merging_tensor_by_tensor_equals_peft_merge_and_unload(tokenizer, tmp_path, lora):
    reference, merged = save_adapter(tokenizer, tmp_path / "adapter", **lora)
    merger = LoraMerger.load(tmp_path / "adapter")
    for name, weight in reference.items():
        assert torch.allclose(merger.merge(name, weight), merged[name], atol=1e-6), name
    assert merger.unapplied() == []


def test_an_adapter_for_another_base_leaves_modules_unapplied(tokenizer, tmp_path):
    reference, _ = save_adapter(tokenizer, tmp_path / "adapter")
    merger = LoraMerger.load(tmp_path / "adapter")
    for name, weight in reference.items():
        if ".layers.1." not in name:  # a base with one layer fewer
            merger.merge(name, weight)
    assert merger.unapplied() and all(".layers.1." in m for m in merger.unapplied())


def test_features_whose_merge_would_be_wrong_are_refused(tokenizer, tmp_path):
    save_adapter(tokenizer, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UserError, match="DoRA"):
        LoraMerger.load(tmp_path / "adapter")


def test_adapters_side_by_side_are_found_and_one_is_chosen_by_name(tokenizer, tmp_path):
    for name in ("math", "code"):
        save_adapter(tokenizer, tmp_path / "adapters" / name)
    found = find_adapters(tmp_path / "adapters")
    assert sorted(a.path.name for a in found) == ["code", "math"]
    assert choose_adapter(tmp_path / "adapters", "math") == tmp_path / "adapters" / "math"
    with pytest.raises(UserError):
        choose_adapter(tmp_path / "adapters", None)  # two candidates, none named
    with pytest.raises(UserError):
        choose_adapter(tmp_path / "adapters", "poetry")
