"""The data recipe: YAML → validated dataclasses, with dotted `key=value` overrides.

Validation is the training recipe's (`sft.recipe`): every key is checked against the dataclass
fields below and every value against its type hint; a mistake is a `UserError` that names the
recipe file, the dotted key and, for unknown keys, the closest valid key when there is one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sft.errors import UserError
from sft.recipe import locate
from sft.validation import apply_override, build_dataclass, read_mapping

Format = Literal["auto", "tulu3", "smoltalk", "messages", "sharegpt", "prompt_completion"]
FORMATS = get_args(Format)


@dataclass
class SourceSpec:
    """One input: a hub id, a local directory in the hub's layout, or parquet/jsonl/json files.
    `config`, `split` and `revision` (a hub id's branch, tag or commit) as `datasets.load_dataset`
    takes them."""

    name: str
    path: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    format: Format = "auto"


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
    path: str = field(default="", init=False)  # the recipe file, set when loaded

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path")
        return data


def _source(data: Any, index: int, file: str) -> SourceSpec:
    where = f"sources.{index}"
    if not isinstance(data, dict):
        raise UserError("must be a mapping", file=file, key=where, expected="{name, path, ...}")
    for required in ("name", "path"):
        if not data.get(required):
            raise UserError("missing", file=file, key=f"{where}.{required}", expected="a non-empty string")
    return build_dataclass(SourceSpec, data, where, file)


def recipe_from_dict(data: Any, file: str) -> Recipe:
    """Validate a parsed recipe mapping and build the dataclasses."""
    if not isinstance(data, dict):
        raise UserError("a recipe must be a YAML mapping", file=file)
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
    fspec = build_dataclass(FilterSpec, filters, "filters", file)
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
    top = {k: v for k, v in data.items() if k not in ("sources", "filters")}
    recipe = build_dataclass(Recipe, {**top, "sources": specs, "filters": fspec}, "", file)
    recipe.path = file
    if not 0.0 <= recipe.eval_fraction < 1.0:
        raise UserError("out of range", file=file, key="eval_fraction", expected="0 <= x < 1")
    if recipe.shard_rows < 1 or recipe.batch_rows < 1:
        raise UserError("must be positive", file=file, key="shard_rows/batch_rows")
    return recipe


def load_data_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a data recipe YAML (a `recipes/...` path falls back to the shipped copy), apply overrides,
    validate."""
    file = locate(path)
    data = read_mapping(file, "a data recipe: sources, filters, output_dir, ...")
    for override in overrides:
        apply_override(data, override, file)
    return recipe_from_dict(data, file)
