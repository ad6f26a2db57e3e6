"""Pick the family of a checkpoint and load it: tokenizer, model, mask token; and translate any
family's config.json into transformers' own (for export and planning).

`load_model(settings)` resolves hub ids to their cached snapshots (`sft.hub`), detects the family from
config.json (or takes `model.family`), loads the tokenizer (pad token set), builds the model through the
family and records `dlm_family` and `mask_token_id` in its config, so a saved run reloads with the
same behaviour. The model keeps the name it was asked for (a hub id stays a hub id, which is what
adapters and model cards record as the base), never the cache path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft import hub
from sft.config import ModelSettings
from sft.errors import UserError
from sft.families import FAMILIES
from sft.families.base import FAMILY_KEY, Family, LoadedModel, read_config, token_id


def detect_family(config: dict[str, Any], name_or_path: str) -> Family:
    recorded = config.get(FAMILY_KEY)
    if recorded in FAMILIES:
        return FAMILIES[recorded]
    for family in FAMILIES.values():
        if family.detect(config):
            return family
    raise UserError(
        f"unknown model_type {config.get('model_type')!r}",
        file=name_or_path,
        key="model.family",
        expected="a Dream, LLaDA, Qwen2 or Llama checkpoint, or model.family set explicitly",
    )


def resolve_family(settings: ModelSettings) -> tuple[Family, dict[str, Any]]:
    """The family of `settings.name_or_path` (detected or as set) and its config.json."""
    config = read_config(settings.name_or_path)
    if settings.family == "auto":
        return detect_family(config, settings.name_or_path), config
    if settings.family not in FAMILIES:
        raise UserError(
            f"unknown family {settings.family!r}",
            key="model.family",
            expected=f"auto or one of {', '.join(FAMILIES)}",
        )
    return FAMILIES[settings.family], config


def local_settings(settings: ModelSettings, *, weights: bool = True) -> ModelSettings:
    """`settings` with hub ids replaced by their local snapshot directories (fetched when missing;
    `weights=False`: config, tokenizer and remote code only)."""
    need_weights = weights and not settings.from_scratch
    return dataclasses.replace(
        settings,
        name_or_path=str(hub.model_dir(settings.name_or_path, weights=need_weights)),
        tokenizer=str(hub.model_dir(settings.tokenizer, weights=False)) if settings.tokenizer else None,
    )


def load_family_tokenizer(
    settings: ModelSettings, chat_template_path: str | None = None
) -> tuple[Family, PreTrainedTokenizerBase, int]:
    """The family, its tokenizer (pad token set; chat template replaced by the file at
    `chat_template_path` when given) and the EOS-tail token id, without the weights."""
    settings = local_settings(settings, weights=False)
    family, _ = resolve_family(settings)
    tokenizer = family.load_tokenizer(settings)
    if chat_template_path:
        tokenizer.chat_template = read_chat_template(chat_template_path)
    return family, tokenizer, tail_token_id(tokenizer, settings.tokenizer or settings.name_or_path)


def tail_token_id(tokenizer: PreTrainedTokenizerBase, where: str) -> int:
    """The EOS-tail token: the tokenizer's pad token, set to its EOS when it has none."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(
                "the tokenizer has neither a pad nor an EOS token",
                file=where,
                expected="an eos_token in tokenizer_config.json",
            )
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def read_chat_template(path: str) -> str:
    """The text of a `.jinja`/`.j2` chat template file (`training.chat_template_path`, as in TRL)."""
    file = Path(path).expanduser()
    if not (file.is_file() and file.suffix in (".jinja", ".j2")):
        raise UserError(
            "not a .jinja/.j2 chat template file",
            file=path,
            key="training.chat_template_path",
            expected="a Jinja template file (for another tokenizer and its template, set model.tokenizer)",
        )
    return file.read_text(encoding="utf-8")


def load_model(settings: ModelSettings, seed: int = 0, chat_template_path: str | None = None) -> LoadedModel:
    """Load (or, with `from_scratch`, initialise) a model and tokenizer as a diffusion LM."""
    local = local_settings(settings)
    family, config = resolve_family(local)
    _, tokenizer, eos_id = load_family_tokenizer(local, chat_template_path)
    torch.manual_seed(seed)
    model = family.load_model(local, config, tokenizer)
    mask_id = _mask_token_id(model, tokenizer, local)
    model.config.mask_token_id = mask_id
    setattr(model.config, FAMILY_KEY, family.name)
    model.config._name_or_path = settings.name_or_path  # the hub id, not its cache path
    model.name_or_path = settings.name_or_path
    return LoadedModel(model, tokenizer, family, mask_id, eos_id)


def _mask_token_id(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ModelSettings
) -> int:
    configured = getattr(model.config, "mask_token_id", None)
    if configured is not None:
        return int(configured)
    found = token_id(tokenizer, settings.mask_token)
    if found is None:
        raise UserError(
            f"the tokenizer has no mask token {settings.mask_token!r}",
            file=settings.name_or_path,
            key="model.mask_token",
            expected="a token of the vocabulary, or family 'ar' to add one",
        )
    return found


# ---------------------------------------------------------------------------------------- formats
def release_family(config: dict[str, Any]) -> Family | None:
    """The family whose own release layout this config.json is in (Dream's, LLaDA's), if any."""
    return next((f for f in FAMILIES.values() if f.is_release_layout and f.is_release_layout(config)), None)


def native_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """transformers' config (as a dict, `dlm_family` set) for a config.json in any family's layout."""
    family = release_family(config)
    if family is not None:
        return family.native_config(config, source)
    values = dict(config)
    values.setdefault(FAMILY_KEY, detect_family(config, source).name)
    return values


def mask_token_from_vocabulary(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The first mask token of any family that the tokenizer knows."""
    for family in FAMILIES.values():
        for token in family.mask_tokens:
            found = token_id(tokenizer, token)
            if found is not None:
                return found
    return None


def known_config(name_or_path: str) -> dict[str, Any] | None:
    """The built-in config of a hub model some family knows (for planning without a download)."""
    return next(
        (f.known_configs[name_or_path] for f in FAMILIES.values() if name_or_path in f.known_configs), None
    )
