"""The distributed engines: each a name with an accelerate config shipped in `recipes/accelerate/`.
`dlm-sft train --accelerate NAME` launches with it and `dlm-sft plan --engine NAME` sizes a run for it;
adding an engine is a config file there and its name here (and its memory rule in `sft.planning.memory`).
"""

from __future__ import annotations

import os
from pathlib import Path

from sft.errors import UserError

ENGINES = ("ddp", "fsdp", "zero2", "zero3")


def config_dir() -> Path:
    """Where the shipped accelerate configs are."""
    from sft.recipe import shipped_recipes

    return shipped_recipes() / "accelerate"


def resolve_config(name_or_path: str) -> Path:
    """A shipped config by name, or an existing accelerate config YAML by path."""
    if name_or_path in ENGINES:
        return config_dir() / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or os.sep in name_or_path:
        if not path.is_file():
            raise UserError(
                "accelerate config file not found",
                file=name_or_path,
                key="--accelerate",
                expected=f"one of {', '.join(ENGINES)} or an accelerate config YAML",
            )
        return path
    raise UserError(
        f"unknown engine {name_or_path!r}",
        key="--accelerate",
        expected=f"one of {', '.join(ENGINES)} or a path to an accelerate config YAML",
    )
