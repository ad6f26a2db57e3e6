"""Locating each source's data and adapting its rows to `Row(id, source, messages)`.

A source is a local file, a glob, a directory in the hub's layout (`data/<config>/<split>-*.parquet`
or `data/<split>-*.parquet`), or a hub id (`config`, `split`, `revision` as `datasets.load_dataset`
takes them; read from the hub cache when cached, `sft.hub`) as memory-mapped Arrow. Local files
are read by `sft.data.files` and every row is checked by `sft.data.rows` (the same reader and check
`dlm-sft train` uses). An unreadable file is a `UserError`; a bad row is never an exception: it
becomes a malformed detail that the pipeline counts.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from data_prep.recipe import SourceSpec
from sft import hub
from sft.data.files import SUFFIXES, RawBatch, file_batches
from sft.data.rows import BadRow, RowProblem, conversation, is_valid_text
from sft.errors import UserError
from sft.hub import DatasetRef

SPLIT_NAMES = ("train", "test", "validation", "valid", "eval", "dev")
REJECT_RAW_CHARS = 100_000
"""rejects.parquet keeps at most this much of a dropped row's raw JSON."""


@dataclass(slots=True)
class Row:
    """A conversation in the output schema."""

    id: str
    source: str
    raw_source: str | None
    messages: list[dict[str, str]]


# --------------------------------------------------------------------------- locating files


def _split_files(directory: Path, split: str) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        return []
    named = [p for p in files if p.name.split("-")[0].split(".")[0].split("_")[0] == split]
    if named:
        return named
    if any(p.name.split("-")[0].split(".")[0].split("_")[0] in SPLIT_NAMES for p in files):
        return []  # the directory is split by name, but not for this split
    return files


def resolve_files(spec: SourceSpec) -> list[Path] | None:
    """Local data files for a source, in a deterministic order; None means 'not local'."""
    path = Path(os.path.expanduser(spec.path))
    if any(ch in spec.path for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(spec.path)) if Path(p).is_file())
    if path.is_file():
        return [path]
    if not path.is_dir():
        return None
    candidates = []
    if spec.config:
        candidates += [path / "data" / spec.config, path / spec.config]
    candidates += [path / "data", path]
    for directory in candidates:
        if directory.is_dir():
            files = _split_files(directory, spec.split)
            if files:
                return files
    return []


# --------------------------------------------------------------------------- reading batches


def _hub_batches(spec: SourceSpec, batch_rows: int, key: str) -> Iterator[RawBatch]:
    ref = DatasetRef(spec.path, spec.config, spec.split, spec.revision)
    try:
        dataset = hub.load_dataset(ref)
    except UserError as err:
        raise UserError(err.what, key=key, expected=err.expected) from None
    start = 0
    for table in dataset.with_format("arrow").iter(batch_size=batch_rows):
        rows = table.to_pylist()
        yield RawBatch(f"hub:{spec.path}", start, rows)
        start += len(rows)


def count_rows(files: list[Path]) -> int | None:
    """Rows known without reading data (parquet metadata); None when some file is not parquet."""
    import pyarrow.parquet as pq

    total = 0
    for file in files:
        if file.suffix != ".parquet":
            return None
        try:
            total += pq.ParquetFile(file).metadata.num_rows
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot read parquet file: {exc}", file=str(file)) from exc
    return total


def read_batches(spec: SourceSpec, files: list[Path] | None, batch_rows: int, key: str) -> Iterator[RawBatch]:
    """All raw rows of a source, batch by batch."""
    if files is None:
        yield from _hub_batches(spec, batch_rows, key)
        return
    for file in files:
        yield from file_batches(file, batch_rows)


# --------------------------------------------------------------------------- schema adapters


def stable_id(name: str, messages: list[dict[str, str]]) -> str:
    """An id for rows that have none: a hash of the conversation's exact content."""
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return f"{name}-{xxhash.xxh3_128_hexdigest(text.encode('utf-8', 'surrogatepass'))[:20]}"


def adapt(raw: Any, fmt: str, name: str, check_shape: bool = True) -> Row | str:
    """Turn one raw row into a `Row`, or return a malformed detail string (`check_shape`: the
    conversation-shape part of the row check, `filters.malformed`)."""
    try:
        messages = conversation(raw, fmt, shape=check_shape)
    except RowProblem as problem:
        return problem.reason
    raw_source = raw.get("source")
    if raw_source is not None and not isinstance(raw_source, str):
        return "source_not_a_string"
    row_id = raw.get("id") if fmt != "smoltalk" else None
    if row_id is not None and not isinstance(row_id, (str, int)):
        return "id_not_a_string"
    if not all(is_valid_text(text) for text in (raw_source or "", str(row_id or ""))):
        return "invalid_unicode"
    if row_id is None or row_id == "":
        row_id = stable_id(name, messages)
    label = f"{name}:{raw_source}" if raw_source else name
    return Row(str(row_id), label, raw_source, messages)


def valid_text(text: str) -> str:
    """`text` with anything that is not valid Unicode (lone surrogates) escaped, for a writer."""
    return text if is_valid_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def raw_json(raw: Any) -> str:
    """The raw row as JSON text for rejects.parquet (valid Unicode, bounded; never raises)."""
    if isinstance(raw, BadRow):
        return valid_text(raw.text)
    try:
        text = json.dumps(raw, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(raw).__name__}>"
    return valid_text(text[:REJECT_RAW_CHARS])
