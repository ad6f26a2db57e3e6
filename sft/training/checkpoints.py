"""Checkpoints of a run: which `checkpoint-N` directories are complete, and which one a run resumes
from (`training.resume_from_checkpoint`, `training.overwrite_output_dir`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sft.config import RunConfig
from sft.errors import UserError


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
