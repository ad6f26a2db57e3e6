"""The data recipe: YAML → validated dataclasses, with dotted `key=value` overrides.

Every mistake (unknown key, wrong type, missing required key) is a `UserError` that names the
recipe file, the dotted key and, for unknown keys, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft.errors import UserError

FORMATS = ("auto", "tulu3", "smoltalk", "messages", "sharegpt", "prompt_completion")


@dataclass
class SourceSpec:
    """One input: a hub id, a local directory in the hub's layout, or parquet/jsonl/json files."""

    name: str
    path: str
    config: str | None = None
    split: str = "train"
    format: str = "auto"


@dataclass
class FilterSpec:
    """Which filters run; malformed rows are always dropped, `malformed` only toggles the
    conversation-shape checks (roles, order, empty content) on top of the schema checks."""

    malformed: bool = True
    exact_dedup: bool = True
    max_tokens: int | None = None
    tokenizer: str | None = None
    near_dedup: bool = False
    near_dedup_threshold: float = 0.85
    near_dedup_num_perm: int = 64
    decontaminate: list[str] = field(default_factory=list)
    decontaminate_ngram: int = 13
    include_sources: list[str] = field(default_factory=list)
    exclude_sources: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    """A whole data recipe."""

    sources: list[SourceSpec]
    output_dir: str
    filters: FilterSpec = field(default_factory=FilterSpec)
    seed: int = 42
    eval_fraction: float = 0.01
    shard_rows: int = 100_000
    batch_rows: int = 2048
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path")
        return data


_TOP_KEYS = [f.name for f in dataclasses.fields(Recipe) if f.name != "path"]
_SOURCE_KEYS = [f.name for f in dataclasses.fields(SourceSpec)]
_FILTER_KEYS = [f.name for f in dataclasses.fields(FilterSpec)]


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"did you mean '{match[0]}'?" if match else ""


def _check_keys(data: dict, valid: list[str], where: str, file: str) -> None:
    for key in data:
        if key not in valid:
            dotted = f"{where}.{key}" if where else str(key)
            raise UserError(
                f"unknown key; {_closest(str(key), valid)}",
                file=file,
                key=dotted,
                expected="one of " + ", ".join(valid),
            )


def _typed(value: Any, kind: str, key: str, file: str) -> Any:
    """Check one value against a simple type name: int, float, bool, str, optional-*, list-str."""
    optional = kind.startswith("optional-")
    base = kind.removeprefix("optional-")
    if value is None and optional:
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str) and value != "",
        "list-str": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[base]
    if not ok:
        words = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a non-empty string",
            "list-str": "a list of strings",
        }[base]
        words += " or null" if optional else ""
        raise UserError(f"wrong type {type(value).__name__}", file=file, key=key, expected=words)
    return float(value) if base == "float" else value


_SOURCE_TYPES = {"name": "str", "path": "str", "config": "optional-str", "split": "str", "format": "str"}
_FILTER_TYPES = {
    "malformed": "bool",
    "exact_dedup": "bool",
    "max_tokens": "optional-int",
    "tokenizer": "optional-str",
    "near_dedup": "bool",
    "near_dedup_threshold": "float",
    "near_dedup_num_perm": "int",
    "decontaminate": "list-str",
    "decontaminate_ngram": "int",
    "include_sources": "list-str",
    "exclude_sources": "list-str",
}
_TOP_TYPES = {
    "output_dir": "str",
    "seed": "int",
    "eval_fraction": "float",
    "shard_rows": "int",
    "batch_rows": "int",
}


def _source(data: Any, index: int, file: str) -> SourceSpec:
    where = f"sources.{index}"
    if not isinstance(data, dict):
        raise UserError("must be a mapping", file=file, key=where, expected="{name, path, ...}")
    _check_keys(data, _SOURCE_KEYS, where, file)
    for required in ("name", "path"):
        if required not in data:
            raise UserError("missing", file=file, key=f"{where}.{required}", expected="a string")
    values = {k: _typed(v, _SOURCE_TYPES[k], f"{where}.{k}", file) for k, v in data.items()}
    spec = SourceSpec(**values)
    if spec.format not in FORMATS:
        raise UserError(
            f"unknown format '{spec.format}'; {_closest(spec.format, list(FORMATS))}",
            file=file,
            key=f"{where}.format",
            expected="one of " + ", ".join(FORMATS),
        )
    return spec


def recipe_from_dict(data: Any, file: str) -> Recipe:
    """Validate a parsed recipe mapping and build the dataclasses."""
    if not isinstance(data, dict):
        raise UserError("a recipe must be a YAML mapping", file=file)
    _check_keys(data, _TOP_KEYS, "", file)
    for required in ("sources", "output_dir"):
        if required not in data:
            raise UserError("missing required key", file=file, key=required)
    sources = data["sources"]
    if not isinstance(sources, list) or not sources:
        raise UserError("must be a non-empty list", file=file, key="sources")
    specs = [_source(s, i, file) for i, s in enumerate(sources)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError("source names must be unique", file=file, key="sources")
    filters = data.get("filters") or {}
    if not isinstance(filters, dict):
        raise UserError("must be a mapping", file=file, key="filters")
    _check_keys(filters, _FILTER_KEYS, "filters", file)
    fvalues = {k: _typed(v, _FILTER_TYPES[k], f"filters.{k}", file) for k, v in filters.items()}
    fspec = FilterSpec(**fvalues)
    if (fspec.max_tokens is None) != (fspec.tokenizer is None):
        raise UserError(
            "the token-length filter needs both keys",
            file=file,
            key="filters.max_tokens" if fspec.max_tokens is None else "filters.tokenizer",
            expected="filters.max_tokens and filters.tokenizer set together",
        )
    if not 0.0 < fspec.near_dedup_threshold <= 1.0:
        raise UserError(
            "out of range", file=file, key="filters.near_dedup_threshold", expected="0 < threshold <= 1"
        )
    top = {k: _typed(v, _TOP_TYPES[k], k, file) for k, v in data.items() if k in _TOP_TYPES}
    recipe = Recipe(sources=specs, filters=fspec, path=file, **top)
    if not 0.0 <= recipe.eval_fraction < 1.0:
        raise UserError("out of range", file=file, key="eval_fraction", expected="0 <= x < 1")
    if recipe.shard_rows < 1 or recipe.batch_rows < 1:
        raise UserError("must be positive", file=file, key="shard_rows/batch_rows")
    return recipe


def apply_override(data: dict, override: str, file: str) -> None:
    """Apply one dotted `key=value` (value parsed as YAML); list items are addressed by index."""
    if "=" not in override:
        raise UserError(f"override '{override}' has no '='", file=file, expected="key=value")
    dotted, _, text = override.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"cannot parse value: {exc}".splitlines()[0], file=file, key=dotted) from exc
    parts = dotted.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(
                    "no such list item", file=file, key=where, expected=f"an index below {len(node)}"
                )
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise UserError("is not a mapping", file=file, key=where)
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError("no such list item", file=file, key=dotted)
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML, apply overrides, validate."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read recipe: {exc.strerror}", file=file) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"invalid YAML: {exc}".replace("\n", " "), file=file) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError("a recipe must be a YAML mapping", file=file)
    for override in overrides:
        apply_override(data, override, file)
    return recipe_from_dict(data, file)
