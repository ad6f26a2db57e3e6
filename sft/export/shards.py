"""Write a checkpoint in size-bounded safetensors shards, as transformers lays them out.

`ShardWriter` buffers at most `max_shard_size` bytes before writing a shard, so an export holds about
one input shard (`sft/families/weights.py` reads them) and one output shard in memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from sft.errors import UserError
from sft.families.weights import INDEX_FILE, SINGLE_FILE


def parse_size(size: str | int, *, key: str = "--max-shard-size", plain_unit: int = 1) -> int:
    """Bytes in `5GB`, `500MB`, `2GiB`, `40G` (K/M/G/T: powers of 1000, with `i`: of 1024), or a
    plain number of `plain_unit`s.

    Ours because huggingface_hub (2.4) has no public size parser: its private ones
    (`utils._parsing.parse_size`, `serialization._base.parse_size_to_int`) reject `24GiB`, and the
    first also `2.5GB`; transformers' `convert_file_size_to_int` rejects `40G` and `2.5GB`."""
    if isinstance(size, int):
        return size * plain_unit
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"not a memory size: {size!r}", key=key, expected="e.g. 5GB, 500MB or 24GiB")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    if not unit:
        return int(number * plain_unit)
    return int(number * (1024 if binary else 1000) ** ("KMGT".index(unit) + 1))


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
