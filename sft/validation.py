"""Validation shared by every recipe (training and data prep): read a YAML mapping, apply dotted
`key=value` overrides, and build a dataclass from a mapping with every key checked against its fields
and every value against its type hint. Mistakes are one-line `UserError`s naming the file and the
dotted key, with the closest valid key when there is a close one.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from sft.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """Does `name` look like a hub repository id (`org/name`)?"""
    return bool(_HUB_ID.match(name))


def read_mapping(file: str, expected: str) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping)."""
    if not Path(file).is_file():
        raise UserError("recipe file not found", file=file, expected=expected)
    try:
        raw = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"not valid YAML: {first_line(err)}", file=file) from None
    if not isinstance(raw, dict):
        raise UserError("the recipe must be a mapping", file=file, expected=expected)
    return raw


def apply_override(raw: dict[str, Any], override: str, file: str) -> None:
    """Set a dotted `key=value` (value parsed as YAML, else kept as text) in a raw recipe; list items
    are addressed by index (`sources.0.path=...`)."""
    dotted, sep, text = override.partition("=")
    if not sep or not dotted.strip():
        raise UserError(f"bad override {override!r}", file=file, expected="key=value")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = dotted.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(
                    "no such list item", file=file, key=where, expected=f"an index below {len(node)}"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif last:
            node[part] = value
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def build_dataclass(cls: type, values: dict[str, Any], where: str, file: str) -> Any:
    """`cls(**values)` after checking every key against the dataclass's fields and every value
    against its type hint (unknown keys get the closest valid one as a suggestion)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    checked = {}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UserError(
                f"unknown key{suggest(str(key), names)}",
                file=file,
                key=dotted,
                expected=f"one of {', '.join(names)}",
            )
        checked[key] = check_type(value, hints[key], file, dotted)
    return cls(**checked)


def check_type(value: Any, hint: Any, file: str, key: str) -> Any:
    """Return `value` if it fits `hint`. YAML 1.1 reads `2e-6` as a string, so a numeric string is
    accepted where a float is expected; and it reads `no` as False, so False is the choice `"no"`
    where `hint` is an enum with that choice (`save_strategy: no`, as TrainingArguments spells it)."""
    if _matches(value, hint):
        return value
    if value is False and _has_choice(hint, "no"):
        return "no"
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


def _has_choice(hint: Any, choice: str) -> bool:
    """Is `choice` one of the values of an enum (or Literal) that `hint` admits?"""
    if typing.get_origin(hint) is typing.Literal:
        return choice in typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_choice(arg, choice) for arg in typing.get_args(hint))
    return isinstance(hint, type) and issubclass(hint, enum.Enum) and choice in {m.value for m in hint}


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


def suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
