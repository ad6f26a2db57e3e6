"""Recipe YAML → `RunConfig`: dotted overrides, validation, one-line errors with suggestions.

    model:     {name_or_path, family, ...}        → ModelSettings
    data:      {train, eval, max_length, ...}     → DataSettings
    diffusion: {weighting, t_min, eos_tail, ...}  → DiffusionSFTConfig (diffusion fields)
    lora:      {r, alpha, ...}  (absent: full FT) → LoraSettings
    training:  {any SFTConfig field}              → DiffusionSFTConfig

Every mistake (unknown key, wrong type, missing file) raises `UserError` naming the recipe file,
the dotted key and what was expected, with the closest valid key for typos.
"""

from __future__ import annotations

import importlib.resources
import typing
from pathlib import Path
from typing import Any

from sft.config import (
    DIFFUSION_FIELDS,
    FAMILY_FIELDS,
    DataSettings,
    DiffusionSFTConfig,
    LoraSettings,
    ModelSettings,
    RunConfig,
)
from sft.data.files import LISTED
from sft.data.sources import is_dataset_id
from sft.errors import UserError
from sft.families import FAMILIES
from sft.families.attention import PACKED_VARLEN
from sft.hub import DatasetRef
from sft.trl_keys import REFUSED_TRAINING_KEYS, SCRIPT_KEYS, refusal
from sft.validation import (
    apply_override,
    build_dataclass,
    check_type,
    first_line,
    is_hub_id,
    read_mapping,
    suggest,
)

SECTIONS = ("model", "data", "diffusion", "lora", "training")
SECRET_FIELDS = ("hub_token",)
"""TrainingArguments fields holding credentials: refused in recipes, since transformers pickles the
arguments into `training_args.bin` next to every checkpoint."""


def shipped_recipes() -> Path:
    """The recipes shipped with the package (the repository's top-level `recipes/`, mapped into the
    wheel as `sft.recipes`); run from a checkout that was never installed, that `recipes/` itself."""
    try:
        return Path(str(importlib.resources.files("sft.recipes")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "recipes"


def locate(path: str | Path) -> str:
    """`path` as given when it exists; else, for a `recipes/...` path, the shipped copy (so recipes
    and the files they name resolve from any directory once the package is installed)."""
    text = str(path)
    if Path(text).exists() or not text.startswith("recipes/"):
        return text
    shipped = shipped_recipes() / text.removeprefix("recipes/")
    return str(shipped) if shipped.exists() else text


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, require_data: bool = True
) -> RunConfig:
    """Read a recipe file, apply `section.key=value` overrides and validate everything.

    `require_data=False` (for `dlm-sft plan`, which sizes a run before its data or GPUs exist) accepts
    data paths not on disk yet and bf16/fp16 on a machine without a GPU; all else is checked as for
    training."""
    file = locate(path)
    raw = read_mapping(file, f"a YAML recipe with sections {', '.join(SECTIONS)}")
    for override in overrides:
        _check_section(override, file)
        apply_override(raw, override, file)
    if require_data:
        return build_run_config(raw, file)
    return _build_without_data_or_gpu(raw, file)


def _build_without_data_or_gpu(raw: dict[str, Any], file: str) -> RunConfig:
    data = _located(raw["data"], ("train", "eval")) if isinstance(raw.get("data"), dict) else {}
    missing = {k: data[k] for k in ("train", "eval") if data.get(k) and not _all_exist(data[k])}
    # TrainingArguments refuses bf16/fp16 without a GPU: validate without them, then set them back
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    precision = {k: training[k] for k in ("bf16", "fp16") if training.get(k) is True}
    checked = {
        **raw,
        "data": {**data, **dict.fromkeys(missing, file)},
        "training": {**training, **dict.fromkeys(precision, False)},
    }
    config = build_run_config(checked, file)
    for key, value in missing.items():
        setattr(config.data, key, value)
    for key, value in precision.items():
        setattr(config.training, key, value)
    return config


def _all_exist(value: Any) -> bool:
    return all(Path(str(p)).exists() for p in ([value] if isinstance(value, str) else value or []))


def _check_section(override: str, file: str) -> None:
    key, sep, _ = override.partition("=")
    if not sep or "." not in key:
        raise UserError(f"bad override {override!r}", file=file, expected="section.key=value")
    section = key.partition(".")[0]
    if section not in SECTIONS:
        raise UserError(
            f"unknown section {section!r}{suggest(section, SECTIONS)}",
            file=file,
            key=key,
            expected=f"one of {', '.join(SECTIONS)}",
        )


def build_run_config(raw: dict[str, Any], file: str = "<recipe>") -> RunConfig:
    """Validate a raw recipe dict and turn it into a `RunConfig`."""
    for section in raw:
        if section in SCRIPT_KEYS:
            raise _script_key(section, file)
        if section not in SECTIONS:
            raise UserError(
                f"unknown section{suggest(section, SECTIONS)}",
                file=file,
                key=section,
                expected=f"one of {', '.join(SECTIONS)}",
            )
    model = build_dataclass(
        ModelSettings, _located(_section(raw, "model", file), ("name_or_path", "tokenizer")), "model", file
    )
    data = build_dataclass(
        DataSettings, _located(_section(raw, "data", file), ("train", "eval")), "data", file
    )
    lora_raw = raw.get("lora")
    lora = (
        None if lora_raw is None else build_dataclass(LoraSettings, _section(raw, "lora", file), "lora", file)
    )
    if lora is not None and isinstance(lora.target_modules, list) and "lm_head" in lora.target_modules:
        raise UserError(
            "an adapter on the LM head cannot be trained (the loss fuses the head's own weight)",
            file=file,
            key="lora.target_modules",
            expected="lora.modules_to_save: [lm_head] to train the head in full",
        )
    training = _build_training(_section(raw, "training", file), _section(raw, "diffusion", file), file)
    _check_model_and_data(model, data, file)
    if data.batching == "pack" and training.eos_tail in ("all", "one"):
        raise UserError(
            f"eos_tail {training.eos_tail!r} fills every row to max_length; nothing to pack",
            file=file,
            key="data.batching",
            expected="diffusion.eos_tail first_n or none, or pad",
        )
    unseparated = model.attn_implementation not in ("auto", "eager", *PACKED_VARLEN)
    if data.batching == "pack" and unseparated and not training.block_size:  # blocks bring their mask
        raise UserError(
            f"{model.attn_implementation!r} attention ignores packed document boundaries",
            file=file,
            key="model.attn_implementation",
            expected=f"auto, eager, {', '.join(PACKED_VARLEN)} with data.batching: pack",
        )
    return RunConfig(
        model=model,
        data=data,
        training=training,
        lora=lora,
        source=file,
        training_keys=tuple(_section(raw, "training", file)),
    )


def _located(section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The section with its `recipes/...` paths resolved (`locate`)."""
    located = dict(section)
    for key in keys:
        value = section.get(key)
        if isinstance(value, str):
            located[key] = locate(value)
        elif isinstance(value, list):
            located[key] = [locate(v) if isinstance(v, str) else v for v in value]
    return located


def _section(raw: dict[str, Any], name: str, file: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise UserError(
            f"section must be a mapping, got {type(value).__name__}",
            file=file,
            key=name,
            expected="key: value pairs",
        )
    return value


def _build_training(training: dict[str, Any], diffusion: dict[str, Any], file: str) -> DiffusionSFTConfig:
    hints = typing.get_type_hints(DiffusionSFTConfig)
    training_names = [n for n in hints if n not in DIFFUSION_FIELDS and n not in FAMILY_FIELDS]
    for key, value in diffusion.items():
        if key not in DIFFUSION_FIELDS:
            hint = " (a training setting: put it under training:)" if key in training_names else ""
            raise UserError(
                f"unknown key{hint}{suggest(key, DIFFUSION_FIELDS)}",
                file=file,
                key=f"diffusion.{key}",
                expected=f"one of {', '.join(DIFFUSION_FIELDS)}",
            )
        diffusion[key] = check_type(value, hints[key], file, f"diffusion.{key}")
    for key, value in training.items():
        if key in SECRET_FIELDS:  # checked first: the value must not reach any message or file
            raise UserError(
                "credentials do not belong in a recipe (recipes and run records are saved and shared)",
                file=file,
                key=f"training.{key}",
                expected="the HF_TOKEN environment variable or `hf auth login`",
            )
        if key in DIFFUSION_FIELDS:
            raise UserError(
                "a diffusion setting", file=file, key=f"training.{key}", expected=f"diffusion.{key}"
            )
        if key in FAMILY_FIELDS:
            raise UserError("set by the model family", file=file, key=f"training.{key}")
        if key in SCRIPT_KEYS:
            raise _script_key(f"training.{key}", file)
        if key in REFUSED_TRAINING_KEYS:
            raise UserError(refusal(key), file=file, key=f"training.{key}")
        if key not in hints:
            honoured = [n for n in training_names if n not in REFUSED_TRAINING_KEYS]
            raise UserError(
                f"unknown key{suggest(key, honoured)}",
                file=file,
                key=f"training.{key}",
                expected="a transformers TrainingArguments / trl SFTConfig field",
            )
        training[key] = check_type(value, hints[key], file, f"training.{key}")
    kwargs = {"output_dir": "runs/" + Path(file).stem, **training, **diffusion}
    try:
        return DiffusionSFTConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"invalid training settings: {first_line(err)}", file=file, key="training") from None
    except ImportError as err:  # e.g. `deepspeed:` without the deepspeed package
        raise UserError(
            f"needs a package that is not installed: {first_line(err)}", file=file, key="training"
        ) from None


def _script_key(key: str, file: str) -> UserError:
    setting = SCRIPT_KEYS[key.rpartition(".")[2]]
    return UserError(f"a TRL / alignment-handbook script setting; use {setting}", file=file, key=key)


def _check_data_source(item: str | dict[str, Any], where: str, file: str) -> None:
    """A data entry is an existing file or directory, a hub dataset id, or a `DatasetRef` mapping."""
    if isinstance(item, dict):
        ref = build_dataclass(DatasetRef, item, where, file)
        if not ref.name:
            raise UserError("missing", file=file, key=f"{where}.name", expected="a hub dataset id or a path")
        if not Path(ref.name).exists() and not is_hub_id(ref.name):
            raise UserError(
                f"not found: {ref.name}", file=file, key=f"{where}.name", expected="a hub dataset id or path"
            )
    elif not Path(item).exists() and not is_dataset_id(item):
        raise UserError(
            f"file not found: {item}",
            file=file,
            key=where,
            expected=f"an existing data file ({LISTED}) or directory, or a hub dataset id",
        )


def _check_model_and_data(model: ModelSettings, data: DataSettings, file: str) -> None:
    if model.family != "auto" and model.family not in FAMILIES:
        raise UserError(
            f"unknown family {model.family!r}{suggest(model.family, FAMILIES)}",
            file=file,
            key="model.family",
            expected=f"auto or one of {', '.join(FAMILIES)}",
        )
    if not model.name_or_path:
        raise UserError(
            "missing", file=file, key="model.name_or_path", expected="a model directory or hub id"
        )
    if not Path(model.name_or_path).exists() and not is_hub_id(model.name_or_path):
        raise UserError(
            f"model directory not found: {model.name_or_path}",
            file=file,
            key="model.name_or_path",
            expected="an existing directory or a hub id",
        )
    if model.tokenizer and not Path(model.tokenizer).exists() and not is_hub_id(model.tokenizer):
        raise UserError(
            f"tokenizer directory not found: {model.tokenizer}",
            file=file,
            key="model.tokenizer",
            expected="an existing directory or a hub id",
        )
    if not data.train:
        raise UserError("missing", file=file, key="data.train", expected="a chat data file or dir")
    for key in ("train", "eval"):
        value = getattr(data, key)
        items = [value] if isinstance(value, (str, dict)) else (value or [])
        for index, item in enumerate(items):
            where = f"data.{key}" if isinstance(value, (str, dict)) else f"data.{key}.{index}"
            _check_data_source(item, where, file)
    if data.max_length < 2:
        raise UserError(
            f"too small: {data.max_length}",
            file=file,
            key="data.max_length",
            expected="an integer >= 2",
        )
