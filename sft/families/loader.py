"""Pick the family of a checkpoint and load it: tokenizer, model, mask token; and translate any
family's config.json into transformers' own (for export and planning).

`resolve_model(settings)` resolves hub ids to their cached snapshots (`sft.hub`), reads config.json and
detects the family (or takes `model.family`), once per run; `load_family_tokenizer` and `load_model`
take that (or settings, which they resolve) and load the tokenizer (pad token set) and build the model
through the family, recording `dlm_family` and `mask_token_id` in its config, so a saved run reloads
with the same behaviour. The model keeps the name it was asked for (a hub id stays a hub id, which is what
adapters and model cards record as the base), never the cache path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft import hub
from sft.config import ModelSettings
from sft.errors import UserError
from sft.families import FAMILIES, known_checkpoints
from sft.families.base import FAMILY_KEY, Family, LoadedModel, read_config, token_id


def find_family(config: dict[str, Any]) -> Family | None:
    """The family config.json records (`dlm_family`), else the first that recognises it, else None."""
    recorded = config.get(FAMILY_KEY)
    if recorded in FAMILIES:
        return FAMILIES[recorded]
    return next((family for family in FAMILIES.values() if family.detect(config)), None)


def detect_family(config: dict[str, Any], name_or_path: str) -> Family:
    family = find_family(config)
    if family is not None:
        return family
    raise UserError(
        f"unknown model_type {config.get('model_type')!r}",
        file=name_or_path,
        key="model.family",
        expected=f"a {known_checkpoints()} checkpoint, or model.family set explicitly",
    )


@dataclass(frozen=True)
class ResolvedModel:
    """A recipe's model resolved once per run: hub ids replaced by their snapshot directories, its
    config.json read and its family chosen. Loading the tokenizer and the model reads these."""

    requested: ModelSettings  # as the recipe names it (a hub id stays a hub id)
    local: ModelSettings  # local directories (config, tokenizer and remote code; weights on loading)
    config: dict[str, Any]  # config.json of the model directory
    family: Family


def resolve_model(settings: ModelSettings) -> ResolvedModel:
    """Resolve `settings` (see `ResolvedModel`) without fetching the weights."""
    local = local_settings(settings, weights=False)
    config = read_config(local.name_or_path)
    if settings.family == "auto":
        return ResolvedModel(settings, local, config, detect_family(config, settings.name_or_path))
    if settings.family not in FAMILIES:
        raise UserError(
            f"unknown family {settings.family!r}",
            key="model.family",
            expected=f"auto or one of {', '.join(FAMILIES)}",
        )
    return ResolvedModel(settings, local, config, FAMILIES[settings.family])


def local_settings(settings: ModelSettings, *, weights: bool = True) -> ModelSettings:
    """`settings` with hub ids replaced by their local snapshot directories (fetched when missing;
    `weights=False`: config, tokenizer and remote code only)."""
    need_weights = weights and not settings.from_scratch
    return dataclasses.replace(
        settings,
        name_or_path=str(hub.model_dir(settings.name_or_path, weights=need_weights)),
        tokenizer=str(hub.model_dir(settings.tokenizer, weights=False)) if settings.tokenizer else None,
    )


def _resolved(source: ModelSettings | ResolvedModel) -> ResolvedModel:
    return source if isinstance(source, ResolvedModel) else resolve_model(source)


def load_family_tokenizer(
    source: ModelSettings | ResolvedModel, chat_template_path: str | None = None
) -> tuple[Family, PreTrainedTokenizerBase, int]:
    """The family, its tokenizer (pad token set; chat template replaced by the file at
    `chat_template_path` when given) and the EOS-tail token id, without the weights."""
    resolved = _resolved(source)
    settings = resolved.local
    if resolved.family.runs_remote_code and not settings.trust_remote_code:
        raise UserError(
            "this checkpoint's family is unknown and loading it would run its own Python code",
            file=settings.name_or_path,
            key="model.trust_remote_code",
            expected=f"a {known_checkpoints()} checkpoint, or trust_remote_code: true if you trust it",
        )
    tokenizer = resolved.family.load_tokenizer(settings)
    if chat_template_path:
        tokenizer.chat_template = read_chat_template(chat_template_path)
    return resolved.family, tokenizer, tail_token_id(tokenizer, settings.tokenizer or settings.name_or_path)


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


def load_model(
    source: ModelSettings | ResolvedModel, seed: int = 0, chat_template_path: str | None = None
) -> LoadedModel:
    """Load (or, with `from_scratch`, initialise) a model and tokenizer as a diffusion LM."""
    resolved = _resolved(source)
    family, tokenizer, eos_id = load_family_tokenizer(resolved, chat_template_path)
    local = local_settings(resolved.requested)  # the same snapshot directory, now with the weights
    torch.manual_seed(seed)
    model = family.load_model(local, resolved.config, tokenizer)
    mask_id = _mask_token_id(model, tokenizer, local)
    model.config.mask_token_id = mask_id
    setattr(model.config, FAMILY_KEY, family.name)
    model.config._name_or_path = resolved.requested.name_or_path  # the hub id, not its cache path
    model.name_or_path = resolved.requested.name_or_path
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
