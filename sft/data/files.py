"""Raw rows of chat data files (parquet, JSON lines, JSON), batch by batch, never failing on a row.

Shared by `dlm-sft prepare` and `dlm-sft train`. A line or record that cannot be parsed (invalid
JSON or UTF-8, a truncated last line, nesting too deep, too large) becomes a `BadRow` that the
row check (`sft.data.rows`) turns into a counted reason; only a file that cannot be read at all
(missing, not parquet, UTF-16, no conversation columns) is a one-line `UserError` naming it.
A UTF-8 byte-order mark is skipped. Memory stays bounded: parquet is read in record batches and
JSON lines line by line.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sft.data.rows import MAX_ROW_CHARS, BadRow
from sft.errors import UserError

SUFFIXES = (".parquet", ".jsonl", ".json")
CONVERSATION_KEYS = ("messages", "conversations", "prompt", "completion")
ROW_KEYS = ("id", "source", *CONVERSATION_KEYS)
"""The keys a reader keeps; everything else in a row is ignored."""
MAX_LINE_BYTES = 8 * MAX_ROW_CHARS
"""A JSON line longer than this is not parsed (`row_too_large`): its content could not pass anyway."""
REJECT_TEXT_CHARS = 10_000
"""How much of an unparsable line a `BadRow` keeps, for rejects.parquet."""
WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
EXPECTED = "parquet with 'messages'/'conversations'/'prompt'+'completion', or UTF-8 JSON lines"


@dataclass(slots=True)
class RawBatch:
    """Rows as read from one file; `start` is the index of the first row in that file."""

    file: str
    start: int
    rows: list[Any]


def _has_conversation_columns(names: set[str]) -> bool:
    return bool(names & {"messages", "conversations"}) or {"prompt", "completion"} <= names


def parquet_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """The conversation columns of a parquet file (any schema that has them) as Python rows."""
    try:
        reader = pq.ParquetFile(file)
        names = set(reader.schema_arrow.names)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing error
        raise UserError(f"cannot read parquet file: {exc}", file=str(file)) from exc
    if not _has_conversation_columns(names):
        raise UserError(
            f"has no conversation columns (has {', '.join(sorted(names))})",
            file=str(file),
            expected=EXPECTED,
        )
    columns = [c for c in ROW_KEYS if c in names]
    start = 0
    try:
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
            rows = _batch_rows(batch)
            yield RawBatch(str(file), start, rows)
            start += len(rows)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read parquet file at row {start}: {exc}", file=str(file)) from exc


def _batch_rows(batch: pa.RecordBatch) -> list[Any]:
    """A record batch as Python rows; a row whose strings are not valid UTF-8 becomes a `BadRow`."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        rows: list[Any] = []
        for index in range(batch.num_rows):
            try:
                rows.extend(batch.slice(index, 1).to_pylist())
            except UnicodeDecodeError:
                rows.append(BadRow("invalid_utf8", ""))
        return rows


def _check_encoding(head: bytes, file: Path) -> None:
    if head.startswith(WIDE_BOMS):
        raise UserError("is UTF-16/UTF-32 encoded (byte-order mark)", file=str(file), expected="UTF-8 text")


def parse_line(line: bytes, last: bool = False) -> Any:
    """One JSON line → a row, or a `BadRow` saying why it is not one (`last`: the file's final
    line, which may have been cut off)."""
    if len(line) > MAX_LINE_BYTES:
        return BadRow("row_too_large", line[:REJECT_TEXT_CHARS].decode("utf-8", "backslashreplace"))
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return BadRow("invalid_utf8", line[:REJECT_TEXT_CHARS].decode("utf-8", "backslashreplace"))
    try:
        return json.loads(text)
    except RecursionError:
        return BadRow("too_deeply_nested", text[:REJECT_TEXT_CHARS])
    except ValueError:
        cut = last and not line.endswith(b"\n")
        return BadRow("truncated_last_line" if cut else "invalid_json", text[:REJECT_TEXT_CHARS])


def jsonl_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """A JSON-lines file, line by line; blank lines are not rows."""
    try:
        handle = open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UserError(f"cannot open: {exc.strerror}", file=str(file)) from exc
    rows: list[Any] = []
    start = 0
    with handle:
        line = handle.readline()
        _check_encoding(line, file)
        line = line.removeprefix(codecs.BOM_UTF8)
        while line:
            following = handle.readline()
            if line.strip():
                rows.append(parse_line(line, last=not following))
            if len(rows) >= batch_rows:
                yield RawBatch(str(file), start, rows)
                start += len(rows)
                rows = []
            line = following
    if rows:
        yield RawBatch(str(file), start, rows)


def json_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """A `.json` file: a list of rows, `{"data": [...]}`, one row, or JSON lines."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot open: {exc.strerror}", file=str(file)) from exc
    _check_encoding(data, file)
    text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    try:
        document = json.loads(text)
    except RecursionError as exc:
        raise UserError("JSON nested too deeply", file=str(file), expected=EXPECTED) from exc
    except ValueError:
        if text.lstrip().startswith("["):
            raise UserError("is not valid JSON", file=str(file), expected="[{...}, ...]") from None
        lines = data.removeprefix(codecs.BOM_UTF8).splitlines(keepends=True)
        last = len(lines) - 1
        rows = [parse_line(line, index == last) for index, line in enumerate(lines) if line.strip()]
    else:
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            document = document["data"]
        rows = document if isinstance(document, list) else [document]
    for start in range(0, len(rows), batch_rows):
        yield RawBatch(str(file), start, rows[start : start + batch_rows])


def file_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """The raw rows of one data file, by its suffix."""
    if file.suffix == ".parquet":
        yield from parquet_batches(file, batch_rows)
    elif file.suffix == ".jsonl":
        yield from jsonl_batches(file, batch_rows)
    elif file.suffix == ".json":
        yield from json_batches(file, batch_rows)
    else:
        raise UserError("unsupported file type", file=str(file), expected=".parquet, .jsonl or .json")
