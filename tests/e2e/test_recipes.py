"""Every shipped recipe runs as shipped, against the stand-in hub cache (tests/hub_cache.py), offline.

The recipes name hub ids (Dream-org/..., GSAI-ML/..., Qwen/..., allenai/tulu-3-sft-mixture,
HuggingFaceTB/smoltalk) and the paths a user has after following the recipe's header: the data recipe
writes `data/tulu3_smoltalk/`, the LoRA recipes read the user's `my_domain/train.jsonl`. In a fresh
working directory, the data recipe is prepared, then each training recipe runs `--dry-run` and two
optimizer steps with only size and CPU overrides: no model, data or output path is overridden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from sft.cli import main
from tests.conftest import REPO, sort_rows, write_chat_rows
from tests.hub_cache import SMOLTALK, TULU, use_hub_cache

SIZE = [
    "data.max_length=32",
    "training.max_steps=2",
    "training.per_device_train_batch_size=4",
    "training.per_device_eval_batch_size=4",
    "training.gradient_accumulation_steps=2",
    "training.logging_steps=1",
]
"""What makes a 7B recipe a two-step CPU run: lengths, steps, batch sizes."""
CPU = [
    "model.dtype=float32",
    "model.attn_implementation=sdpa",
    "training.bf16=false",
    "training.use_cpu=true",
    "training.disable_tqdm=true",
]
"""What a CPU needs: fp32 weights, SDPA, no bf16."""
DATA_RECIPES = {"data/tulu3_smoltalk.yaml": ["eval_fraction=0.25"]}  # tiny data: a visible eval share


def shipped_recipes() -> list[str]:
    """Every recipe YAML shipped under recipes/ (accelerate configs and lm-eval tasks are not recipes)."""
    return sorted(
        str(p.relative_to(REPO / "recipes"))
        for p in (REPO / "recipes").rglob("*.yaml")
        if p.parent.name not in ("accelerate", "eval_tasks")
    )


TRAINING_RECIPES = [r for r in shipped_recipes() if r not in DATA_RECIPES]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hub_cache_dir) -> Path:
    """A user's working directory after the recipes' data steps: the prepared Tulu 3 + SmolTalk set
    and a domain file."""
    root = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as patch:
        use_hub_cache(patch, hub_cache_dir, root / ".datasets_cache")
        patch.chdir(root)
        patch.setenv("HOME", str(root))
        for recipe, sizes in DATA_RECIPES.items():
            assert main(["prepare", f"recipes/{recipe}", *sizes]) == 0
    write_chat_rows(root / "my_domain" / "train.jsonl", sort_rows(48, seed=3))
    return root


@pytest.fixture
def in_workspace(workspace, hub_cache, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HOME", str(workspace))  # the tokenized-data cache (~/.cache/dlm-sft) goes here
    return workspace


def test_every_shipped_recipe_is_covered():
    assert "data/tulu3_smoltalk.yaml" in shipped_recipes()
    assert {"dream-7b/sft_full.yaml", "dream-7b/sft_lora.yaml", "llada-8b/sft_full.yaml"} <= set(
        TRAINING_RECIPES
    )


def test_data_recipe_prepares_tulu3_and_smoltalk_from_the_hub_ids(workspace):
    stats = json.loads((workspace / "data" / "tulu3_smoltalk" / "stats.json").read_text())
    assert set(stats["per_source"]) == {"tulu3", "smoltalk"}
    assert stats["per_source"]["tulu3"]["input_rows"] == 48  # the whole stand-in train split
    assert stats["per_source"]["smoltalk"]["input_rows"] == 12  # config `all`, split train
    assert stats["train_rows"] > 0 and stats["eval_rows"] > 0


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_recipe_dry_runs_and_trains_two_steps_as_shipped(recipe, in_workspace, capsys):
    path = f"recipes/{recipe}"
    shipped = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    assert main(["train", path, *SIZE, *CPU, "--dry-run"]) == 0
    dry_run = capsys.readouterr().out
    assert "total steps: 2" in dry_run and shipped["model"]["name_or_path"] in dry_run

    with_eval = shipped["data"].get("eval") is not None and shipped["training"].get("eval_strategy") != "no"
    eval_sizes = ["training.eval_steps=2", "training.save_steps=2"] if with_eval else []
    assert main(["train", path, *SIZE, *CPU, *eval_sizes]) == 0

    run = in_workspace / shipped["training"]["output_dir"]
    state = json.loads((run / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert (
        state["global_step"] == 2 and len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)
    )
    if with_eval:
        assert any("eval_loss" in e for e in state["log_history"])
    assert (run / ("adapter_config.json" if "lora" in shipped else "config.json")).is_file()
    if "lora" in shipped:
        base = json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == shipped["model"]["name_or_path"]  # the hub id, not the cache path

    card = ModelCard.load(run / "README.md")
    base = shipped["model"]["name_or_path"]
    assert card.data.base_model == (None if base.startswith("recipes/") else base)  # never a local path
    if str(shipped["data"]["train"]).startswith("data/tulu3_smoltalk"):  # the sources behind `prepare`
        assert card.data.datasets == [TULU, SMOLTALK]

    exported = in_workspace / "exports" / recipe.replace("/", "-")
    assert main(["export", str(run), "--output", str(exported)]) == 0
    files = {p.name for p in exported.iterdir()}
    layout = json.loads((exported / "config.json").read_text())["model_type"]
    assert layout == {"dream": "Dream", "llada": "llada"}.get(shipped["model"].get("family"), "qwen2")
    remote_code = {"Dream": {"modeling_dream.py", "configuration_dream.py"}, "llada": {"modeling_llada.py"}}
    assert remote_code.get(layout, set()) <= files  # the base's own code, from its hub snapshot


@pytest.mark.parametrize("recipe", [r for r in TRAINING_RECIPES if not r.startswith("quickstart/")])
def test_recipe_header_documents_hardware_and_launch_line(recipe):
    header = "".join(
        line for line in (REPO / "recipes" / recipe).read_text().splitlines(True) if line.startswith("#")
    )
    assert "Hardware:" in header
    assert f"dlm-sft train recipes/{recipe}" in header
    assert f"dlm-sft plan recipes/{recipe}" in header
