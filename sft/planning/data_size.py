"""Data size for planning: examples, tokens and packed rows of one epoch, counted from the tokenized
data when the data and tokenizer are on disk (`sft.data.splits.prepare_data`, cached), else from the data
recipe's documented counts (for `recipes/data/*.yaml` outputs; the mean tokens per example is then an
*assumption* and labelled so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sft import hub
from sft.config import RunConfig
from sft.data.sources import load_chat_rows
from sft.data.splits import prepare_data
from sft.errors import UserError
from sft.recipe import shipped_recipes

DATA_RECIPES = shipped_recipes() / "data"


@dataclass
class DataSize:
    """How many training examples and tokens one epoch holds, and how that was found."""

    examples: int
    mean_tokens: float  # prompt + response + EOS per example, before any EOS tail
    source: str
    assumed: list[str] = field(default_factory=list)  # what is an assumption, not a count
    rows: int | None = None  # packed rows (batching: pack) or None = one example per row
    longest: int | None = None


@dataclass(frozen=True)
class DocumentedData:
    """A data recipe's documented output, for planning before it is prepared."""

    input_rows: int
    kept_rows: int
    assumed_mean_tokens: int


DOCUMENTED_DATA = {
    # recipes/data/tulu3_smoltalk.yaml: 939,343 + 1,043,917 inputs, ~1.8M kept (Dream's count).
    # The mean length is an assumption: Tulu 3 + SmolTalk conversations under 2048 tokens.
    "tulu3_smoltalk": DocumentedData(1_983_260, 1_800_000, 650),
}


def paths_of(value: str | dict | list | None) -> list:
    return [value] if isinstance(value, (str, dict)) else list(value or [])


def data_size(
    config: RunConfig, examples: int | None = None, mean_tokens: float | None = None
) -> DataSize | None:
    """Count the training data: tokenized when it and the tokenizer are on disk, else documented;
    None when neither is possible (the memory estimate does not need it)."""
    train = paths_of(config.data.train)
    on_disk = bool(train) and all(isinstance(p, str) and Path(p).exists() for p in train)
    if examples is not None:
        mean = mean_tokens if mean_tokens is not None else config.data.max_length / 2
        assumed = [] if mean_tokens is not None else [f"mean tokens per example {mean:.0f} (max_length / 2)"]
        return DataSize(examples, mean, "--examples", assumed)
    if on_disk and _tokenizer_on_disk(config):
        return _tokenized_size(config)
    if on_disk:  # the tokenizer is a hub id not on disk: count the rows, assume their length
        mean = mean_tokens if mean_tokens is not None else config.data.max_length / 2
        assumed = [] if mean_tokens is not None else [f"mean tokens per example {mean:.0f} (max_length / 2)"]
        return DataSize(len(load_chat_rows(train)), mean, "rows on disk (tokenizer not on disk)", assumed)
    documented = _documented_size(train, config.data.max_length)
    if documented is not None:
        if mean_tokens is not None:
            documented.mean_tokens, documented.assumed = mean_tokens, documented.assumed[:-1]
        return documented
    return None


def _tokenizer_on_disk(config: RunConfig) -> bool:
    """A local tokenizer directory, or a hub id whose tokenizer is cached (or fetchable)."""
    try:
        return hub.model_dir(config.model.tokenizer or config.model.name_or_path, weights=False).is_dir()
    except UserError:
        return False


def _tokenized_size(config: RunConfig) -> DataSize:
    data = prepare_data(config)
    lengths = [len(ids) for ids in data.train.dataset["input_ids"]]
    rows = data.batch_rows(config) if config.data.batching == "pack" else None
    mean = sum(lengths) / max(len(lengths), 1)
    return DataSize(len(lengths), mean, "tokenized", rows=rows, longest=max(lengths, default=0))


def _documented_size(train: list[str], max_length: int) -> DataSize | None:
    for recipe in sorted(DATA_RECIPES.glob("*.yaml")):
        documented = DOCUMENTED_DATA.get(recipe.stem)
        if documented is None:
            continue
        spec = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        output = Path(str(spec.get("output_dir", ""))).expanduser()
        if not train or any(Path(p).expanduser().resolve() != (output / "train").resolve() for p in train):
            continue
        stats = output / "stats.json"
        if stats.is_file():
            counted = yaml.safe_load(stats.read_text())
            kept = int(counted["train_rows"])
            source = f"{stats} (prepared; tokenizer not on disk)"
        else:
            kept = round(documented.kept_rows * (1 - float(spec.get("eval_fraction", 0.0))))
            source = (
                f"documented by {recipe.relative_to(DATA_RECIPES.parent)}: {documented.input_rows:,} "
                f"input, ~{documented.kept_rows:,} kept, minus the eval share"
            )
        mean = min(documented.assumed_mean_tokens, max_length)
        return DataSize(kept, mean, source, [f"mean tokens per example {mean} (assumed)"])
    return None
