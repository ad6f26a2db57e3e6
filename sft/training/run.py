"""One training run from a `RunConfig`, as `dlm-sft train` runs it: check what a run would refuse
(`sft.training.preflight`), tokenize the data, build the `DiffusionSFTTrainer` through the same
constructor a Python caller uses, train, save.

`prepare_data` needs only the tokenizer (it is what `--dry-run` runs); `train` does everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import LoraConfig
from transformers import TrainerCallback

from sft.config import RunConfig
from sft.data.splits import PreparedData, data_summary, prepare_data
from sft.families.base import LoadedModel
from sft.families.loader import ResolvedModel
from sft.ranks import say
from sft.training.checkpoints import ReplacedRun, remove_path
from sft.training.inputs import diffusion_model
from sft.training.preflight import check_run
from sft.training.steps import run_steps
from sft.training.stopping import interrupted_now
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


def build_model(config: RunConfig, model: ResolvedModel | None = None) -> LoadedModel:
    """The recipe's model (`model`: as the data preparation resolved it), loaded as the trainer loads
    it (a from-scratch model saved to `base/`)."""
    args = config.training
    source = model or config.model.name_or_path
    return diffusion_model(source, config.model, None, args.seed, args.chat_template_path, args.output_dir)


def build_trainer(
    config: RunConfig, data: PreparedData | None = None, loaded: LoadedModel | None = None
) -> DiffusionSFTTrainer:
    """The trainer of a recipe: `DiffusionSFTTrainer(model, args, datasets, peft_config, recipe=...)`."""
    data = data or prepare_data(config)
    return DiffusionSFTTrainer(
        loaded.model if loaded else data.model,
        config.training,
        train_dataset=data.train.dataset,
        eval_dataset=data.eval.dataset if data.eval else None,
        processing_class=loaded.tokenizer if loaded else None,
        peft_config=lora_config(config),
        recipe=config,
    )


def train(config: RunConfig) -> DiffusionSFTTrainer:
    """Train, then save the model (or adapter), tokenizer and run record to `training.output_dir`.

    A run that fails before its first save leaves the old run of `overwrite_output_dir` as it was and,
    failing before its first step, no new files in `output_dir` (the tokenized data cache aside)."""
    resume = check_run(config)
    if resume:
        step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
        say(f"resuming from {resume} at step {step}")
    output = Path(config.training.output_dir)
    existing = set(output.iterdir()) if output.is_dir() else None
    main = config.training.process_index == 0
    replaced = ReplacedRun(output) if config.training.overwrite_output_dir and main else None
    first_save = _FirstSave(replaced)
    trainer = None
    try:
        data = prepare_data(config)
        say("\n".join(data_summary(data)))
        if replaced:
            replaced.set_aside()
        trainer = build_trainer(config, data)
        trainer.add_callback(first_save)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        first_save.saved_run()
    except BaseException as err:
        if main and not first_save.saved:
            if replaced:
                replaced.restore()
            if trainer is None or trainer.state.global_step == 0:
                _remove_new_files(output, existing, _inputs(config))
        if isinstance(err, KeyboardInterrupt):
            raise interrupted_now(str(output)) from None
        raise
    return trainer


class _FirstSave(TrainerCallback):
    """Notes the run's first save (a checkpoint or the model), when the old run it replaces goes."""

    def __init__(self, replaced: ReplacedRun | None) -> None:
        self.replaced = replaced
        self.saved = False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.saved_run()

    def saved_run(self) -> None:
        if not self.saved and self.replaced:
            self.replaced.discard()
        self.saved = True


def _inputs(config: RunConfig) -> list[Path]:
    """The paths a run reads, which a failed run never removes (its data, cache and model may live
    inside `output_dir`)."""
    data = [config.data.train, config.data.eval]
    paths = [p for item in data for p in ([item] if isinstance(item, str | dict) else item or [])]
    names = [p.get("name", "") if isinstance(p, dict) else p for p in paths]
    names += [config.data.cache_dir, config.model.name_or_path, config.model.tokenizer or ""]
    return [Path(n).expanduser().absolute() for n in names if n]


def _remove_new_files(output: Path, existing: set[Path] | None, keep: list[Path]) -> None:
    """Remove what appeared in `output` since `existing` was listed, except what holds a path of `keep`;
    `output` itself when it is new and empty then."""
    if not output.is_dir():
        return
    for entry in set(output.iterdir()) - (existing or set()):
        if not any(k == entry.absolute() or entry.absolute() in k.parents for k in keep):
            remove_path(entry)
    if existing is None and not any(output.iterdir()):
        output.rmdir()
