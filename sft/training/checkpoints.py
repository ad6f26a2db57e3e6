"""A run's output directory: can it be written, which `checkpoint-N` directories are complete, which
one a run resumes from (`training.resume_from_checkpoint`), and how a run replaces an old one
(`training.overwrite_output_dir`) without losing it to a new run that fails or is killed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from sft.config import RunConfig
from sft.errors import UserError

ASIDE = ".overwritten-run"
"""Where `overwrite_output_dir` keeps the old run (inside `output_dir`) until the new one has saved."""
RUN_RECORDS = ("dlm_run.json", "trainer_state.json")


def check_writable(output_dir: str | Path) -> None:
    """A UserError unless files can be created in `output_dir`, or, when it does not exist yet, in its
    nearest existing parent (which is left as it was)."""
    path = Path(output_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{existing} is not a directory", key="training.output_dir", file=str(output_dir))
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        where = "" if existing == path else f" (it would be created in {existing})"
        raise UserError(
            f"cannot write here{where}: {err.strerror or err}",
            file=str(output_dir),
            key="training.output_dir",
            expected="a directory this user can write",
        ) from None


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
    `training.overwrite_output_dir`, which starts fresh (`ReplacedRun` sets the old run aside)."""
    args = config.training
    value = args.resume_from_checkpoint
    output = Path(args.output_dir)
    explicit = value is True or value not in (None, False, "auto")
    if args.overwrite_output_dir:
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


class ReplacedRun:
    """`training.overwrite_output_dir`: the old run's checkpoints and records are moved into
    `output_dir/.overwritten-run` when the new run starts (`set_aside`), removed once it has saved a
    checkpoint or its model (`discard`), and put back when it fails before that (`restore`). A killed
    new run leaves them there, whole; the next overwriting run keeps them and starts afresh."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output = Path(output_dir)
        self.aside = self.output / ASIDE

    def _entries(self, root: Path) -> list[Path]:
        return [*root.glob("checkpoint-*"), *(root / name for name in RUN_RECORDS if (root / name).exists())]

    def set_aside(self) -> None:
        if self.aside.is_dir():  # the run an overwrite before this one replaced, and never saved over
            for entry in self._entries(self.output):
                remove_path(entry)
            return
        partial = self.output / f"{ASIDE}.partial"  # published by one rename, once all is moved
        if partial.is_dir():  # a move cut short by a kill: undo it
            for entry in self._entries(partial):
                os.replace(entry, self.output / entry.name)
        entries = self._entries(self.output)
        if entries:
            partial.mkdir(exist_ok=True)
            for entry in entries:
                os.replace(entry, partial / entry.name)
            os.replace(partial, self.aside)
        elif partial.is_dir():
            partial.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self.aside, ignore_errors=True)

    def restore(self) -> None:
        if not self.aside.is_dir():
            return
        for entry in self._entries(self.output):  # what the failed run left: no complete checkpoint
            remove_path(entry)
        for entry in self._entries(self.aside):
            os.replace(entry, self.output / entry.name)
        self.aside.rmdir()


def remove_path(path: Path) -> None:
    """Remove a file or directory, as far as it can be removed."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
