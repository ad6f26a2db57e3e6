"""A run's records: `dlm_run.json` and `trainer_state.json` beside the saved model, the model card in
the output directory and every checkpoint, and the record so far (`dlm_checkpoint.json`, what an
export of the checkpoint reads) in every checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sft.config import RunConfig
from sft.training import model_card


def write_records(output: Path, config: RunConfig, state: TrainerState, family: str) -> None:
    """Beside a saved model: `trainer_state.json` (the curves `dlm-sft report` plots), `dlm_run.json`
    (the resolved recipe, the steps and the last losses: what the model card of an export reports)
    and the model card."""
    state.save_to_json(str(output / "trainer_state.json"))
    write_record(output / model_card.RUN_FILE, run_record(config, state))
    write_run_card(output, config, state, family)


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


def write_record(path: Path, record: model_card.RunRecord) -> None:
    """A run record as `model_card.read_run_record` reads it back."""
    run = {
        "source": record.source,
        "recipe": record.recipe,
        "global_step": record.global_step,
        "final_train_loss": record.train_loss,
        "final_eval_loss": record.eval_loss,
    }
    path.write_text(json.dumps(run, indent=2, default=str) + "\n")


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
    (where TRL and peft put their placeholder cards), and the run record so far into the checkpoint."""

    def __init__(self, config: RunConfig, family: str) -> None:
        self.config = config
        self.family = family

    def on_save(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        output = Path(args.output_dir)
        checkpoint = output / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir():
            write_record(checkpoint / model_card.CHECKPOINT_FILE, run_record(self.config, state))
        for directory in (checkpoint, output):
            if directory.is_dir():
                write_run_card(directory, self.config, state, self.family)
