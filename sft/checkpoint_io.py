"""Sharded safetensors on disk: read a checkpoint shard by shard, write one in size-bounded shards.

A checkpoint's weights are either one `model.safetensors` or shards listed by
`model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {name: file}}`), as transformers
writes them. Pickle weights (`*.bin`, `*.pt`) are never read. Reading yields one shard's tensors at a
time and writing buffers at most `max_shard_size` bytes, so converting or merging a checkpoint holds
about one input shard and one output shard in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sft.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def parse_size(size: str | int, *, key: str = "--max-shard-size", plain_unit: int = 1) -> int:
    """Bytes in `5GB`, `500MB`, `2GiB`, `40G` (K/M/G/T: powers of 1000, with `i`: of 1024), or a
    plain number of `plain_unit`s."""
    if isinstance(size, int):
        return size * plain_unit
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"not a memory size: {size!r}", key=key, expected="e.g. 5GB, 500MB or 24GiB")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    if not unit:
        return int(number * plain_unit)
    return int(number * (1024 if binary else 1000) ** ("KMGT".index(unit) + 1))


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


class ShardWriter:
    """Writes tensors into `model-0000i-of-0000n.safetensors` shards of at most `max_shard_size` bytes
    (a tensor larger than that gets a shard of its own) plus the index, or one `model.safetensors`.

    `peak_buffered_bytes` records the most bytes ever held waiting for a flush.
    """

    def __init__(self, directory: str | Path, max_shard_size: str | int = "5GB") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = parse_size(max_shard_size)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered = 0
        self._parts: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.peak_buffered_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in names for _, names in self._parts):
            raise ValueError(f"tensor {name} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered + size > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().contiguous()
        self._buffered += size
        self.total_bytes += size
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self._buffered)

    def _flush(self) -> None:
        if not self._buffer:
            return
        path = self.directory / f".part-{len(self._parts):05d}.safetensors"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._parts.append((path, list(self._buffer)))
        self._buffer, self._buffered = {}, 0

    def finish(self) -> list[str]:
        """Write the last shard, name the shards and write the index; returns the file names."""
        self._flush()
        for stale in [*self.directory.glob("model-*-of-*.safetensors"), self.directory / SINGLE_FILE]:
            stale.unlink(missing_ok=True)
        (self.directory / INDEX_FILE).unlink(missing_ok=True)
        if len(self._parts) == 1:
            self._parts[0][0].rename(self.directory / SINGLE_FILE)
            return [SINGLE_FILE]
        count = len(self._parts)
        weight_map: dict[str, str] = {}
        for i, (path, names) in enumerate(self._parts, start=1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            path.rename(self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return [*dict.fromkeys(weight_map.values())]
