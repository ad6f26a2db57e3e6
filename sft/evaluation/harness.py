"""`dlm-sft eval CHECKPOINT --tasks ...`: lm-evaluation-harness tasks on one loaded checkpoint.

The checkpoint is loaded once and wrapped in the `dlm` model (`lm_eval_model.DiffusionLM`). Tasks
that share their settings run in one `lm_eval.simple_evaluate` call; with a preset
(`presets.py`), tasks whose settings differ run in separate calls on the same model and their
results are merged into one lm-eval results JSON (`results`, `n-shot`, `configs`, `versions`,
`higher_is_better`, `n-samples`, `config`). `config.dlm.runs` records each call's tasks and
settings, `config.dlm.elbo` the likelihood estimator's spread.

Explicit command-line settings override the preset's for every task. Writing and reading the
results files is `sft/evaluation/results.py`'s (core: `dlm-sft report` reads them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lm_eval.evaluator
from lm_eval.tasks import TaskManager

from sft.errors import UserError
from sft.evaluation.lm_eval_model import DiffusionLM
from sft.evaluation.presets import preset_tasks
from sft.families.base import LoadedModel

MERGED_SECTIONS = (
    "results",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
)


@contextmanager
def _without_git_probe() -> Iterator[None]:
    """lm-eval runs `git describe` in the working directory for a `git_hash` field that the merged
    results do not keep; outside a git repository git prints `fatal: not a git repository` on our
    stderr. The probe is left out for the duration."""
    probe = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = probe


@dataclass
class HarnessRun:
    """One `simple_evaluate` call: tasks that share few-shot count, chat template and settings."""

    tasks: list[str]
    num_fewshot: int | None
    apply_chat_template: bool
    settings: dict[str, Any] = field(default_factory=dict)  # `DiffusionLM.configure` keywords


def plan_runs(
    tasks: list[str] | None,
    preset: str | None,
    num_fewshot: int | None,
    apply_chat_template: bool,
    overrides: dict[str, Any],
) -> list[HarnessRun]:
    """The calls to make: one for plain `--tasks`; with a preset, one per distinct setting."""
    if preset is None:
        if not tasks:
            raise UserError(
                "no tasks", key="--tasks", expected="comma-separated lm-eval task names, or --preset"
            )
        return [HarnessRun(tasks, num_fewshot, apply_chat_template, dict(overrides))]
    runs: list[HarnessRun] = []
    for entry in preset_tasks(preset, tasks):
        settings = {**entry.sampler(), **overrides}
        shots = entry.num_fewshot if num_fewshot is None else num_fewshot
        chat = entry.apply_chat_template or apply_chat_template
        same = next(
            (
                r
                for r in runs
                if (r.settings, r.num_fewshot, r.apply_chat_template) == (settings, shots, chat)
            ),
            None,
        )
        if same:
            same.tasks.append(entry.task)
        else:
            runs.append(HarnessRun([entry.task], shots, chat, settings))
    return runs


def check_tasks(manager: TaskManager, runs: list[HarnessRun], include_path: str | None) -> None:
    unknown = [t for run in runs for t in run.tasks if not manager.match_tasks([t])]
    if unknown:
        where = f" or under {include_path}" if include_path else ""
        raise UserError(
            f"unknown lm-eval task(s) {', '.join(unknown)}",
            key="--tasks",
            expected=f"a task lm-eval knows (`lm-eval ls tasks`){where}",
        )


def run_harness(
    loaded: LoadedModel,
    runs: list[HarnessRun],
    *,
    limit: int | None = None,
    include_path: str | None = None,
    batch_size: int = 1,
    seed: int = 0,
    confirm_run_unsafe_code: bool = False,
) -> dict[str, Any]:
    """Run every `HarnessRun` on `loaded`; return the merged lm-eval results dict."""
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError("not a directory", key="--include-path", expected="a directory of lm-eval task YAMLs")
    manager = TaskManager(include_path=include_path)
    check_tasks(manager, runs, include_path)
    model = DiffusionLM.from_loaded(loaded, batch_size=batch_size, seed=seed)
    merged: dict[str, Any] = {}
    for run in runs:
        model.configure(**run.settings)
        with _without_git_probe():
            results = lm_eval.evaluator.simple_evaluate(
                model=model,
                tasks=run.tasks,
                num_fewshot=run.num_fewshot,
                limit=limit,
                task_manager=manager,
                apply_chat_template=run.apply_chat_template,
                log_samples=False,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                confirm_run_unsafe_code=confirm_run_unsafe_code,
            )
        for section in MERGED_SECTIONS:
            merged.setdefault(section, {}).update(results.get(section) or {})
        merged.setdefault("config", results["config"])
        merged["config"].setdefault("dlm", {}).setdefault("runs", []).append(
            {
                "tasks": run.tasks,
                "num_fewshot": run.num_fewshot,
                "apply_chat_template": run.apply_chat_template,
                **run.settings,
            }
        )
    info = model.get_model_info()["dlm"]
    info.pop("sampler")  # per run, in `runs`
    merged["config"]["dlm"] = {**info, "runs": merged["config"]["dlm"]["runs"]}
    return merged
