"""One training run from a `RunConfig`: tokenize the data, load the model, train, save.

`prepare_data` needs only the tokenizer (it is what `--dry-run` runs); `train` does everything.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoraConfig

from sft.config import RunConfig
from sft.data.collate import DiffusionCollator, pack_examples
from sft.data.splits import PreparedData, data_summary, prepare_data
from sft.families.base import LoadedModel
from sft.families.loader import load_model
from sft.ranks import say
from sft.training.checkpoints import resume_point
from sft.training.records import ModelCardCallback, save_run
from sft.training.steps import run_steps
from sft.training.trainer import DiffusionSFTTrainer


def describe(config: RunConfig, data: PreparedData) -> str:
    """The `--dry-run` report: resolved recipe, dataset sizes and step counts."""
    import yaml

    per_epoch, total = run_steps(config, data)
    lines = [f"# resolved recipe ({config.source})", yaml.safe_dump(config.sections(), sort_keys=False)]
    lines.append(f"family: {data.family.name} (shift={data.family.shift})")
    lines += data_summary(data)
    lines.append(f"steps per epoch: {per_epoch}")
    lines.append(f"total steps: {total}")
    return "\n".join(lines)


def lora_config(config: RunConfig) -> LoraConfig | None:
    if config.lora is None:
        return None
    lora = config.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save,
        task_type="CAUSAL_LM",
    )


def build_model(config: RunConfig) -> LoadedModel:
    """Load the model; a from-scratch model is saved to `<output_dir>/base` first, so adapters and
    checkpoints can name their base model."""
    loaded = load_model(config.model, config.training.seed, config.training.chat_template_path)
    if config.model.from_scratch:
        base = Path(config.training.output_dir) / "base"
        loaded.model.save_pretrained(base)
        loaded.tokenizer.save_pretrained(base)
        loaded.model.config._name_or_path = str(base)
        loaded.model.name_or_path = str(base)  # what peft records as the adapter's base model
    return loaded


def build_trainer(
    config: RunConfig, data: PreparedData | None = None, loaded: LoadedModel | None = None
) -> DiffusionSFTTrainer:
    data = data or prepare_data(config)
    loaded = loaded or build_model(config)
    args = config.training
    args.mask_token_id = loaded.mask_token_id
    args.shift = loaded.family.shift
    train_rows, eval_rows = data.train.dataset, data.eval.dataset if data.eval else None
    collator = None
    if config.data.batching == "pack":
        collator = DiffusionCollator.from_args(args, data.eos_token_id, config.data.max_length, train_rows)
        train_rows = pack_examples(train_rows, collator)
    trainer = DiffusionSFTTrainer(
        loaded.model,
        args,
        eos_token_id=data.eos_token_id,
        max_length=config.data.max_length,
        data_collator=collator,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=loaded.tokenizer,
        peft_config=lora_config(config),
    )
    trainer.add_callback(ModelCardCallback(config, loaded.family.name))
    return trainer


def train(config: RunConfig) -> DiffusionSFTTrainer:
    """Train, then save the model (or adapter), tokenizer and run record to `training.output_dir`."""
    resume = resume_point(config)
    if resume:
        step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
        say(f"resuming from {resume} at step {step}")
    data = prepare_data(config)
    say("\n".join(data_summary(data)))
    trainer = build_trainer(config, data)
    trainer.train(resume_from_checkpoint=resume)
    save_run(trainer, config)
    return trainer
