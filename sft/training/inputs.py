"""What `DiffusionSFTTrainer` is given, made ready to train, as `dlm-sft train` makes it: the model
(a hub id, a path or a `PreTrainedModel`) as a diffusion LM of its family with its mask token, and chat
datasets (`messages` or `prompt`/`completion` rows) tokenized by the same code into the same cache."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from peft import LoraConfig, PeftConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from sft.config import FAMILY_FIELDS, DataSettings, DiffusionSFTConfig, LoraSettings, ModelSettings, RunConfig
from sft.data.sources import conversation_columns
from sft.data.splits import require_chat_template, tokenize_split
from sft.errors import UserError
from sft.families import known_checkpoints
from sft.families.base import FAMILY_KEY, LoadedModel, token_id
from sft.families.loader import (
    ResolvedModel,
    detect_family,
    load_family_tokenizer,
    load_model,
    mask_token_from_vocabulary,
    read_chat_template,
    tail_token_id,
)
from sft.trl_keys import REFUSED_TRAINING_KEYS, refusal

PRECISION_FIELDS = ("bf16", "fp16", "use_cpu")
"""Fields whose defaults depend on the machine (TRL's `bf16` needs a GPU): kept as given."""
TOKENIZED_COLUMNS = ("input_ids", "members")
"""Columns of examples already tokenized (what `dlm-sft train` passes) or of packed rows
(`sft.data.collate.pack_examples`, for the collator that packed them); such a dataset is used as is."""


def diffusion_model(
    model: str | ResolvedModel | PreTrainedModel,
    settings: ModelSettings,
    tokenizer: PreTrainedTokenizerBase | None,
    seed: int,
    chat_template_path: str | None,
    output_dir: str,
) -> LoadedModel:
    """Load `model` as `settings` say (a hub id or path), or make a `PreTrainedModel` a diffusion LM
    of its family; `tokenizer` (TRL's `processing_class`) replaces the model's own. A from-scratch
    model is saved to `<output_dir>/base` first, so adapters and checkpoints can name their base."""
    if not isinstance(model, PreTrainedModel):
        loaded = load_model(model if isinstance(model, ResolvedModel) else settings, seed, chat_template_path)
        if settings.from_scratch:
            base = Path(output_dir) / "base"
            loaded.model.save_pretrained(base)
            loaded.tokenizer.save_pretrained(base)
            loaded.model.config._name_or_path = str(base)
            loaded.model.name_or_path = str(base)  # what peft records as the adapter's base model
        if tokenizer is None:
            return loaded
        template(tokenizer, chat_template_path)
        eos = tail_token_id(tokenizer, settings.name_or_path)
        return LoadedModel(loaded.model, tokenizer, loaded.family, loaded.mask_token_id, eos)
    return _as_diffusion_model(model, tokenizer, settings, chat_template_path)


def _as_diffusion_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    settings: ModelSettings,
    chat_template_path: str | None,
) -> LoadedModel:
    """A model built by the caller: its family from its config, bidirectional attention, and a mask
    token (added to the tokenizer, embeddings resized, where an AR model's vocabulary lacks one)."""
    name = str(model.name_or_path or "")
    family = detect_family(model.config.to_dict(), name or type(model).__name__)
    if tokenizer is None:
        if not name:
            raise UserError(
                "a model built in memory needs its tokenizer", key="processing_class", expected="a tokenizer"
            )
        _, tokenizer, _ = load_family_tokenizer(ModelSettings(name_or_path=name))
    template(tokenizer, chat_template_path)
    eos = tail_token_id(tokenizer, name)
    model.config.is_causal = False
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        mask_id = token_id(tokenizer, settings.mask_token) or mask_token_from_vocabulary(tokenizer)
    if mask_id is None and family.add_mask_token is not None:
        family.add_mask_token(model, tokenizer, settings.mask_token)
        mask_id = token_id(tokenizer, settings.mask_token)
    if mask_id is None:
        raise UserError(
            f"no mask token: the config has no mask_token_id and the tokenizer no {settings.mask_token!r}",
            file=name,
            key="model",
            expected=f"a {known_checkpoints()} model",
        )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.mask_token_id = int(mask_id)
    setattr(model.config, FAMILY_KEY, family.name)
    return LoadedModel(model, tokenizer, family, int(mask_id), eos)


def template(tokenizer: PreTrainedTokenizerBase, chat_template_path: str | None) -> None:
    """Replace the tokenizer's chat template by the file at `chat_template_path`, when given."""
    if chat_template_path:
        tokenizer.chat_template = read_chat_template(chat_template_path)


def is_tokenized(rows: Any) -> bool:
    """Is `rows` a dataset of examples already tokenized or packed rows (`TOKENIZED_COLUMNS`)?"""
    return isinstance(rows, datasets.Dataset) and bool(set(TOKENIZED_COLUMNS) & set(rows.column_names))


def data_tokenizer(
    model: str | ResolvedModel | PreTrainedModel,
    processing_class: PreTrainedTokenizerBase | None,
    loaded: LoadedModel,
    settings: ModelSettings,
    chat_template_path: str | None,
) -> tuple[PreTrainedTokenizerBase, int]:
    """The tokenizer chat rows are tokenized with, and the EOS-tail token: for a hub id or path without
    `processing_class`, the family's tokenizer as `dlm-sft train` loads it (one cache for both)."""
    if not isinstance(model, PreTrainedModel) and processing_class is None:
        source = model if isinstance(model, ResolvedModel) else settings
        _, tokenizer, eos = load_family_tokenizer(source, chat_template_path)
        return tokenizer, eos
    return loaded.tokenizer, loaded.eos_token_id


def tokenized_examples(
    rows: Any,
    tokenizer: PreTrainedTokenizerBase,
    eos_token_id: int,
    settings: DataSettings,
    key: str,
    file: str | None = None,
) -> datasets.Dataset:
    """Chat rows tokenized as `dlm-sft train` tokenizes them (same code and cache), or a dataset of
    examples already tokenized, as it is."""
    if is_tokenized(rows):
        if "input_ids" not in rows.column_names or "example_id" in rows.column_names:
            return rows
        return rows.add_column("example_id", np.arange(len(rows)))
    if not isinstance(rows, datasets.Dataset):
        raise UserError(f"got {type(rows).__name__}", key=key, expected="a datasets.Dataset of chat rows")
    conversation_columns(rows, key=key)
    require_chat_template(tokenizer, str(tokenizer.name_or_path), "processing_class")
    split = tokenize_split(rows, tokenizer, settings, eos_token_id, key, file, key)
    return split.dataset


def diffusion_args(args: TrainingArguments | None, model_name: str) -> DiffusionSFTConfig:
    """The trainer's arguments: the defaults (output to `<model>-diffusion-sft`) when none are
    given; a TRL `SFTConfig` (or `TrainingArguments`) as the `DiffusionSFTConfig` it amounts to:
    the fields set to other than their class's defaults carry over (TRL's `max_length` is the
    data's), with the output directory and precision; one that diffusion SFT does not honour is a
    `UserError` naming what does its job (`sft.trl_keys`)."""
    if args is None:
        return DiffusionSFTConfig(output_dir=f"{Path(model_name).name}-diffusion-sft")
    if isinstance(args, DiffusionSFTConfig):
        return args
    kept = {name: getattr(args, name) for name in ("output_dir", *PRECISION_FIELDS)}
    defaults = type(args)(**kept)
    changed = {
        f.name: getattr(args, f.name)
        for f in fields(args)
        if f.init and getattr(args, f.name) != getattr(defaults, f.name)
    }
    for key in changed:
        if key in REFUSED_TRAINING_KEYS and key != "max_length":
            raise UserError(refusal(key), key=f"args.{key}")
    return DiffusionSFTConfig(**kept, **changed)


def api_recipe(name: str, args: DiffusionSFTConfig, peft_config: PeftConfig | None) -> RunConfig:
    """The recipe a Python caller's arguments amount to (what the run's records and model card show):
    the model by name, the data settings' defaults with `args.max_length`, the training settings that
    differ from the defaults, and a LoRA config's settings."""
    data = DataSettings() if args.max_length is None else DataSettings(max_length=args.max_length)
    defaults = DiffusionSFTConfig(output_dir=args.output_dir).to_dict()
    values = args.to_dict()
    changed = tuple(k for k, v in values.items() if v != defaults.get(k) and k not in FAMILY_FIELDS)
    lora = None
    if isinstance(peft_config, LoraConfig):
        targets = peft_config.target_modules
        lora = LoraSettings(
            r=peft_config.r,
            alpha=peft_config.lora_alpha,
            dropout=peft_config.lora_dropout,
            target_modules=targets if isinstance(targets, str) or targets is None else sorted(targets),
            modules_to_save=peft_config.modules_to_save,
        )
    return RunConfig(ModelSettings(name_or_path=name), data, args, lora, training_keys=changed)


def model_name(model: str | PreTrainedModel | ResolvedModel) -> str:
    if isinstance(model, str):
        return model
    if isinstance(model, ResolvedModel):  # as `dlm-sft train` resolved it (read once per run)
        return model.requested.name_or_path
    return str(model.name_or_path or type(model).__name__)


def checkpoint_through_fsdp(args: DiffusionSFTConfig) -> None:
    """Under FSDP, `activation_checkpointing` is handed to FSDP's own checkpointing (accelerate's
    `fsdp_activation_checkpointing`, read from the environment that `accelerate launch` sets, before
    the Trainer builds its Accelerator): transformers' checkpointing on top of FSDP re-gathers each
    layer's weights once more in the backward. The two are never on together (the Trainer refuses that)."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or args.fsdp_plugin_args
    if not (fsdp and args.activation_checkpointing):
        return
    os.environ["FSDP_ACTIVATION_CHECKPOINTING"] = "true"
    if args.fsdp_plugin_args is not None:
        args.fsdp_plugin_args["activation_checkpointing"] = True
    args.activation_checkpointing = args.gradient_checkpointing = False
