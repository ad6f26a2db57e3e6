"""What an export reads: the model its weights come from, the adapter merged into them, the original
base model (its layout and remote code) and the record of the run that made it.

`export` takes a training output or `checkpoint-N` (a full model directory: config.json with
`dlm_family`), a LoRA adapter directory (adapter_config.json names the base) or a directory holding
several adapters (pick one with `adapter`); a source or base named by a hub id is read from its cached
snapshot (`sft.hub`). A full fine-tune's base is the one its run record names (`dlm_run.json` of a
finished run, `dlm_checkpoint.json` of a checkpoint), so a checkpoint exports as its run does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft import hub
from sft.errors import UserError
from sft.export.adapters import choose_adapter, read_adapter_config
from sft.families import FAMILIES
from sft.families.base import FAMILY_KEY, read_config
from sft.families.loader import release_family
from sft.training import model_card

Layout = str  # "native" or the name of a family with a release layout
LAYOUTS = ("native", *(name for name, f in FAMILIES.items() if f.is_release_layout is not None))


def layout_of(config: dict[str, Any]) -> Layout:
    """The weight/config layout of a config.json: a family's release layout or transformers' own."""
    family = release_family(config)
    return family.name if family is not None else "native"


@dataclass
class Source:
    """Where an export's weights, adapter, tokenizer and run record come from."""

    model_dir: Path  # the weights merged into (a model directory; an adapter's base)
    adapter_dir: Path | None
    config: dict[str, Any]  # model_dir's config.json
    base_dir: Path | None  # the original base model directory, when known (its layout, remote code)
    run: model_card.RunRecord  # what the run recorded (recipe, steps, losses)

    @property
    def layout(self) -> Layout:
        return layout_of(self.config)

    @property
    def run_dirs(self) -> list[Path]:
        return [d for d in (self.adapter_dir, self.model_dir) if d is not None]

    def default_format(self) -> Layout:
        """The base's own layout; without a known base, that of the family (dream, llada) or native."""
        if self.base_dir is not None:
            return layout_of(read_config(str(self.base_dir)))
        if self.layout != "native":
            return self.layout
        family = self.config.get(FAMILY_KEY)
        return family if family in LAYOUTS else "native"

    def base_name(self) -> str:
        """The base model as recorded (a hub id stays a hub id; a card never shows a local path)."""
        if self.adapter_dir is not None:
            return str(read_adapter_config(self.adapter_dir).get("base_model_name_or_path") or self.model_dir)
        return str(
            _recorded_base(self.run) or self.base_dir or self.config.get("_name_or_path") or self.model_dir
        )


def resolve_source(path: str | Path, adapter: str | None = None) -> Source:
    """Find the model, adapter, base and run record behind `path` (see the module docstring)."""
    root = hub.model_dir(path)
    if not root.is_dir():
        raise UserError(
            "not a directory", file=str(path), expected="a training output, model or adapter directory"
        )
    adapter_dir = choose_adapter(root, adapter)
    if adapter_dir is None:
        config = read_config(str(root))
        run = model_card.read_run_record(root)
        base_dir = root if layout_of(config) != "native" else _base_dir(_recorded_base(run))
        return Source(root, None, config, base_dir, run)
    if (root / "config.json").is_file() and adapter is not None:
        model_dir = root  # BASE --adapter NAME: merge into the base given
    else:
        base = read_adapter_config(adapter_dir).get("base_model_name_or_path")
        if not base or not hub.model_dir(base).is_dir():
            raise UserError(
                f"the adapter's base model {base!r} is neither a local directory nor a hub id",
                file=str(adapter_dir / "adapter_config.json"),
                key="base_model_name_or_path",
                expected="export BASE_DIR --adapter ADAPTER to name the base",
            )
        model_dir = hub.model_dir(base)
    run = model_card.read_run_record(adapter_dir, model_dir)
    return Source(model_dir, adapter_dir, read_config(str(model_dir)), model_dir, run)


def _recorded_base(run: model_card.RunRecord) -> str | None:
    """The base model a run started from, as its recipe named it (a hub id or a path)."""
    return ((run.recipe or {}).get("model") or {}).get("name_or_path")


def _base_dir(base: str | None) -> Path | None:
    """The directory of a recorded base: config, tokenizer and remote code (a hub id's snapshot)."""
    if not base:
        return None
    directory = hub.model_dir(base, weights=False)
    return directory if (directory / "config.json").is_file() else None
