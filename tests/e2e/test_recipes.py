"""Every shipped reference recipe trains for two steps on CPU with tiny local stand-ins.

Only the model, the data and what a CPU needs are overridden (paths, precision, attention, size), so
a renamed key, a wrong type or a setting the trainer rejects in a shipped recipe fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft.recipe import load_recipe
from sft.run import train
from tests.conftest import REPO
from tests.format_fixtures import write_dream_dir, write_llada_dir

RECIPES = {
    "dream-7b/sft_full.yaml": "dream",
    "dream-7b/sft_lora.yaml": "dream",
    "llada-8b/sft_full.yaml": "llada",
    "llada-8b/sft_lora.yaml": "llada",
    "qwen2.5-ar2diffusion/sft.yaml": "ar",
}


def shipped_recipes() -> list[str]:
    skip = {"quickstart", "data", "accelerate"}
    return sorted(
        str(p.relative_to(REPO / "recipes"))
        for p in (REPO / "recipes").glob("*/*.yaml")
        if p.parent.name not in skip
    )


def cpu_overrides(model_dir: Path, data: Path, run: Path, with_eval: bool) -> list[str]:
    overrides = [
        f"model.name_or_path={model_dir}",
        "model.dtype=float32",
        "model.attn_implementation=sdpa",
        f"data.train={data}",
        "data.max_length=32",
        f"data.cache_dir={run / 'tokenized'}",
        f"training.output_dir={run}",
        "training.max_steps=2",
        "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=4",
        "training.gradient_accumulation_steps=2",
        "training.bf16=false",
        "training.use_cpu=true",
        "training.logging_steps=1",
        "training.disable_tqdm=true",
        "training.report_to=[]",
    ]
    if with_eval:
        overrides += [f"data.eval={data}", "training.eval_steps=2", "training.save_steps=2"]
    return overrides


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tokenizer, qwen2_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stand_ins")
    write_dream_dir(root / "dream", tokenizer)
    write_llada_dir(root / "llada", tokenizer)
    return {"dream": root / "dream", "llada": root / "llada", "ar": qwen2_dir}


def test_every_shipped_model_recipe_is_covered():
    assert shipped_recipes() == sorted(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_two_steps_on_tiny_stand_ins(recipe, stand_ins, chat_file, tmp_path):
    path = REPO / "recipes" / recipe
    original = load_recipe_unchecked(path)
    family = RECIPES[recipe]
    with_eval = original["data"].get("eval") is not None
    run = tmp_path / "run"
    config = load_recipe(path, cpu_overrides(stand_ins[family], chat_file, run, with_eval))

    assert config.model.family == family
    assert (config.lora is not None) == ("lora" in original)
    trainer = train(config)

    assert trainer.state.global_step == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)
    if with_eval:
        assert any("eval_loss" in e for e in trainer.state.log_history)
    saved = "adapter_config.json" if config.lora else "config.json"
    assert (run / saved).is_file()
    assert json.loads((run / "dlm_run.json").read_text())["global_step"] == 2


def load_recipe_unchecked(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_header_documents_hardware_and_launch_line(recipe):
    header = "".join(
        line for line in (REPO / "recipes" / recipe).read_text().splitlines(True) if line.startswith("#")
    )
    assert "Hardware:" in header
    assert f"dlm-sft train recipes/{recipe}" in header
    assert f"dlm-sft plan recipes/{recipe}" in header
