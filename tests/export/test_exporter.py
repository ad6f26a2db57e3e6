"""Export end to end: train LoRA and full steps from Dream and LLaDA layouts, export, reload, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors import safe_open
from transformers import Qwen2Config, Qwen2ForCausalLM

from sft.cli import main
from sft.config import ModelSettings
from sft.errors import UserError
from sft.export.exporter import export_checkpoint
from sft.families.loader import load_model
from sft.families.weights import INDEX_FILE, tensor_names
from sft.recipe import build_run_config
from sft.training.run import train
from tests.conftest import REPO, recipe_dict, sort_rows, write_chat_rows
from tests.format_fixtures import write_dream_dir, write_llada_dir

IDS = torch.tensor([[1, 9, 12, 15, 3, 3, 3, 2]])
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    write_dream_dir(root / "dream", tokenizer)
    write_llada_dir(root / "llada", tokenizer)
    return {"dream": root / "dream", "llada": root / "llada"}


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    return write_chat_rows(tmp_path_factory.mktemp("data") / "train.jsonl", sort_rows(16))


def run_training(base: Path, chat: Path, output: Path, lora: bool, seed: int = 0) -> Path:
    raw = recipe_dict(base, chat, output, max_steps=2, learning_rate=2e-2, seed=seed)
    if lora:
        raw["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    train(build_run_config(raw))
    return output


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def loaded_logits(directory: Path) -> torch.Tensor:
    return logits(load_model(ModelSettings(name_or_path=str(directory))).model)


def peft_logits(base: Path, adapter: Path) -> torch.Tensor:
    """The adapter applied with peft to its base as read from disk: the reference for a merge."""
    model = load_model(ModelSettings(name_or_path=str(base))).model
    return logits(PeftModel.from_pretrained(model, str(adapter)))


def test_lora_on_a_dream_base_exports_in_dreams_layout_with_the_same_logits(bases, chat, tmp_path):
    adapter = run_training(bases["dream"], chat, tmp_path / "run", lora=True)
    reference = peft_logits(bases["dream"], adapter)
    assert (reference - loaded_logits(bases["dream"])).abs().max() > 1e-4  # the adapter changed something

    out = tmp_path / "instruct"
    result = export_checkpoint(adapter, out, max_shard_size="40KB")
    assert result.format == "dream"
    assert 0 < result.peak_buffered_bytes <= 40_000  # output held in memory: at most one shard
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["architectures"] == ["DreamModel"]
    assert config["auto_map"]["AutoModel"] == "modeling_dream.DreamModel"
    assert config["mask_token_id"] == 3 and config["rope_theta"] == 10000.0
    assert {"configuration_dream.py", "modeling_dream.py"} <= set(result.files)
    assert (out / INDEX_FILE).is_file() and set(tensor_names(out)) == set(tensor_names(bases["dream"]))
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["steps"] == 512 and generation["alg"] == "entropy" and generation["mask_token_id"] == 3
    assert (
        "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
        or (out / "chat_template.jinja").is_file()
    )

    assert (loaded_logits(out) - reference).abs().max() <= TOLERANCE
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keys += (
        "num_key_value_heads",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "max_position_embeddings",
    )
    plain = Qwen2Config(**{k: config[k] for k in keys}, is_causal=False)  # Dream read as plain Qwen2 weights
    as_qwen2 = Qwen2ForCausalLM.from_pretrained(out, config=plain)
    assert (logits(as_qwen2) - reference).abs().max() <= TOLERANCE


def test_full_finetune_of_a_llada_base_exports_with_llada_names(bases, chat, tmp_path):
    run = run_training(bases["llada"], chat, tmp_path / "run", lora=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["dlm_family"] == "llada"  # trained: saved natively
    assert "model.layers.0.mlp.gate_proj.weight" in tensor_names(run)
    reference = loaded_logits(run)

    out = tmp_path / "instruct"
    result = export_checkpoint(run, out)
    assert result.format == "llada"
    assert set(tensor_names(out)) == set(tensor_names(bases["llada"]))  # LLaDA's own names
    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((bases["llada"] / "config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    for key in (
        "d_model",
        "n_heads",
        "n_kv_heads",
        "n_layers",
        "mlp_hidden_size",
        "embedding_size",
        "rope_theta",
    ):
        assert config[key] == base_config[key], key
    for key in (
        "mask_token_id",
        "eos_token_id",
        "pad_token_id",
        "bos_token_id",
        "vocab_size",
        "weight_tying",
    ):
        assert config.get(key) == base_config.get(key), key
    assert (loaded_logits(out) - reference).abs().max() <= TOLERANCE

    native = export_checkpoint(run, tmp_path / "native", fmt="native", dtype="bf16")
    assert native.format == "native"
    with safe_open(str(tmp_path / "native" / "model.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16


def test_several_adapters_on_one_base_are_listed_and_merged_one_at_a_time(bases, chat, tmp_path, capsys):
    parent = tmp_path / "adapters"
    math_data = write_chat_rows(tmp_path / "math.jsonl", sort_rows(16, seed=1))
    adapters = {
        "math": run_training(bases["llada"], math_data, parent / "math", lora=True, seed=1),
        "code": run_training(bases["llada"], chat, parent / "code", lora=True, seed=2),
    }
    assert main(["export", str(parent), "--list-adapters"]) == 0
    listed = capsys.readouterr().out
    assert "math" in listed and "code" in listed and str(bases["llada"]) in listed

    with pytest.raises(UserError, match="2 adapters"):
        export_checkpoint(parent, tmp_path / "unchosen")
    merged = {}
    for name, adapter in adapters.items():
        out = tmp_path / f"export-{name}"
        assert main(["export", str(parent), "--adapter", name, "--output", str(out)]) == 0
        merged[name] = loaded_logits(out)
        assert (merged[name] - peft_logits(bases["llada"], adapter)).abs().max() <= TOLERANCE
        assert set(tensor_names(out)) == set(tensor_names(bases["llada"]))
    assert (merged["math"] - merged["code"]).abs().max() > 1e-4

    # The base named explicitly with an adapter path works the same way.
    out = tmp_path / "explicit"
    export_checkpoint(bases["llada"], out, adapter=str(adapters["code"]))
    assert (loaded_logits(out) - merged["code"]).abs().max() <= TOLERANCE


def test_model_card_records_the_run_and_never_a_token(bases, chat, tmp_path):
    run = run_training(bases["dream"], chat, tmp_path / "run", lora=False)
    record = {
        "recipe": {
            "model": {"name_or_path": str(bases["dream"])},
            "data": {"train": str(chat)},
            "training": {
                "output_dir": str(run),
                "hub_token": "hf_abcdefghijklmnop",
                "run_name": "hf_secretvalue123",
            },
        },
        "source": "recipes/sort.yaml",
        "global_step": 2,
        "final_train_loss": 3.25,
        "final_eval_loss": 3.5,
    }
    (run / "dlm_run.json").write_text(json.dumps(record))
    out = tmp_path / "instruct"
    assert main(["export", str(run), "--output", str(out), "--max-shard-size", "30KB"]) == 0
    card = (out / "README.md").read_text()
    assert ModelCard.load(out / "README.md").data.base_model is None  # a local base is not a hub id
    assert str(bases["dream"]) not in card and str(chat) not in card  # nor is its path ever written
    assert (
        f"local `{bases['dream'].name}`" in card
        and f"local `{chat.name}`" in card
        and "recipes/sort.yaml" in card
    )
    assert "| optimizer steps | 2 |" in card and "3.2500" in card and "3.5000" in card
    assert "hf_abcdefghijklmnop" not in card and "hf_secretvalue123" not in card
    assert (
        json.loads((out / "config.json").read_text())["model_type"] == "Dream"
    )  # the base's layout, recorded


def test_exporting_into_a_layout_of_another_architecture_is_a_user_error(bases, tmp_path, capsys):
    assert main(["export", str(bases["llada"]), "--output", str(tmp_path / "x"), "--format", "dream"]) == 2
    assert "cannot be written in dream's layout" in capsys.readouterr().err


def test_the_readme_snippet_loads_a_native_export_with_plain_transformers(bases, chat, tmp_path):
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("<!-- snippet: load-native-export -->\n```python\n", 1)[1].split("```", 1)[0]
    run = run_training(bases["dream"], chat, tmp_path / "run", lora=False)
    out = tmp_path / "native"
    export_checkpoint(run, out, fmt="native")
    model = load_model(ModelSettings(name_or_path=str(out))).model
    namespace: dict = {}
    exec(snippet.replace('"exports/dream-native"', repr(str(out))), namespace)  # noqa: S102
    assert namespace["logits"].shape[1] == namespace["ids"].shape[1]
    with torch.no_grad():  # transformers alone gives what dlm-sft's loader gives: bidirectional attention
        assert torch.allclose(namespace["logits"], model.eval()(namespace["ids"]).logits, atol=1e-5)
