"""The tokenized splits of one run: the model resolved (path, config.json, family), its tokenizer, the
train and eval examples, and their accounting. Needs only the tokenizer (it is what `--dry-run` runs)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from sft.config import DataSettings, RunConfig
from sft.data.collate import DiffusionCollator, pack_examples
from sft.data.sources import load_chat_rows
from sft.data.tokenization import TokenizedData, tokenize_dataset
from sft.errors import UserError
from sft.families.base import Family
from sft.families.loader import ResolvedModel, load_family_tokenizer, resolve_model


@dataclass
class PreparedData:
    model: ResolvedModel  # the run's model, resolved once (what loading the model reuses)
    tokenizer: PreTrainedTokenizerBase
    eos_token_id: int
    train: TokenizedData
    eval: TokenizedData | None

    @property
    def family(self) -> Family:
        return self.model.family

    def batch_rows(self, config: RunConfig) -> int:
        """Rows of the training set as batched: examples, or packed rows with `batching: pack`."""
        if config.data.batching != "pack":
            return len(self.train.dataset)
        collator = DiffusionCollator.from_args(config.training, self.eos_token_id, config.data.max_length)
        return len(pack_examples(self.train.dataset, collator))


def prepare_data(config: RunConfig) -> PreparedData:
    """Tokenize the recipe's splits (`tokenize_split`)."""
    model = resolve_model(config.model)
    _, tokenizer, eos_id = load_family_tokenizer(model, config.training.chat_template_path)
    require_chat_template(
        tokenizer,
        config.model.tokenizer or config.model.name_or_path,
        "model.tokenizer" if config.model.tokenizer else "model.name_or_path",
    )

    def tokenized(paths: Any, key: str) -> TokenizedData:
        where = paths if isinstance(paths, str) else ", ".join(map(str, paths))
        return tokenize_split(
            load_chat_rows(paths), tokenizer, config.data, eos_id, where, config.source, key
        )

    return PreparedData(
        model,
        tokenizer,
        eos_id,
        tokenized(config.data.train, "data.train"),
        tokenized(config.data.eval, "data.eval") if config.data.eval else None,
    )


def require_chat_template(tokenizer: PreTrainedTokenizerBase, file: str, key: str) -> None:
    """A UserError unless the tokenizer has a chat template to render the conversations with."""
    if not tokenizer.chat_template:
        raise UserError(
            "the tokenizer has no chat template to render the conversations with",
            file=file,
            key=key,
            expected="'chat_template' in tokenizer_config.json, chat_template.jinja, "
            "or training.chat_template_path",
        )


def tokenize_split(
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    settings: DataSettings,
    eos_token_id: int,
    where: str,
    file: str | None = None,
    key: str | None = None,
) -> TokenizedData:
    """Tokenize one split of chat rows (cached); a split that keeps no example is a UserError naming
    `where` (its data) and the recipe `file` and `key`. Under a launcher only the global rank 0 (the
    `RANK` it sets, counted across all nodes) tokenizes; every other rank waits for that cache."""
    build = int(os.environ.get("RANK", "0")) == 0
    data = tokenize_dataset(rows, tokenizer, settings, eos_token_id, build=build)
    if len(data.dataset) == 0:
        if build and data.cache is not None:  # an empty cache is never kept
            shutil.rmtree(data.cache, ignore_errors=True)
        raise UserError(
            f"no examples to train on in {where}: " + split_summary(data),
            file=file,
            key=key,
            expected="rows with a user turn and an assistant reply that fit data.max_length",
        )
    return data


def split_summary(split: TokenizedData) -> str:
    """`kept of total (truncated t; dropped d: reason=n, ...)`: total = kept + dropped, where each
    row counts once (with `multi_turn: all`, once per assistant turn)."""
    dropped = split.dropped
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items()))
    total = sum(split.counts.values())
    truncated = split.counts.get("truncated", 0)
    return f"{len(split.dataset)} of {total} (truncated {truncated}; dropped {sum(dropped.values())}" + (
        f": {reasons})" if reasons else ")"
    )


def data_summary(data: PreparedData) -> list[str]:
    """One line per split: examples kept of those read, truncated, and dropped by reason."""
    return [
        f"{name} examples: {split_summary(split)}"
        for name, split in (("train", data.train), ("eval", data.eval))
        if split is not None
    ]
