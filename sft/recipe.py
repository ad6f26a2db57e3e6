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

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from sft.config import (
    DIFFUSION_FIELDS,
    FAMILY_FIELDS,
    DataSettings,
    DiffusionSFTConfig,
    LoraSettings,
    ModelSettings,
    RunConfig,
)
from sft.errors import UserError

SECTIONS = ("model", "data", "diffusion", "lora", "training")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SECRET_FIELDS = ("hub_token",)
"""TrainingArguments fields holding credentials: refused in recipes, since transformers pickles the
arguments into `training_args.bin` next to every checkpoint."""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a recipe file, apply `section.key=value` overrides and validate everything."""
    file = str(path)
    if not Path(file).is_file():
        raise UserError("recipe file not found", file=file, expected="a YAML recipe file")
    try:
        raw = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"not valid YAML: {_first_line(err)}", file=file) from None
    if not isinstance(raw, dict):
        raise UserError(
            "the recipe must be a mapping of sections",
            file=file,
            expected=f"sections {', '.join(SECTIONS)}",
        )
    for override in overrides:
        apply_override(raw, override, file)
    return build_run_config(raw, file)


def apply_override(raw: dict[str, Any], override: str, file: str) -> None:
    """Set `section.key=value` (value parsed as YAML) in the raw recipe dict."""
    key, sep, value = override.partition("=")
    if not sep or "." not in key:
        raise UserError(f"bad override {override!r}", file=file, expected="section.key=value")
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise UserError(
            f"unknown section {section!r}{_suggest(section, SECTIONS)}",
            file=file,
            key=key,
            expected=f"one of {', '.join(SECTIONS)}",
        )
    target = raw.get(section)
    if not isinstance(target, dict):
        target = raw[section] = {}
    try:
        target[name] = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        target[name] = value


def build_run_config(raw: dict[str, Any], file: str = "<recipe>") -> RunConfig:
    """Validate a raw recipe dict and turn it into a `RunConfig`."""
    for section in raw:
        if section not in SECTIONS:
            raise UserError(
                f"unknown section{_suggest(section, SECTIONS)}",
                file=file,
                key=section,
                expected=f"one of {', '.join(SECTIONS)}",
            )
    model = _build(ModelSettings, _section(raw, "model", file), "model", file)
    data = _build(DataSettings, _section(raw, "data", file), "data", file)
    lora_raw = raw.get("lora")
    lora = None if lora_raw is None else _build(LoraSettings, _section(raw, "lora", file), "lora", file)
    training = _build_training(_section(raw, "training", file), _section(raw, "diffusion", file), file)
    _check_model_and_data(model, data, file)
    if data.batching == "pack" and training.eos_tail in ("all", "one"):
        raise UserError(
            f"eos_tail {training.eos_tail!r} fills every row to max_length; nothing to pack",
            file=file,
            key="data.batching",
            expected="diffusion.eos_tail first_n or none, or pad",
        )
    return RunConfig(
        model=model,
        data=data,
        training=training,
        lora=lora,
        source=file,
        training_keys=tuple(_section(raw, "training", file)),
    )


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


def _build(cls: type, values: dict[str, Any], section: str, file: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in hints:
            raise UserError(
                f"unknown key{_suggest(key, names)}",
                file=file,
                key=f"{section}.{key}",
                expected=f"one of {', '.join(names)}",
            )
        values[key] = _check_type(value, hints[key], file, f"{section}.{key}")
    return cls(**values)


def _build_training(training: dict[str, Any], diffusion: dict[str, Any], file: str) -> DiffusionSFTConfig:
    hints = typing.get_type_hints(DiffusionSFTConfig)
    training_names = [n for n in hints if n not in DIFFUSION_FIELDS and n not in FAMILY_FIELDS]
    owned_elsewhere = {
        "max_length": "data.max_length",
        "packing": "data.batching: pack",
        "padding_free": "data.batching: pack",
    }
    for key, value in diffusion.items():
        if key not in DIFFUSION_FIELDS:
            hint = " (a training setting: put it under training:)" if key in training_names else ""
            raise UserError(
                f"unknown key{hint}{_suggest(key, DIFFUSION_FIELDS)}",
                file=file,
                key=f"diffusion.{key}",
                expected=f"one of {', '.join(DIFFUSION_FIELDS)}",
            )
        diffusion[key] = _check_type(value, hints[key], file, f"diffusion.{key}")
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
        if key in owned_elsewhere or key in FAMILY_FIELDS:
            where = owned_elsewhere.get(key, "the model family")
            raise UserError("set elsewhere", file=file, key=f"training.{key}", expected=f"{where} instead")
        if key not in hints:
            raise UserError(
                f"unknown key{_suggest(key, training_names)}",
                file=file,
                key=f"training.{key}",
                expected="a transformers TrainingArguments / trl SFTConfig field",
            )
        training[key] = _check_type(value, hints[key], file, f"training.{key}")
    kwargs = {"output_dir": "runs/" + Path(file).stem, **training, **diffusion}
    try:
        return DiffusionSFTConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"invalid training settings: {_first_line(err)}", file=file, key="training") from None


def _check_type(value: Any, hint: Any, file: str, key: str) -> Any:
    """Return `value` if it fits `hint`; YAML 1.1 reads `2e-6` as a string, so a numeric string is
    accepted where a float is expected."""
    if _matches(value, hint):
        return value
    if isinstance(value, str) and _matches(1.5, hint):
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(
        f"wrong type: got {value!r} ({type(value).__name__})", file=file, key=key, expected=_describe(hint)
    )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        if issubclass(hint, str) or hint.__module__ != "builtins":  # str enums, paths, ...
            return isinstance(value, (str, hint))
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def _check_model_and_data(model: ModelSettings, data: DataSettings, file: str) -> None:
    if not model.name_or_path:
        raise UserError(
            "missing", file=file, key="model.name_or_path", expected="a model directory or hub id"
        )
    if not Path(model.name_or_path).exists() and not _HUB_ID.match(model.name_or_path):
        raise UserError(
            f"model directory not found: {model.name_or_path}",
            file=file,
            key="model.name_or_path",
            expected="an existing directory or a hub id",
        )
    if model.tokenizer and not Path(model.tokenizer).exists() and not _HUB_ID.match(model.tokenizer):
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
        for item in [value] if isinstance(value, str) else (value or []):
            if not Path(item).exists():
                raise UserError(
                    f"file not found: {item}",
                    file=file,
                    key=f"data.{key}",
                    expected="an existing .jsonl/.json/.parquet file or directory",
                )
    if data.max_length < 2:
        raise UserError(
            f"too small: {data.max_length}",
            file=file,
            key="data.max_length",
            expected="an integer >= 2",
        )


def _suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
