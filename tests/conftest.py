"""Shared fixtures: tiny real-format models, tokenizers and chat files built on the spot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_MODEL = REPO / "recipes" / "quickstart" / "model"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(2)


def tiny_qwen2_config(tokenizer, **overrides) -> Qwen2Config:
    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    return Qwen2Config(**values)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(QUICKSTART_MODEL)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Qwen2 causal LM checkpoint (weights + tokenizer with <|mask|>)."""
    path = tmp_path_factory.mktemp("qwen2")
    torch.manual_seed(0)
    Qwen2ForCausalLM(tiny_qwen2_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_chat_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sort_rows(count: int, seed: int = 0) -> list[dict]:
    from sft.tasks.sort_digits import make_rows

    return make_rows(count, seed)


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_chat_rows(tmp_path / "train.jsonl", sort_rows(48))


def recipe_dict(model_dir: Path, train: Path, output_dir: Path, **training) -> dict:
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "cache_dir": str(output_dir / "tokenized")},
        "diffusion": {"eos_tail": "first_n", "eos_tail_n": 3},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "report_to": [],
            "save_strategy": "no",
            "activation_checkpointing": False,
            "logging_steps": 1,
            "use_cpu": True,
            "disable_tqdm": True,
            **training,
        },
    }


@pytest.fixture(scope="session")
def hub_cache_dir(tmp_path_factory, tokenizer) -> Path:
    """The stand-in hub cache (tests/hub_cache.py), built once per session."""
    from tests.hub_cache import build_hub_cache

    return build_hub_cache(tmp_path_factory.mktemp("hub_cache"), tokenizer)


@pytest.fixture
def hub_cache(hub_cache_dir, tmp_path, monkeypatch) -> Path:
    """Offline, with HF_HUB_CACHE at the stand-in hub cache (see tests/hub_cache.py)."""
    from tests.hub_cache import use_hub_cache

    use_hub_cache(monkeypatch, hub_cache_dir, tmp_path / "datasets_cache")
    return hub_cache_dir
