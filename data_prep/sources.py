"""Reading sources in batches and adapting each schema to `Row(id, source, messages)`.

A source is a local file, a glob, a directory in the hub's layout (`data/<config>/<split>-*.parquet`
or `data/<split>-*.parquet`), or a hub id (`config`, `split`, `revision` as `datasets.load_dataset`
takes them; read from the hub cache when cached, `sft.hub`) as memory-mapped Arrow. Rows are
read in record batches so memory stays bounded. An unreadable file is a `UserError`; a bad row is
never an exception: it becomes a `BadRow` or a malformed detail that the pipeline counts.
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
from sft.errors import UserError
from sft.hub import DatasetRef

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
SPLIT_NAMES = ("train", "test", "validation", "valid", "eval", "dev")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}


@dataclass(slots=True)
class BadRow:
    """A row that could not even be parsed (e.g. invalid JSON); `text` is what was read."""

    detail: str
    text: str


@dataclass(slots=True)
class RawBatch:
    """Rows as read from one file; `start` is the index of the first row in that file."""

    file: str
    start: int
    rows: list[Any]


@dataclass(slots=True)
class Row:
    """A conversation in the output schema."""

    id: str
    source: str
    raw_source: str | None
    messages: list[dict[str, str]]


# --------------------------------------------------------------------------- locating files


def _split_files(directory: Path, split: str) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))
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


def _parquet_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
        names = set(reader.schema_arrow.names)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing error
        raise UserError(f"cannot read parquet file: {exc}", file=str(file)) from exc
    if not names & {"messages", "conversations"} and not {"prompt", "completion"} <= names:
        raise UserError(
            "has no 'messages', 'conversations' or 'prompt'/'completion' columns",
            file=str(file),
            expected="the Tulu 3 / SmolTalk schema, ShareGPT 'conversations' or prompt/completion",
        )
    columns = [c for c in ("id", "source", "messages", "conversations", "prompt", "completion") if c in names]
    start = 0
    try:
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
            rows = batch.to_pylist()
            yield RawBatch(str(file), start, rows)
            start += len(rows)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read parquet file at row {start}: {exc}", file=str(file)) from exc


def _jsonl_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    rows: list[Any] = []
    start = 0
    try:
        handle = open(file, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise UserError(f"cannot open: {exc.strerror}", file=str(file)) from exc
    with handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append(BadRow("invalid_json", line[:10_000]))
            if len(rows) >= batch_rows:
                yield RawBatch(str(file), start, rows)
                start += len(rows)
                rows = []
    if rows:
        yield RawBatch(str(file), start, rows)


def _json_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    try:
        data = json.loads(file.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read JSON: {exc}", file=str(file)) from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError("is not a JSON list of rows", file=str(file), expected="[{...}, ...]")
    for start in range(0, len(data), batch_rows):
        yield RawBatch(str(file), start, data[start : start + batch_rows])


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
        if file.suffix == ".parquet":
            yield from _parquet_batches(file, batch_rows)
        elif file.suffix == ".jsonl":
            yield from _jsonl_batches(file, batch_rows)
        elif file.suffix == ".json":
            yield from _json_batches(file, batch_rows)
        else:
            raise UserError("unsupported file type", file=str(file), expected="parquet/jsonl/json")


# --------------------------------------------------------------------------- schema adapters


def stable_id(name: str, messages: list[dict[str, str]]) -> str:
    """An id for rows that have none: a hash of the conversation's exact content."""
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return f"{name}-{xxhash.xxh3_128_hexdigest(text.encode('utf-8', 'surrogatepass'))[:20]}"


def _messages(items: Any, role_map: dict[str, str] | None) -> list[dict[str, str]] | str:
    """Schema-check a message list; return the normalised list or a malformed detail."""
    if items is None:
        return "missing_messages"
    if not isinstance(items, list):
        return "messages_not_a_list"
    if not items:
        return "empty_messages"
    out = []
    role_key, content_key = ("role", "content") if role_map is None else ("from", "value")
    for item in items:
        if not isinstance(item, dict):
            return "message_not_an_object"
        role, content = item.get(role_key), item.get(content_key)
        if role is None:
            return "missing_role"
        if content is None:
            return "missing_content"
        if not isinstance(role, str):
            return "role_not_a_string"
        if not isinstance(content, str):
            return "content_not_a_string"
        if role_map is not None:
            role = role_map.get(role.lower(), role)
        out.append({"role": role, "content": content})
    return out


def adapt(raw: Any, fmt: str, name: str) -> Row | str:
    """Turn one raw row into a `Row`, or return a malformed detail string."""
    if isinstance(raw, BadRow):
        return raw.detail
    if not isinstance(raw, dict):
        return "row_not_an_object"
    if fmt == "sharegpt" or (fmt == "auto" and "messages" not in raw and "conversations" in raw):
        messages = _messages(raw.get("conversations"), SHAREGPT_ROLES)
    elif fmt == "prompt_completion" or (fmt == "auto" and "messages" not in raw and "prompt" in raw):
        pair = [
            {"role": "user", "content": raw.get("prompt")},
            {"role": "assistant", "content": raw.get("completion")},
        ]
        messages = _messages(pair, None)
    else:
        messages = _messages(raw.get("messages"), None)
    if isinstance(messages, str):
        return messages
    raw_source = raw.get("source")
    if raw_source is not None and not isinstance(raw_source, str):
        return "source_not_a_string"
    row_id = raw.get("id") if fmt != "smoltalk" else None
    if row_id is not None and not isinstance(row_id, (str, int)):
        return "id_not_a_string"
    if row_id is None or row_id == "":
        row_id = stable_id(name, messages)
    label = f"{name}:{raw_source}" if raw_source else name
    return Row(str(row_id), label, raw_source, messages)


def raw_json(raw: Any) -> str:
    """The raw row as JSON text for rejects.parquet (never raises)."""
    if isinstance(raw, BadRow):
        return raw.text
    try:
        return json.dumps(raw, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(raw)
