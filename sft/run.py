"""One training run from a `RunConfig`: tokenize the data, load the model, train, save.

`prepare_data` needs only the tokenizer (it is what `--dry-run` runs); `train` does everything.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import LoraConfig
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sft.collate import DiffusionCollator, pack_examples
from sft.config import DiffusionSFTConfig, RunConfig
from sft.data import TokenizedData, load_chat_rows, tokenize_dataset
from sft.errors import UserError
from sft.export import model_card
from sft.families.base import FAMILY_KEY, Family, LoadedModel
from sft.families.loader import load_family_tokenizer, load_model
from sft.trainer import DiffusionSFTTrainer


@dataclass
class PreparedData:
    family: Family
    tokenizer: PreTrainedTokenizerBase
    eos_token_id: int
    train: TokenizedData
    eval: TokenizedData | None

    def batch_rows(self, config: RunConfig) -> int:
        """Rows of the training set as batched: examples, or packed rows with `batching: pack`."""
        if config.data.batching != "pack":
            return len(self.train.dataset)
        collator = DiffusionCollator.from_args(config.training, self.eos_token_id, config.data.max_length)
        return len(pack_examples(self.train.dataset, collator))

    def steps(self, config: RunConfig, world_size: int = 1) -> tuple[int, int]:
        """(optimizer steps per epoch, total optimizer steps), as transformers' Trainer counts."""
        return optimizer_steps(self.batch_rows(config), config.training, world_size)


def optimizer_steps(rows: int, args: DiffusionSFTConfig, world_size: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total) for `rows` batch rows, as transformers' Trainer counts."""
    batches = math.ceil(rows / (args.per_device_train_batch_size * world_size))
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    return per_epoch, total


def prepare_data(config: RunConfig) -> PreparedData:
    """Tokenize the splits. Under a launcher only the global rank 0 (the `RANK` it sets, counted
    across all nodes) tokenizes; every other rank waits for that cache (`sft.data.tokenize_dataset`)."""
    family, tokenizer, eos_id = load_family_tokenizer(config.model, config.training.chat_template_path)
    if not tokenizer.chat_template:
        raise UserError(
            "the tokenizer has no chat template to render the conversations with",
            file=config.model.tokenizer or config.model.name_or_path,
            key="model.tokenizer" if config.model.tokenizer else "model.name_or_path",
            expected="'chat_template' in tokenizer_config.json, chat_template.jinja, "
            "or training.chat_template_path",
        )
    build = int(os.environ.get("RANK", "0")) == 0

    def tokenized(paths: Any, key: str) -> TokenizedData:
        data = tokenize_dataset(load_chat_rows(paths), tokenizer, config.data, eos_id, build=build)
        if len(data.dataset) == 0:
            if build and data.cache is not None:  # an empty cache is never kept
                shutil.rmtree(data.cache, ignore_errors=True)
            raise UserError(
                f"no examples to train on in {paths if isinstance(paths, str) else ', '.join(paths)}: "
                + split_summary(data),
                file=config.source,
                key=key,
                expected="rows with a user turn and an assistant reply that fit data.max_length",
            )
        return data

    return PreparedData(
        family,
        tokenizer,
        eos_id,
        tokenized(config.data.train, "data.train"),
        tokenized(config.data.eval, "data.eval") if config.data.eval else None,
    )


def describe(config: RunConfig, data: PreparedData) -> str:
    """The `--dry-run` report: resolved recipe, dataset sizes and step counts."""
    import yaml

    per_epoch, total = data.steps(config)
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


def save_run(trainer: DiffusionSFTTrainer, config: RunConfig) -> None:
    """Save the final model (or adapter) and tokenizer, and `dlm_run.json`: the resolved recipe, the
    steps and the last losses (what the model card of an export reports)."""
    output = Path(config.training.output_dir)
    trainer.save_model(str(output))
    if not trainer.is_world_process_zero():
        return
    trainer.state.save_to_json(str(output / "trainer_state.json"))  # the curves `dlm-sft report` plots
    record = run_record(config, trainer.state)
    run = {
        "source": record.source,
        "recipe": record.recipe,
        "global_step": record.global_step,
        "final_train_loss": record.train_loss,
        "final_eval_loss": record.eval_loss,
    }
    (output / "dlm_run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    write_run_card(output, config, trainer.state, str(getattr(trainer.model.config, FAMILY_KEY, "")))


def run_record(config: RunConfig, state: TrainerState) -> model_card.RunRecord:
    """The recipe, steps and last losses of a run so far."""
    history = state.log_history
    last = {key: next((e[key] for e in reversed(history) if key in e), None) for key in ("loss", "eval_loss")}
    return model_card.RunRecord(
        recipe=config.sections(),
        source=config.source,
        global_step=state.global_step,
        train_loss=last["loss"],
        eval_loss=last["eval_loss"],
    )


def write_run_card(directory: Path, config: RunConfig, state: TrainerState, family: str) -> None:
    """dlm-sft's model card for a training output or checkpoint (replacing peft's and TRL's)."""
    adapter_config = directory / "adapter_config.json"
    facts = model_card.CardFacts(
        title=directory.name,
        family=family,
        base_model=config.model.name_or_path,
        run=run_record(config, state),
        adapter=json.loads(adapter_config.read_text()) if adapter_config.is_file() else None,
        location=str(directory),
    )
    model_card.write(directory, facts)


class ModelCardCallback(TrainerCallback):
    """After every checkpoint save, writes the model card into the checkpoint and the output directory
    (where TRL and peft put their placeholder cards)."""

    def __init__(self, config: RunConfig, family: str) -> None:
        self.config = config
        self.family = family

    def on_save(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        output = Path(args.output_dir)
        for directory in (output / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", output):
            if directory.is_dir():
                write_run_card(directory, self.config, state, self.family)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` directories whose trainer_state.json (the last file a save writes) is whole,
    oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if step.isdigit() and state.get("global_step") == int(step):
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint-")))


def resume_point(config: RunConfig) -> str | None:
    """The checkpoint to resume from, per `training.resume_from_checkpoint` (see its docs).

    An `output_dir` holding a finished run (`dlm_run.json`) is refused unless
    `training.overwrite_output_dir`, which starts fresh and removes the old run's checkpoints and
    record, so a later `auto` resume can never pick up the old run."""
    args = config.training
    value = args.resume_from_checkpoint
    output = Path(args.output_dir)
    explicit = value is True or value not in (None, False, "auto")
    if args.overwrite_output_dir:
        if args.process_index == 0:
            _remove_old_run(output)
        if not explicit:
            return None
    elif (output / "dlm_run.json").is_file() and not explicit:
        raise UserError(
            "holds a finished run (dlm_run.json)",
            file=str(output),
            key="training.output_dir",
            expected="a new output_dir, training.overwrite_output_dir=true to replace it, "
            "or training.resume_from_checkpoint=true to continue it",
        )
    if value in (None, False):
        return None
    if value in ("auto", True):
        complete = complete_checkpoints(output)
        if value is True and not complete:
            raise UserError(
                "no complete checkpoint-N to resume from",
                file=str(output),
                key="training.resume_from_checkpoint",
                expected="a run directory with checkpoints, or auto/null to start fresh",
            )
        return str(complete[-1]) if complete else None
    if Path(value) not in complete_checkpoints(Path(value).parent):
        raise UserError(
            "not a complete checkpoint directory",
            file=value,
            key="training.resume_from_checkpoint",
            expected="true, auto, null, or a checkpoint-N directory with its trainer_state.json",
        )
    return value


def _remove_old_run(output: Path) -> None:
    for checkpoint in output.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    for record in ("dlm_run.json", "trainer_state.json"):
        (output / record).unlink(missing_ok=True)


def train(config: RunConfig) -> DiffusionSFTTrainer:
    """Train, then save the model (or adapter), tokenizer and run record to `training.output_dir`."""
    resume = resume_point(config)
    if resume:
        step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
        print(f"resuming from {resume} at step {step}", flush=True)
    data = prepare_data(config)
    print("\n".join(data_summary(data)), flush=True)
    trainer = build_trainer(config, data)
    trainer.train(resume_from_checkpoint=resume)
    save_run(trainer, config)
    return trainer
