"""A checkpoint's safetensors weights on disk, read shard by shard.

A checkpoint's weights are either one `model.safetensors` or shards listed by
`model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {name: file}}`), as transformers
writes them. Pickle weights (`*.bin`, `*.pt`) are never read. Reading yields one shard's tensors at a
time, so converting or merging a checkpoint holds about one input shard in memory (writing:
`sft/export/shards.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from sft.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def shard_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in index order."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        files = list(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise UserError(f"shards listed in the index are missing: {', '.join(missing)}", file=str(index))
        return [directory / f for f in files]
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    raise UserError(
        "no safetensors weights"
        + (f" (pickle weights {', '.join(pickles)} are never loaded)" if pickles else ""),
        file=str(directory),
        expected=f"{SINGLE_FILE} or {INDEX_FILE} with its shards",
    )


def tensor_names(directory: str | Path) -> list[str]:
    """Every tensor name of a checkpoint, without loading any tensor."""
    names: list[str] = []
    for path in shard_files(directory):
        with safe_open(str(path), framework="pt") as handle:
            names.extend(handle.keys())
    return names


def iter_shards(directory: str | Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """(file, {name: tensor}) for each shard in turn; only one shard is loaded at a time."""
    for path in shard_files(directory):
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            tensors = {name: handle.get_tensor(name) for name in names}
        yield path, tensors


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file (e.g. an adapter's weights)."""
    with safe_open(str(path), framework="pt") as handle:
        names = handle.keys()
        return {name: handle.get_tensor(name) for name in names}
