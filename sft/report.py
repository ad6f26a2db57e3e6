"""`dlm-sft report RUN_DIR`: a finished (or running) run's curves and summary, without wandb.

Reads the Trainer's `log_history` from `trainer_state.json` (the newest complete `checkpoint-N`, or
the run directory itself) and `dlm_run.json` when the run finished; plots loss, eval loss and
learning rate against the optimizer step into `RUN_DIR/report.png` (matplotlib, Agg) and returns a
short summary: steps, tokens seen, best eval loss, throughput. When the run has benchmark results
(`dlm-sft eval RUN_DIR --tasks ...` writes them to `RUN_DIR/eval/`, see `sft.evaluation.results`),
the summary lists every file's metrics and the PNG gets a third panel with the newest file's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.errors import UserError
from sft.evaluation.results import metric_lines, metrics, results_files
from sft.training.checkpoints import complete_checkpoints


@dataclass
class RunHistory:
    """What a run logged: the Trainer's log entries and, when it finished, its run record."""

    log_history: list[dict[str, Any]]
    global_step: int
    source: Path  # the trainer_state.json read
    run: dict[str, Any] | None  # dlm_run.json
    evals: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # lm-eval results, oldest first

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one logged quantity."""
        points = [(int(e.get("step", 0)), float(e[key])) for e in self.log_history if key in e]
        return [s for s, _ in points], [v for _, v in points]

    def last(self, key: str) -> Any:
        return next((e[key] for e in reversed(self.log_history) if key in e), None)


def read_history(run_dir: str | Path) -> RunHistory:
    """The newest trainer_state.json of a run directory (or of a checkpoint directory given directly)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError("run directory not found", file=str(root), expected="a training output_dir")
    candidates = [root / "trainer_state.json"] + [
        c / "trainer_state.json" for c in reversed(complete_checkpoints(root))
    ]
    states = [(path, json.loads(path.read_text())) for path in candidates if path.is_file()]
    if not states:
        raise UserError(
            "no trainer_state.json in the run directory or its checkpoint-N directories",
            file=str(root),
            expected="a run that saved a checkpoint (training.save_strategy) or finished",
        )
    path, state = max(states, key=lambda item: item[1].get("global_step", 0))
    run_file = root / "dlm_run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else None
    evals = [(file, json.loads(file.read_text())) for file in results_files(root)]
    return RunHistory(state.get("log_history", []), int(state.get("global_step", 0)), path, run, evals)


def summary(history: RunHistory) -> list[str]:
    """Steps, tokens seen, losses and throughput, one fact per line."""
    lines = [f"steps: {history.global_step} (from {history.source})"]
    tokens = history.last("num_input_tokens_seen")
    if tokens is not None:
        lines.append(f"tokens seen: {int(tokens):,} (input tokens)")
    _, masked = history.series("masked_tokens")
    if masked:
        lines.append(f"masked tokens: ~{sum(masked):,.0f} at the logged steps ({len(masked)} log entries)")
    steps, losses = history.series("loss")
    if losses:
        lines.append(
            f"train loss: {losses[0]:.4f} at step {steps[0]} -> {losses[-1]:.4f} at step {steps[-1]}"
        )
    eval_steps, eval_losses = history.series("eval_loss")
    if eval_losses:
        best = min(range(len(eval_losses)), key=eval_losses.__getitem__)
        lines.append(
            f"best eval loss: {eval_losses[best]:.4f} at step {eval_steps[best]} "
            f"(last {eval_losses[-1]:.4f} at step {eval_steps[-1]})"
        )
    else:
        lines.append("best eval loss: none logged")
    runtime = history.last("train_runtime")
    if runtime:
        rate = history.last("train_samples_per_second")
        speed = f"{runtime:.1f} s"
        if rate is not None:
            speed += f", {rate:.2f} samples/s"
        token_rate = history.last("train_tokens_per_second")
        if token_rate is None and tokens is not None and runtime > 0:
            token_rate = int(tokens) / runtime
        if token_rate is not None:
            speed += f", {token_rate:,.0f} tokens/s"
        lines.append(f"throughput: {speed}")
    if history.run is not None:
        lines.append(f"finished: yes (dlm_run.json, recipe {history.run.get('source')})")
    for file, results in history.evals:
        lines.append(f"eval results ({file}):")
        lines.extend(f"  {line}" for line in metric_lines(results))
    return lines


def plot(history: RunHistory, output: Path) -> Path:
    """Loss and eval loss (left) and learning rate (middle) against the optimizer step, and the
    newest benchmark results (right, when there are any), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if history.evals else 2
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    losses, rate = axes[0], axes[1]
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = history.series(key)
        if values:
            losses.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, label=label)
    losses.set(xlabel="optimizer step", ylabel="diffusion loss", title="loss")
    losses.legend(loc="upper right")
    losses.grid(alpha=0.3)
    steps, values = history.series("learning_rate")
    rate.plot(steps, values, color="tab:green")
    rate.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    rate.grid(alpha=0.3)
    if history.evals:
        _plot_results(axes[2], *history.evals[-1])
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def _plot_results(axis: Any, file: Path, results: dict[str, Any]) -> None:
    """Horizontal bars: one per task metric, with its standard error, a tick at its value and the value
    written beside it (a 0.0 score has a bar of no width: the tick and the label still show it)."""
    rows = metrics(results)
    labels = [f"{task} {name}" for task, name, _, _ in rows]
    values = [value for _, _, value, _ in rows]
    errors = [error or 0.0 for _, _, _, error in rows]
    bars = axis.barh(labels, values, xerr=errors, color="tab:purple", alpha=0.8)
    axis.plot(values, range(len(rows)), linestyle="none", marker="|", markersize=14, color="tab:purple")
    axis.bar_label(bars, labels=[f"{value:.4g}" for value in values], padding=3)
    right = max((value + error for value, error in zip(values, errors)), default=0.0)
    axis.set_xlim(left=min(0.0, *values), right=right * 1.15 or 1.0)
    axis.invert_yaxis()
    axis.set(xlabel="score", title=f"eval results ({file.name})")
    axis.grid(alpha=0.3, axis="x")


def write_run_report(run_dir: str | Path, output: str | Path | None = None) -> str:
    """Write the PNG (default RUN_DIR/report.png) and return the printed summary."""
    history = read_history(run_dir)
    if not history.log_history:
        raise UserError("the run logged nothing yet", file=str(history.source), expected="logged steps")
    png = plot(history, Path(output) if output else Path(run_dir) / "report.png")
    return "\n".join([f"# report for {run_dir}", *summary(history), f"curves: {png}"])
