"""LoRA adapters on disk: find them, pick one, and merge one into base weights tensor by tensor.

An adapter directory holds `adapter_config.json` (with `base_model_name_or_path`) and
`adapter_model.safetensors`, as peft's `save_pretrained` writes them; several adapters trained on one
base usually sit side by side under one parent directory. Merging follows peft's LoRA math without
building the model: W += (B @ A) * scaling with scaling = alpha / r (alpha / sqrt(r) with rsLoRA),
per module `rank_pattern` / `alpha_pattern` honoured; embeddings use (B @ A)^T. Weights the adapter
saved in full (`modules_to_save`, resized embeddings) replace the base's. The adapter itself is held
in memory (it is small); base weights come one tensor at a time from the caller.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sft.errors import UserError
from sft.families.weights import load_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)")
_UNSUPPORTED = {  # adapter_config key -> what peft feature it turns on (merge would be wrong)
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "parameter targets",
    "layer_replication": "layer replication",
    "fan_in_fan_out": "fan-in/fan-out (Conv1D) weights",
}


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter directory, as `--list-adapters` shows it."""

    name: str
    path: Path
    base: str
    r: int | None
    alpha: float | None

    def line(self) -> str:
        return f"{self.name}\t{self.path}\tbase={self.base or '?'}\tr={self.r}\talpha={self.alpha}"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the adapter config: {err}", file=str(path)) from None


def find_adapters(directory: str | Path, depth: int = 2) -> list[AdapterInfo]:
    """Adapter directories at `directory` or below it (up to `depth` levels), sorted by path."""
    root = Path(directory)
    found: list[Path] = []
    level = [root]
    for _ in range(depth + 1):
        found += [p for p in level if is_adapter_dir(p)]
        level = sorted(
            c for p in level if p.is_dir() and not is_adapter_dir(p) for c in p.iterdir() if c.is_dir()
        )
    infos = []
    for path in sorted(found):
        config = read_adapter_config(path)
        name = root.name if path == root else str(path.relative_to(root))
        infos.append(
            AdapterInfo(
                name,
                path,
                str(config.get("base_model_name_or_path") or ""),
                config.get("r"),
                config.get("lora_alpha"),
            )
        )
    return infos


def choose_adapter(directory: str | Path, adapter: str | None) -> Path | None:
    """The adapter directory to merge: `adapter` (a path, or a name among the adapters under
    `directory`), else `directory` itself when it is one, else the only adapter under a directory
    that holds no model. None for a model directory without `adapter`."""
    root = Path(directory)
    if adapter is not None:
        if is_adapter_dir(adapter):
            return Path(adapter)
        adapters = find_adapters(root)
        matches = [a.path for a in adapters if adapter in (a.name, a.path.name)]
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(a.name for a in adapters) or "none"
        raise UserError(
            f"no single adapter named {adapter!r} (adapters here: {names})",
            file=str(root),
            key="--adapter",
            expected="an adapter directory or the name of one listed by --list-adapters",
        )
    if is_adapter_dir(root) or (root / "config.json").is_file():
        return root if is_adapter_dir(root) else None
    adapters = find_adapters(root)
    if len(adapters) == 1:
        return adapters[0].path
    if not adapters:
        raise UserError(
            "neither a model, nor an adapter, nor a directory of adapters",
            file=str(root),
            expected="a training output, a model directory or LoRA adapter directories",
        )
    raise UserError(
        f"{len(adapters)} adapters here ({', '.join(a.name for a in adapters)}); choose one",
        file=str(root),
        key="--adapter",
        expected="--adapter NAME (see --list-adapters)",
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's lookup: the first pattern matching the end of the module name (after a dot)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


@dataclass
class LoraMerger:
    """A LoRA adapter ready to merge into base weights named as in transformers (`model.layers...`)."""

    directory: Path
    config: dict[str, Any]
    pairs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {A, B, embedding}
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)  # weight name -> saved weight
    applied: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, directory: str | Path) -> LoraMerger:
        directory = Path(directory)
        config = read_adapter_config(directory)
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise UserError(f"peft_type {config.get('peft_type')!r} cannot be merged", file=str(directory))
        for key, feature in _UNSUPPORTED.items():
            if config.get(key):
                raise UserError(
                    f"merging an adapter with {feature} is not supported", file=str(directory), key=key
                )
        weights = directory / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise UserError(
                "no adapter_model.safetensors (pickle adapters are never loaded)",
                file=str(directory),
                expected="an adapter saved by peft with safe_serialization",
            )
        merger = cls(directory, config)
        for key, tensor in load_tensors(weights).items():
            name = key.removeprefix(_PREFIX)
            match = _LORA_KEY.fullmatch(name)
            if match:
                module = match.group(1) or match.group(3)
                kind = (match.group(2) or match.group(4)).removeprefix("lora_").replace("embedding_", "")
                entry = merger.pairs.setdefault(module, {})
                entry[kind] = tensor
                entry["embedding"] = torch.tensor(match.group(4) is not None)
            elif "lora_" in name:
                raise UserError(f"unsupported LoRA weight {key!r}", file=str(weights))
            else:
                merger.replacements[name.replace(".base_layer.", ".")] = tensor
        return merger

    def scaling(self, module: str) -> float:
        r = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config.get("r", 8))
        alpha = _pattern_value(
            self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", 8)
        )
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def merge(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The merged tensor for base weight `name` (the same object when the adapter leaves it alone)."""
        if name in self.replacements:
            weight = self.replacements[name]
            self.applied.add(name)
        module, _, leaf = name.rpartition(".")
        lora = self.pairs.get(module)
        if leaf != "weight" or lora is None:
            return weight
        a, b = lora["A"].float(), lora["B"].float()
        delta = (b @ a).T if bool(lora["embedding"]) else b @ a
        if delta.shape != weight.shape:
            raise UserError(f"adapter shape {tuple(delta.shape)} does not fit {name} {tuple(weight.shape)}")
        self.applied.add(module)
        return (weight.float() + delta * self.scaling(module)).to(weight.dtype)

    def unapplied(self) -> list[str]:
        """Adapter modules and saved weights that matched no base weight (a wrong base, if any)."""
        return sorted((set(self.pairs) | set(self.replacements)) - self.applied)
