"""The trainer end to end on tiny models: normalisation, LoRA, families, eval, logging."""

from __future__ import annotations

import json
import os

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from sft.config import ModelSettings
from sft.families.loader import load_model
from sft.recipe import build_run_config
from sft.training.run import build_trainer, train
from tests.conftest import recipe_dict, tiny_qwen2_config


def gradients_of_one_global_batch(qwen2_dir, chat_file, tmp_path, micro: int, policy: str):
    raw = recipe_dict(
        qwen2_dir,
        chat_file,
        tmp_path / f"run{micro}",
        per_device_train_batch_size=8 // micro,
        gradient_accumulation_steps=micro,
    )
    raw["diffusion"] = {"eos_tail": policy, "weighting": "cart"}
    trainer = build_trainer(build_run_config(raw))
    examples = [trainer.train_dataset[i] for i in range(8)]
    size = 8 // micro
    batches = [trainer.data_collator(examples[i : i + size]) for i in range(0, 8, size)]
    denominator = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    trainer.model.zero_grad()
    loss = sum(trainer.training_step(trainer.model, b, denominator) for b in batches)
    return loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("policy", ["all", "first_n", "one", "none"])
def test_loss_and_gradients_do_not_depend_on_how_the_global_batch_is_split(
    qwen2_dir, chat_file, tmp_path, policy
):
    loss_1x8, grads_1x8 = gradients_of_one_global_batch(qwen2_dir, chat_file, tmp_path, 1, policy)
    loss_2x4, grads_2x4 = gradients_of_one_global_batch(qwen2_dir, chat_file, tmp_path, 2, policy)
    loss_4x2, _ = gradients_of_one_global_batch(qwen2_dir, chat_file, tmp_path, 4, policy)
    assert loss_1x8.item() == pytest.approx(loss_2x4.item(), abs=1e-6)
    assert loss_1x8.item() == pytest.approx(loss_4x2.item(), abs=1e-6)
    for name, grad in grads_1x8.items():
        assert torch.allclose(grad, grads_2x4[name], atol=1e-6), name


def test_training_with_accumulation_reaches_the_same_weights(qwen2_dir, chat_file, tmp_path):
    finals = []
    for micro in (1, 2):
        raw = recipe_dict(
            qwen2_dir,
            chat_file,
            tmp_path / f"sgd{micro}",
            per_device_train_batch_size=8 // micro,
            gradient_accumulation_steps=micro,
            optim="sgd",
            learning_rate=0.5,
            max_steps=3,
        )
        train(build_run_config(raw))
        finals.append(load_file(tmp_path / f"sgd{micro}" / "model.safetensors"))
    assert finals[0].keys() == finals[1].keys()
    for name in finals[0]:
        assert torch.allclose(finals[0][name], finals[1][name], atol=1e-6), name
    start = load_file(qwen2_dir / "model.safetensors")
    assert not torch.equal(start["lm_head.weight"], finals[0]["lm_head.weight"])  # it did train


def test_attention_is_bidirectional(qwen2_dir):
    loaded = load_model(ModelSettings(name_or_path=str(qwen2_dir)))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = ids.clone()
    changed[0, -1] = 11
    with torch.no_grad():
        a = loaded.model(ids).logits
        b = loaded.model(changed).logits
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4
    assert loaded.model.config.is_causal is False


def test_lora_trains_only_adapters_and_the_adapter_reloads(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "lora", max_steps=3, learning_rate=1e-2)
    raw["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    trainer = train(build_run_config(raw))
    trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    start = load_file(qwen2_dir / "model.safetensors")
    for name, param in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param.detach(), start[key]), name

    adapter_config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(qwen2_dir)
    reloaded = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(qwen2_dir), tmp_path / "lora")
    ours = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    theirs = dict(reloaded.named_parameters())
    for name, param in ours.items():
        assert torch.allclose(param, theirs[name]), name
    assert any(p.abs().sum() > 0 for n, p in ours.items() if "lora_B" in n)


def test_dream_format_checkpoint_loads_without_remote_code(tokenizer, tmp_path):
    torch.manual_seed(1)
    reference = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, is_causal=False)).eval()
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(
        model_type="Dream",
        architectures=["DreamModel"],
        mask_token_id=3,
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    )
    config.pop("is_causal")
    (tmp_path / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tok_config.update(
        tokenizer_class="DreamTokenizer",
        auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert not list(tmp_path.glob("*.py"))  # there is no remote code to run

    loaded = load_model(ModelSettings(name_or_path=str(tmp_path)))
    assert loaded.family.name == "dream" and loaded.family.shift
    assert loaded.mask_token_id == 3
    assert isinstance(loaded.model, Qwen2ForCausalLM)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, reference(ids).logits, atol=1e-6)
    assert loaded.tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )


def test_eval_loss_is_deterministic_and_metrics_are_logged(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "ev", max_steps=2)
    raw["data"]["eval"] = str(chat_file)
    trainer = train(build_run_config(raw))
    first, second = trainer.evaluate(), trainer.evaluate()
    assert first["eval_loss"] == second["eval_loss"]
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"loss", "masked_tokens", "mean_t", "eos_share", "eval_loss", "eval_masked_tokens"} <= logged
    run = json.loads((tmp_path / "ev" / "dlm_run.json").read_text())
    assert run["global_step"] == 2 and run["final_train_loss"] > 0
    assert run["recipe"]["diffusion"]["eos_tail"] == "first_n"


def test_wandb_offline_logging_works_without_network(qwen2_dir, chat_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    train(build_run_config(recipe_dict(qwen2_dir, chat_file, tmp_path / "wb", report_to=["wandb"])))
    assert list((tmp_path / "wandb").glob("offline-run-*")), os.listdir(tmp_path)


def test_a_lora_adapter_on_a_from_scratch_model_names_its_saved_base(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "scratch", max_steps=1)
    raw["model"]["from_scratch"] = True
    raw["lora"] = {"r": 2, "alpha": 4}
    train(build_run_config(raw))
    adapter_config = json.loads((tmp_path / "scratch" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tmp_path / "scratch" / "base")
    assert (tmp_path / "scratch" / "base" / "model.safetensors").is_file()
