"""Model cards (README.md) of training outputs, checkpoints and exports, written with huggingface_hub's
`ModelCard` / `ModelCardData`.

A card says what the model is (a masked diffusion LM of a family, sampled by unmasking, not left to
right), its base model (a hub id, never a local or cache path), its data (hub datasets, also those
behind a `dlm-sft prepare` output), the recipe, the steps and final losses, and how to load it with
transformers and sample it (`dlm-sft generate`, or Dream's own `diffusion_generate`). It replaces the
placeholder cards of peft and TRL in output directories and checkpoints.

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

import yaml
from huggingface_hub import ModelCard, ModelCardData

from sft.data.sources import is_dataset_id
from sft.families import FAMILIES
from sft.hub import hub_name

RUN_FILE = "dlm_run.json"
"""The record of a finished run, in its output directory."""
CHECKPOINT_FILE = "dlm_checkpoint.json"
"""The record of a run up to a checkpoint, in that `checkpoint-N` directory (same keys as RUN_FILE)."""
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
    """The first run record (`dlm_run.json` or a checkpoint's `dlm_checkpoint.json`; else
    `trainer_state.json`) found in `directories`."""
    records = [Path(d) / name for d in directories if d is not None for name in (RUN_FILE, CHECKPOINT_FILE)]
    for path in records:
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


@dataclass
class CardFacts:
    """What a card describes. `export_format` is None for a training output or checkpoint."""

    title: str
    family: str
    base_model: str | None  # as recorded: a hub id, or a local path (then never written)
    run: RunRecord
    adapter: dict[str, Any] | None = None  # adapter_config.json of a LoRA adapter, when the dir is one
    merged_adapter: bool = False  # an export with a LoRA adapter merged in
    export_format: str | None = None
    dtype: str | None = None
    location: str = "PATH"  # how users name the model: the hub repo, or the directory


def build(facts: CardFacts) -> ModelCard:
    """The card: hub metadata (base_model, datasets, library_name, pipeline_tag, tags) and the text."""
    recipe = portable(scrub(facts.run.recipe)) if facts.run.recipe else None
    data = (recipe or {}).get("data") or {}
    hub_datasets, train_text = describe_data(data.get("train"))
    eval_datasets, eval_text = describe_data(data.get("eval"))
    base = hub_name(facts.base_model)
    tags = ["dlm-sft", "diffusion-lm", "masked-diffusion", facts.family]
    tags += ["lora"] if facts.adapter or facts.merged_adapter else []
    metadata = ModelCardData(
        base_model=base,
        datasets=list(dict.fromkeys(hub_datasets + eval_datasets)) or None,
        library_name="peft" if facts.adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
    )
    rows = [
        ("base model", f"[{base}](https://huggingface.co/{base})" if base else _local(facts.base_model)),
        ("family", f"{facts.family} (masked diffusion)"),
        ("method", _method(facts)),
        ("format", f"{facts.export_format} ({facts.dtype})" if facts.export_format else None),
        ("training data", train_text),
        ("evaluation data", eval_text),
        ("recipe", f"`{facts.run.source}`" if facts.run.source else None),
        ("optimizer steps", facts.run.global_step),
        ("final train loss", _number(facts.run.train_loss)),
        ("final eval loss", _number(facts.run.eval_loss)),
    ]
    lines = [f"# {facts.title}", "", _summary(facts), "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows if value not in (None, "")]
    lines += ["", "## Usage", "", *usage(facts)]
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```"]
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _summary(facts: CardFacts) -> str:
    made = "exported by `dlm-sft export`" if facts.export_format else "trained with dlm-sft"
    return (
        f"A masked diffusion language model ({facts.family} family), supervised fine-tuned and {made}. "
        "It writes its answer into a canvas of mask tokens and unmasks it over several denoising steps, "
        "attending in both directions: sample it with a diffusion sampler, not left-to-right "
        "generation (`pipeline('text-generation')` does not apply)."
    )


def _method(facts: CardFacts) -> str:
    if facts.adapter:
        return f"LoRA adapter (r={facts.adapter.get('r')}, alpha={facts.adapter.get('lora_alpha')})"
    return "LoRA, merged into the base weights" if facts.merged_adapter else "full fine-tuning"


def usage(facts: CardFacts) -> list[str]:
    """Markdown lines: load with transformers, sample with dlm-sft (or the family's own sampler)."""
    where = facts.location
    sample = [
        "Sample (the diffusion defaults are in generation_config.json):",
        "",
        "```bash",
        f'dlm-sft generate {where} --prompt "Your question"',
        "```",
    ]
    if facts.adapter:
        return [
            "A LoRA adapter on the base model above. Merge it into a standalone checkpoint that loads "
            "with transformers:",
            "",
            "```bash",
            f"dlm-sft export {where} --output merged-model",
            "```",
            "",
            *sample,
        ]
    family = FAMILIES.get(facts.export_format or "")
    if family is not None and family.release_usage is not None:  # the family's own release layout
        lines = ["Load it in the family's release layout:", "", *family.release_usage(where)]
    else:
        lines = [
            "Load with transformers (bidirectional attention: `is_causal=False`):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f'model = AutoModelForCausalLM.from_pretrained("{where}")  # config.json: is_causal false',
            "```",
        ]
    return [*lines, "", *sample]


def describe_data(value: Any) -> tuple[list[str], str | None]:
    """(hub dataset ids, a description) of `data.train`/`data.eval`: hub ids as they are, the sources of
    a `dlm-sft prepare` output (its stats.json), other local data by its file name only."""
    if value in (None, "", []):
        return [], None
    ids: list[str] = []
    parts: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            name = str(item.get("name", ""))
            subset = ", ".join(f"{k} {item[k]}" for k in ("config", "split", "revision") if item.get(k))
            found = hub_name(name)
            ids += [found] if found else []
            parts.append(f"{found or _local(name)}" + (f" ({subset})" if subset else ""))
        elif is_dataset_id(str(item)):
            ids.append(str(item))
            parts.append(str(item))
        else:
            sources = _prepared_sources(Path(str(item)))
            ids += [s for s in sources if hub_name(s)]
            parts.append(
                f"{', '.join(sources)} (prepared with `dlm-sft prepare`)" if sources else _local(str(item))
            )
    return ids, "; ".join(parts)


def _prepared_sources(path: Path) -> list[str]:
    """The sources of a `dlm-sft prepare` output directory (PATH or its parent holds stats.json)."""
    for stats in (path / "stats.json", path.parent / "stats.json"):
        if stats.is_file():
            try:
                recipe = json.loads(stats.read_text(encoding="utf-8")).get("recipe") or {}
            except (OSError, ValueError):
                return []
            return [hub_name(s.get("path")) or _local(s.get("path")) for s in recipe.get("sources") or []]
    return []


def portable(value: Any) -> Any:
    """`value` with absolute local paths cut to `.../<last component>` (a card is shared; the paths
    of the machine it was made on say nothing to its readers), recursively."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or Path(value).is_absolute()):
        return f".../{Path(value).name}"
    return value


def _local(path: str | None) -> str | None:
    """A local path as the card may show it: its last component only."""
    return f"local `{Path(str(path)).name}`" if path else None


def write(directory: str | Path, facts: CardFacts) -> Path:
    """Write the card to `directory/README.md`."""
    path = Path(directory) / "README.md"
    build(facts).save(path)
    return path


def _number(value: Any) -> str | None:
    return None if value is None else f"{float(value):.4f}"
