"""Every TRL `SFTConfig` / `TrainingArguments` key is either honoured or refused with the diffusion
equivalent; `chat_template_path` renders the data and travels with the run; enum spellings YAML
reads as booleans (`save_strategy: no`) work."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import re
import types
import typing

import pytest
import torch
from trl import SFTConfig

from sft.config import (
    DIFFUSION_FIELDS,
    FAMILY_FIELDS,
    DiffusionSFTConfig,
)
from sft.data.sources import load_chat_rows
from sft.data.splits import prepare_data
from sft.errors import UserError
from sft.recipe import SECRET_FIELDS, build_run_config, load_recipe
from sft.training.run import build_trainer
from sft.trl_keys import REFUSED_TRAINING_KEYS, SCRIPT_KEYS
from tests.conftest import QUICKSTART_MODEL, REPO, recipe_dict

HINTS = typing.get_type_hints(DiffusionSFTConfig)
DEFAULTS = DiffusionSFTConfig(output_dir="defaults")

SAMPLE_VALUES = {  # string-typed fields: a valid value other than the default
    "include_num_input_tokens_seen": "all",
    "log_level": "info",
    "log_level_replica": "error",
    "report_to": ["tensorboard"],
    "project": "my-project",
    "include_for_metrics": ["loss"],
    "train_sampling_strategy": "group_by_length",
    "length_column_name": "n_tokens",
    "debug": ["underflow_overflow"],
    "accelerator_config": {"split_batches": True},
    "lr_scheduler_kwargs": {"num_cycles": 2},
    "optim_args": "beta3=0.9",
    "optim_target_modules": ["attn"],
    "activation_checkpointing_kwargs": {"use_reentrant": False},
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "torch_compile_backend": "inductor",
    "torch_compile_mode": "reduce-overhead",
    "neftune_noise_alpha": 5.0,
    "torch_empty_cache_steps": 10,
    "run_name": "first-run",
    "trackio_space_id": "me/space",
    "trackio_bucket_id": "bucket",
    "trackio_static_space_id": "me/static",
    "eval_steps": 10,
    "eval_accumulation_steps": 2,
    "save_total_limit": 3,
    "hub_private_repo": True,
    "hub_model_id": "me/model",
    "hub_revision": "v1",
    "metric_for_best_model": "eval_loss",
    "greater_is_better": True,
    "data_seed": 7,
    "dataloader_prefetch_factor": 4,
    "dataloader_multiprocessing_context": "spawn",
    "ddp_find_unused_parameters": True,
    "ddp_bucket_cap_mb": 50,
    "ddp_broadcast_buffers": False,
    "ddp_static_graph": True,
    "fsdp": "full_shard",
    "fsdp_config": {"min_num_params": 1000},
    "deepspeed": {"zero_optimization": {"stage": 2}},
    "resume_from_checkpoint": True,
    "chat_template_path": "template.jinja",
}
STORED_AS = {"fsdp": True}  # transformers turns `full_shard` into True + fsdp_config["reshard_after_forward"]
COMPANIONS = {
    "load_best_model_at_end": {"eval_strategy": "steps", "save_strategy": "steps"},
    "dataloader_prefetch_factor": {"dataloader_num_workers": 2},
    "dataloader_multiprocessing_context": {"dataloader_num_workers": 2},
}
NEEDS_A_GPU = set() if torch.cuda.is_available() else {"bf16", "bf16_full_eval", "tf32"}
"""transformers itself refuses these on a CPU-only machine; on a GPU they pass through like the rest."""
NEEDS_A_PACKAGE = {} if importlib.util.find_spec("deepspeed") else {"deepspeed": "deepspeed"}
"""Without the package, a one-line error naming it; with it, passed through like the rest."""
NEEDS_A_LAUNCHER = {"ddp_backend"}
"""transformers starts the process group for it: it works under `--accelerate`/torchrun only."""
CPU_ONLY_OVERRIDE = {"dataloader_pin_memory"}
"""Set to False without CUDA (pinning needs a GPU); passed through where one exists."""


def _another_value(name: str):
    """A valid value for field `name` that differs from its default."""
    if name in SAMPLE_VALUES:
        return SAMPLE_VALUES[name]
    hint, current = HINTS[name], getattr(DEFAULTS, name)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for arg in typing.get_args(hint) if union else (hint,):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            now = current.value if isinstance(current, enum.Enum) else current
            return next(m.value for m in arg if m.value != now)
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + 3
    if isinstance(current, float):
        return current * 0.5 if current else 0.25
    raise AssertionError(f"no sample value for {name}: add one to SAMPLE_VALUES")


def _recipe(training: dict) -> dict:
    return {
        "model": {"name_or_path": str(QUICKSTART_MODEL)},
        "data": {"train": str(QUICKSTART_MODEL / "config.json")},
        "training": training,
    }


def _plain(value, like):
    """`value` as the recipe spelled it: enums as their values, and of a config object or dict
    only the keys the recipe set."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):  # an option list transformers parsed from a string or list
        plain = [_plain(v, None) for v in value]
        return " ".join(plain) if isinstance(like, str) else plain
    if isinstance(like, dict) and not isinstance(value, str):
        items = value if isinstance(value, dict) else vars(value)
        return {k: _plain(items.get(k), v) for k, v in like.items()}
    return value


SFT_ONLY_HONOURED = {"chat_template_path"}  # proved by the chat-template test below


def test_every_sftconfig_field_is_honoured_or_refused():
    trainer_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    sft_only = trainer_fields - {f.name for f in dataclasses.fields(SFTConfig.__mro__[1])}
    assert sft_only - set(REFUSED_TRAINING_KEYS) == SFT_ONLY_HONOURED, "a TRL key is neither used nor refused"
    passed_through = []
    for name in sorted(trainer_fields - set(DIFFUSION_FIELDS) - set(FAMILY_FIELDS) - {"output_dir"}):
        refusal = _refusal(name)
        if refusal:
            value, message = refusal
            with pytest.raises(UserError, match=message):
                build_run_config(_recipe({name: value}))
            continue
        value = _another_value(name)
        config = build_run_config(_recipe({**COMPANIONS.get(name, {}), name: value}))
        if name not in CPU_ONLY_OVERRIDE:
            assert _plain(getattr(config.training, name), value) == STORED_AS.get(name, value), name
            passed_through.append(name)
    assert len(passed_through) > 90  # every other TrainingArguments field reaches the trainer as set


def _refusal(name: str) -> tuple[object, str] | None:
    """(value, error pattern) for a field this machine refuses, None for one that passes through."""
    if name in REFUSED_TRAINING_KEYS or name in SECRET_FIELDS:
        return _refused_value(name), f"training.{name}: (not used by diffusion SFT|credentials)"
    if name in NEEDS_A_PACKAGE:
        return SAMPLE_VALUES[name], f"not installed.*{NEEDS_A_PACKAGE[name]}"
    if name in NEEDS_A_LAUNCHER:
        return "gloo", "process group"
    if name in NEEDS_A_GPU:
        return True, "bf16/gpu|tf32|GPU|CUDA|cuda"
    return None


@pytest.mark.parametrize("key", sorted(REFUSED_TRAINING_KEYS))
def test_a_refused_key_is_one_line_naming_the_diffusion_equivalent(key):
    with pytest.raises(UserError) as err:
        build_run_config(_recipe({key: _refused_value(key)}), "r.yaml")
    line = err.value.line()
    assert "\n" not in line and f"r.yaml: training.{key}: not used by diffusion SFT" in line
    assert REFUSED_TRAINING_KEYS[key] in line


def _refused_value(key: str):
    return True if isinstance(getattr(DEFAULTS, key, None), bool) else "x"


@pytest.mark.parametrize("key", ["save_strategy", "eval_strategy", "logging_strategy"])
def test_no_read_by_yaml_as_false_is_the_no_strategy(key, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(_recipe({"use_cpu": True})))
    config = load_recipe(recipe, [f"training.{key}=no"])
    assert getattr(config.training, key).value == "no"
    with pytest.raises(UserError, match=f"training.{key}: wrong type"):
        load_recipe(recipe, [f"training.{key}=yes"])  # True is no strategy


def test_chat_template_path_renders_the_data_and_is_saved_with_the_run(qwen2_dir, chat_file, tmp_path):
    template = tmp_path / "marked.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "run", max_steps=1)
    raw["training"]["chat_template_path"] = str(template)
    config = build_run_config(raw)
    data = prepare_data(config)
    first = data.tokenizer.decode(data.train.dataset[0]["input_ids"])
    row = load_chat_rows(str(chat_file))[0]["messages"]
    assert first.startswith(f"[{row[0]['role']}] {row[0]['content']}")
    trainer = build_trainer(config, data)
    trainer.train()
    trainer.save_model()
    assert (tmp_path / "run" / "chat_template.jinja").read_text() == template.read_text()

    raw["training"]["chat_template_path"] = str(chat_file)
    with pytest.raises(UserError, match="training.chat_template_path: not a .jinja/.j2 chat template"):
        prepare_data(build_run_config(raw))


def readme_trl_table() -> list[tuple[list[str], list[str], str]]:
    """Rows of the README's "Coming from TRL / alignment-handbook" table: (TRL keys, dlm-sft names, the
    dlm-sft cell)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Coming from TRL / alignment-handbook", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            trl = [k.split(":")[0] for k in re.findall(r"`([^`]+)`", cells[0])]
            rows.append((trl, re.findall(r"`([^`]+)`", cells[1]), cells[1]))
    return rows


TABLE = readme_trl_table()


def test_the_readme_trl_table_is_read():
    keys = [key for trl, _, _ in TABLE for key in trl]
    assert {
        "model_name_or_path",
        "dataset_name",
        "max_seq_length",
        "packing",
        "resume_from_checkpoint",
    } <= set(keys)


@pytest.mark.parametrize(("trl", "names", "cell"), TABLE, ids=[",".join(row[0]) for row in TABLE])
def test_each_row_of_the_readme_trl_table_is_true(trl, names, cell, tmp_path):
    """Each TRL key works as the row says: as in TRL ("the same"), or refused with one line naming a
    dlm-sft setting of the row, under `training:` and, for a script key, at a handbook recipe's top level."""
    for key in trl:
        if cell.startswith("the same"):
            value = True if key == "resume_from_checkpoint" else str(tmp_path / "t.jinja")
            assert getattr(build_run_config(_recipe({key: value})).training, key) == value
            continue
        recipes = [_recipe({key: _refused_value(key)})]
        if key in SCRIPT_KEYS:
            recipes.append({**_recipe({}), key: "x"})
        for raw in recipes:
            with pytest.raises(UserError) as err:
                build_run_config(raw, "r.yaml")
            line = err.value.line()
            assert "unknown" not in line and "\n" not in line, line
            assert any(name.split(":")[0] in line for name in names) or "remove it" in line, line


@pytest.mark.parametrize("typo", ["max_seq_lenght", "packin", "dataset_nam"])
def test_a_typo_is_never_pointed_at_a_refused_key(typo):
    with pytest.raises(UserError) as err:
        build_run_config(_recipe({typo: 1}))
    suggestion = re.search(r"did you mean '(\w+)'", err.value.line())
    assert suggestion is None or suggestion.group(1) not in {*REFUSED_TRAINING_KEYS, *SCRIPT_KEYS}
