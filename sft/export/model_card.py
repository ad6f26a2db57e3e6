"""The model card (README.md) of an exported checkpoint: base model, data, recipe, steps, losses.

What a run recorded comes from `dlm_run.json` in its output directory (`recipe`, `source`,
`global_step`, final train/eval loss), else from transformers' `trainer_state.json`; whatever is
missing is left out. Values that look like credentials are never written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_FILE = "dlm_run.json"
_SECRET_KEYS = re.compile(
    r"(api_?key|secret|password|passwd|credential|hub_token|api_token|access_token|auth_token|^token$)", re.I
)
_SECRET_VALUES = re.compile(
    r"^(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_-]{8,}|gh[pous]_[A-Za-z0-9]{8,}|wandb_v1_\S+)"
)


@dataclass
class RunRecord:
    """What is known about the training run behind a checkpoint."""

    recipe: dict[str, Any] | None = None
    source: str | None = None
    global_step: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _first(record: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    return None


def read_run_record(*directories: Path | None) -> RunRecord:
    """The first `dlm_run.json` (else `trainer_state.json`) found in `directories`."""
    for directory in (d for d in directories if d is not None):
        path = Path(directory) / RUN_FILE
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return RunRecord(
                recipe=data.get("recipe"),
                source=data.get("source"),
                global_step=_first(data, "global_step", "steps"),
                train_loss=_first(data, "final_train_loss", "train_loss", "final train loss"),
                eval_loss=_first(data, "final_eval_loss", "eval_loss", "final eval loss"),
            )
    for directory in (d for d in directories if d is not None):
        path = Path(directory) / "trainer_state.json"
        if path.is_file():
            state = json.loads(path.read_text(encoding="utf-8"))
            history = state.get("log_history") or []
            losses = [e["loss"] for e in history if "loss" in e]
            evals = [e["eval_loss"] for e in history if "eval_loss" in e]
            return RunRecord(
                global_step=state.get("global_step"),
                train_loss=losses[-1] if losses else None,
                eval_loss=evals[-1] if evals else None,
            )
    return RunRecord()


def scrub(value: Any) -> Any:
    """`value` without credential-like keys or values (recursively)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not _SECRET_KEYS.search(str(k))}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str) and _SECRET_VALUES.match(value):
        return "<redacted>"
    return value


def render(
    *,
    title: str,
    base_model: str,
    family: str,
    export_format: str,
    dtype: str,
    adapter: str | None,
    run: RunRecord,
) -> str:
    """README.md text with a YAML header that the Hugging Face hub reads."""
    import yaml

    recipe = scrub(run.recipe) if run.recipe else None
    data = (recipe or {}).get("data") or {}
    rows = [
        ("base model", base_model),
        ("family", family),
        ("format", f"{export_format} ({dtype})"),
        ("LoRA adapter merged", adapter or "none (full fine-tuning)"),
        ("training data", _joined(data.get("train"))),
        ("evaluation data", _joined(data.get("eval"))),
        ("recipe", run.source),
        ("optimizer steps", run.global_step),
        ("final train loss", _number(run.train_loss)),
        ("final eval loss", _number(run.eval_loss)),
    ]
    header = {
        "base_model": base_model,
        "library_name": "transformers",
        "tags": ["dlm-sft", "diffusion-lm", family],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    lines += [
        "A masked diffusion language model fine-tuned with dlm-sft and exported by `dlm-sft export`.",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in rows if value not in (None, "")]
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```"]
    lines += [
        "",
        "## Sampling",
        "",
        "`generation_config.json` holds the diffusion defaults (steps, alg, temperature, eps, mask token).",
        "`dlm-sft generate THIS_DIRECTORY --prompt '...'` samples from it.",
        "",
    ]
    return "\n".join(lines)


def _joined(value: Any) -> str | None:
    if value in (None, "", []):
        return None
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _number(value: Any) -> str | None:
    return None if value is None else f"{float(value):.4f}"
