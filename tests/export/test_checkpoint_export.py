"""`dlm-sft export RUN/checkpoint-N` of a full fine-tune from a Dream hub base reads the run's record as
the export of the run directory does (base id, datasets, recipe, Dream's remote code from the base's
snapshot), and no export's generation_config.json makes transformers warn.

The base is the Dream stand-in of tests/hub_cache.py under its real hub id, here with remote code that
runs (a `DreamConfig`/`DreamModel` over transformers' Qwen2 classes), so the card's own
`trust_remote_code` snippet can be run as a user would."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import GenerationConfig

from sft.cli import main
from sft.sampling.loading import load_for_sampling
from tests.e2e.test_recipes import CPU
from tests.hub_cache import SMOLTALK, publish, use_hub_cache, write_dream_repo, write_smoltalk_repo

DREAM_BASE = "Dream-org/Dream-v0-Base-7B"
RECIPE = "recipes/dream-7b/sft_full.yaml"
DREAM_CODE = {
    "configuration_dream.py": (
        "from transformers import Qwen2Config\n\n\n"
        "class DreamConfig(Qwen2Config):\n"
        '    model_type = "Dream"\n'
    ),
    "modeling_dream.py": (
        "from transformers import Qwen2ForCausalLM\n\n"
        "from .configuration_dream import DreamConfig\n\n\n"
        "class DreamModel(Qwen2ForCausalLM):\n"
        "    config_class = DreamConfig\n"
    ),
}
"""A stand-in of Dream's release code that loads its weights (Dream's weights are Qwen2's)."""


@pytest.fixture(scope="module")
def dream_cache(tmp_path_factory, tokenizer) -> Path:
    """A hub cache holding the Dream base (with runnable remote code) and SmolTalk."""
    root = tmp_path_factory.mktemp("dream_cache")
    cache = root / "hub"
    base, smoltalk = root / "base", root / "smoltalk"
    for directory in (base, smoltalk):
        directory.mkdir()
    write_dream_repo(base, tokenizer, seed=1)
    for name, code in DREAM_CODE.items():
        (base / name).write_text(code)
    write_smoltalk_repo(smoltalk)
    publish(cache, DREAM_BASE, base)
    publish(cache, SMOLTALK, smoltalk, repo_type="dataset")
    return cache


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, dream_cache) -> Path:
    """Two full fine-tuning steps of the Dream recipe from the hub id, a checkpoint at each step."""
    root = tmp_path_factory.mktemp("full_run")
    with pytest.MonkeyPatch.context() as patch:
        use_hub_cache(patch, dream_cache, root / ".datasets_cache")
        overrides = [
            f"data.train={{name: {SMOLTALK}, config: everyday-conversations}}",
            "data.eval=null",
            "data.max_length=32",
            f"data.cache_dir={root / 'tokenized'}",
            f"training.output_dir={root / 'run'}",
            "training.max_steps=2",
            "training.per_device_train_batch_size=4",
            "training.gradient_accumulation_steps=1",
            "training.eval_strategy=no",
            "training.logging_steps=1",
            "training.save_steps=1",
            *CPU,
        ]
        assert main(["train", RECIPE, *overrides]) == 0
    return root / "run"


@pytest.fixture
def offline_dream(dream_cache, tmp_path, monkeypatch) -> Path:
    use_hub_cache(monkeypatch, dream_cache, tmp_path / ".datasets_cache")
    return dream_cache


def export(source: Path, output: Path) -> ModelCard:
    assert main(["export", str(source), "--output", str(output)]) == 0
    return ModelCard.load(output / "README.md")


def test_a_checkpoint_exports_with_the_runs_base_data_recipe_and_remote_code(
    full_run, offline_dream, tmp_path
):
    checkpoint = full_run / "checkpoint-2"
    run_card = export(full_run, tmp_path / "from_run")
    card = export(checkpoint, tmp_path / "from_checkpoint")

    assert card.data.base_model == run_card.data.base_model == DREAM_BASE
    assert card.data.datasets == run_card.data.datasets == [SMOLTALK]
    assert "local `checkpoint-2`" not in card.text
    assert f"| recipe | `{RECIPE}` |" in card.text and "## Recipe" in card.text
    assert "| optimizer steps | 2 |" in card.text

    out = tmp_path / "from_checkpoint"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "Dream" and set(config["auto_map"].values()) == {
        "configuration_dream.DreamConfig",
        "modeling_dream.DreamModel",
    }
    snapshot = next((offline_dream / "models--Dream-org--Dream-v0-Base-7B" / "snapshots").iterdir())
    for name in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py"):
        assert (out / name).read_bytes() == (snapshot / name).read_bytes()  # the base's own code

    # The card's trust_remote_code snippet loads the export: the same weights dlm-sft samples.
    snippet = re.findall(r"```python\n(.*?)```", card.text, re.S)[1]
    assert "trust_remote_code=True" in snippet
    namespace: dict = {}
    exec(snippet, namespace)
    ids = torch.tensor([[1, 5, 9, 3, 3, 3]])
    reference = load_for_sampling(out, device="cpu").model
    with torch.no_grad():
        assert torch.equal(
            namespace["model"].state_dict()["lm_head.weight"], reference.state_dict()["lm_head.weight"]
        )
        assert namespace["model"].eval()(ids).logits.shape == reference(ids).logits.shape


def test_an_exported_generation_config_loads_without_invalid_flag_warnings(full_run, offline_dream, tmp_path):
    out = tmp_path / "exported"
    export(full_run, out)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    logging.getLogger("transformers").addHandler(handler)
    try:
        generation = GenerationConfig.from_pretrained(out)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    generation.validate(strict=True)  # raises on any flag transformers would warn about
    assert not [m for m in seen if "generation flags are not valid" in m]
    assert generation.steps == 512 and generation.alg == "entropy"
