"""Evaluation of a diffusion LM: exact-match accuracy on task rows, and `dlm-sft eval`.

`exact_match` scores generated answers with a task scorer. `evaluate_checkpoint` is the command:
the trainer's deterministic eval loss (fixed t grid and mask seed) on a recipe's `data.eval` or a
chat data file, plus accuracy for every row whose `source` names a bundled task
(`sft.tasks.registry`), with the chosen sampler settings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.config import DataSettings, DiffusionSFTConfig, RunConfig
from sft.data.rows import usable_rows
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_dataset
from sft.errors import UserError
from sft.families.base import LoadedModel
from sft.recipe import load_recipe
from sft.sampling.chat import generate_replies, stop_token_ids
from sft.sampling.settings import SamplerSettings
from sft.tasks.registry import task_for_source
from sft.training.trainer import DiffusionSFTTrainer

__all__ = ["exact_match", "stop_token_ids", "evaluate_checkpoint", "EvalReport"]

RECIPE_SUFFIXES = (".yaml", ".yml")


def prompts_of(rows: list[dict]) -> list[list[dict]]:
    """Each row's conversation without its assistant turns (the prompt the answer is scored on)."""
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]


def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    score: Callable[[str, str], bool],
    **generation: object,
) -> float:
    """Fraction of rows whose generated answer the scorer accepts (scored on the last user turn)."""
    conversations = prompts_of(rows)
    answers = generate_replies(model, tokenizer, conversations, **generation)
    hits = [score(c[-1]["content"], a) for c, a in zip(conversations, answers)]
    return sum(hits) / max(len(hits), 1)


def answer_budget(tokenizer: PreTrainedTokenizerBase, rows: list[dict], slack: int = 4) -> int:
    """Canvas length for a task: the longest reference answer in tokens, plus end-of-turn and EOS room."""
    answers = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    longest = max((len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers), default=0)
    return longest + slack


# ----------------------------------------------------------------------------------- dlm-sft eval
@dataclass
class EvalTarget:
    """What to evaluate on: rows, data settings and trainer settings (from a recipe or defaults)."""

    paths: str | list[str]
    data: DataSettings
    training: DiffusionSFTConfig
    recipe: RunConfig | None = None


@dataclass
class EvalReport:
    examples: int
    eval_loss: float | None
    accuracy: dict[str, float] = field(default_factory=dict)  # task source -> exact match
    counts: dict[str, int] = field(default_factory=dict)  # task source -> rows scored
    sampler: dict[str, SamplerSettings] = field(default_factory=dict)  # task source -> settings used
    ar_accuracy: dict[str, float] = field(default_factory=dict)  # task source -> AR baseline

    def lines(self) -> list[str]:
        loss = "n/a" if self.eval_loss is None else f"{self.eval_loss:.4f}"
        lines = [f"eval examples: {self.examples}", f"eval loss: {loss}"]
        for source, accuracy in self.accuracy.items():
            s = self.sampler[source]
            options = f"max_new_tokens={s.max_new_tokens} steps={s.steps} alg={s.alg}"
            options += "".join(
                f" {name}={getattr(s, name)}"
                for name in ("temperature", "block_length", "block_size", "threshold", "alg_temp")
                if getattr(s, name)
            )
            line = f"accuracy {source}: {accuracy:.3f} ({self.counts[source]} rows; {options})"
            lines.append(line)
            if source in self.ar_accuracy:
                lines.append(f"ar-baseline accuracy {source}: {self.ar_accuracy[source]:.3f}")
        return lines


def resolve_target(
    target: str, overrides: list[str] | tuple[str, ...] = (), max_length: int | None = None
) -> EvalTarget:
    """A recipe YAML (its data.eval, data.max_length and diffusion settings) or a chat data path."""
    if Path(target).suffix.lower() in RECIPE_SUFFIXES:
        config = load_recipe(target, overrides)
        if not config.data.eval:
            raise UserError(
                "the recipe has no eval data", file=target, key="data.eval", expected="a chat data file"
            )
        data = replace(config.data, max_length=max_length or config.data.max_length)
        return EvalTarget(config.data.eval, data, config.training, config)
    if overrides:
        raise UserError(
            f"overrides {' '.join(overrides)} need a recipe", file=target, expected="a recipe YAML"
        )
    if not Path(target).exists():
        raise UserError("not found", file=target, expected="a recipe YAML or a chat data file or directory")
    data = DataSettings(train=target, eval=target, max_length=max_length or DataSettings.max_length)
    training = DiffusionSFTConfig(output_dir=tempfile.mkdtemp(prefix="dlm-sft-eval-"), report_to=[])
    return EvalTarget(target, data, training)


def read_rows(paths: str | list[str]) -> list[dict]:
    """The rows of chat data files as conversations (`messages`) with their `source`, for scoring;
    rows that fail the row check are left out, as training leaves them out."""
    rows = load_chat_rows(paths, extra_columns=("source",))
    return [{"messages": messages, "source": row.get("source")} for row, messages in usable_rows(rows)]


def eval_loss(
    loaded: LoadedModel, target: EvalTarget, rows: list[dict], batch_size: int | None = None
) -> float | None:
    """The trainer's deterministic eval loss on `rows` (None when no row fits data.max_length)."""
    if not rows:
        return None
    dataset = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])
    tokenized = tokenize_dataset(dataset, loaded.tokenizer, target.data, loaded.eos_token_id)
    if len(tokenized.dataset) == 0:
        return None
    args = target.training
    args.output_dir = tempfile.mkdtemp(prefix="dlm-sft-eval-")
    args.report_to = []
    args.max_length = target.data.max_length
    args.disable_tqdm = True
    if batch_size:
        args.per_device_eval_batch_size = batch_size
    trainer = DiffusionSFTTrainer(
        loaded.model,
        args,
        train_dataset=tokenized.dataset,  # required by TRL; never trained on
        eval_dataset=tokenized.dataset,
        processing_class=loaded.tokenizer,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the CLI prints its own report
    return float(trainer.evaluate()["eval_loss"])


def task_accuracy(
    loaded: LoadedModel,
    rows: list[dict],
    sampler: SamplerSettings,
    *,
    auto_tokens: bool,
    auto_steps: bool,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, int], dict[str, SamplerSettings]]:
    """Exact match per bundled task among `rows`. With `auto_tokens` the canvas fits the task's
    longest reference answer; with `auto_steps` steps = max_new_tokens (one token per step)."""
    accuracy, counts, used = {}, {}, {}
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row.get("source") or "", []).append(row)
    for source, task_rows in sorted(by_source.items()):
        task = task_for_source(source)
        if task is None:
            continue
        settings = replace(sampler)
        if auto_tokens:
            settings.max_new_tokens = answer_budget(loaded.tokenizer, task_rows)
        if auto_steps:
            settings.steps = settings.max_new_tokens
        settings.check()
        accuracy[source] = exact_match(
            loaded.model,
            loaded.tokenizer,
            task_rows,
            task.score,
            mask_token_id=loaded.mask_token_id,
            shift=loaded.family.shift,
            batch_size=batch_size,
            generator=torch.Generator(device=next(loaded.model.parameters()).device).manual_seed(seed),
            **settings.kwargs(),
        )
        counts[source], used[source] = len(task_rows), settings
    return accuracy, counts, used


def evaluate_checkpoint(
    loaded: LoadedModel,
    target: EvalTarget,
    sampler: SamplerSettings,
    *,
    auto_tokens: bool = True,
    auto_steps: bool = True,
    limit: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> EvalReport:
    """Eval loss and task accuracy of a loaded checkpoint on `target` (first `limit` rows)."""
    rows = read_rows(target.paths)[:limit]
    accuracy, counts, used = task_accuracy(
        loaded,
        rows,
        sampler,
        auto_tokens=auto_tokens,
        auto_steps=auto_steps,
        batch_size=batch_size,
        seed=seed,
    )
    loss = eval_loss(loaded, target, rows, batch_size)
    return EvalReport(len(rows), loss, accuracy, counts, used)
