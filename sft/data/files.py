"""Raw rows of chat data files (parquet, JSON lines, gzipped JSON lines, JSON, CSV), batch by batch,
never failing on a row. The readable suffixes are declared once, here (`READERS`, `SUFFIXES`).

Shared by `dlm-sft prepare` and `dlm-sft train`. A line or record that cannot be parsed (invalid
JSON or UTF-8, a truncated last line, nesting too deep, too large) becomes a `BadRow` that the
row check (`sft.data.rows`) turns into a counted reason; only a file that cannot be read at all
(missing, not parquet, UTF-16, no conversation columns) is a one-line `UserError` naming it.
A UTF-8 byte-order mark is skipped. Memory stays bounded: parquet and CSV are read in record
batches (every CSV cell as a string; a `messages`/`conversations` cell holds JSON) and JSON lines
line by line.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from sft.data.rows import MAX_ROW_CHARS, BadRow
from sft.errors import UserError

CONVERSATION_KEYS = ("messages", "conversations", "prompt", "completion")
ROW_KEYS = ("id", "source", *CONVERSATION_KEYS)
"""The keys a reader keeps; everything else in a row is ignored."""
MAX_LINE_BYTES = 8 * MAX_ROW_CHARS
"""A JSON line longer than this is not parsed (`row_too_large`): its content could not pass anyway."""
REJECT_TEXT_CHARS = 10_000
"""How much of an unparsable line a `BadRow` keeps, for rejects.parquet."""
WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
EXPECTED = "parquet or CSV with 'messages'/'conversations'/'prompt'+'completion', or UTF-8 JSON lines"
JSON_CELLS = ("messages", "conversations")
"""CSV columns whose cells are JSON text (a list of turns)."""


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


def jsonl_batches(file: Path, batch_rows: int, opener: Callable[..., Any] = open) -> Iterator[RawBatch]:
    """A JSON-lines file (read through `opener`), line by line; blank lines are not rows."""
    try:
        handle = opener(file, "rb")
    except OSError as exc:
        raise UserError(f"cannot open: {exc.strerror}", file=str(file)) from exc
    rows: list[Any] = []
    start = 0
    with handle:
        line = _read_line(handle, file, start)
        _check_encoding(line, file)
        line = line.removeprefix(codecs.BOM_UTF8)
        while line:
            following = _read_line(handle, file, start + len(rows))
            if line.strip():
                rows.append(parse_line(line, last=not following))
            if len(rows) >= batch_rows:
                yield RawBatch(str(file), start, rows)
                start += len(rows)
                rows = []
            line = following
    if rows:
        yield RawBatch(str(file), start, rows)


def _read_line(handle: Any, file: Path, row: int) -> bytes:
    """The next line; a compressed stream that is corrupt or cut off is a `UserError`."""
    try:
        return handle.readline()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot decompress after row {row}: {exc}", file=str(file)) from exc


def gzip_jsonl_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """A gzip-compressed JSON-lines file, read as `jsonl_batches` reads an uncompressed one."""
    yield from jsonl_batches(file, batch_rows, gzip.open)


def csv_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """A CSV file with a header row, in record batches; every cell a string, `messages` and
    `conversations` cells parsed as JSON (a cell that is not JSON is that row's `BadRow`)."""
    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:
            names = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read the CSV header: {exc}", file=str(file)) from exc
    if not _has_conversation_columns(set(names)):
        raise UserError(
            f"has no conversation columns (has {', '.join(sorted(names))})", file=str(file), expected=EXPECTED
        )
    columns = [c for c in ROW_KEYS if c in names]
    convert = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in columns}, include_columns=columns, check_utf8=False
    )
    start = 0
    try:
        reader = pcsv.open_csv(
            file,
            read_options=pcsv.ReadOptions(block_size=1 << 22),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),  # chat turns have line breaks
            convert_options=convert,
        )
        for batch in reader:
            rows = [_json_cells(row) for row in _batch_rows(batch)]
            yield RawBatch(str(file), start, rows)
            start += len(rows)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user-facing error
        raise UserError(f"cannot read CSV file at row {start}: {exc}", file=str(file)) from exc


def _json_cells(row: Any) -> Any:
    """A CSV row with its empty cells None (CSV has no null) and its `messages`/`conversations`
    cells decoded from JSON."""
    if not isinstance(row, dict):
        return row
    row = {key: None if value == "" else value for key, value in row.items()}
    for name in JSON_CELLS:
        if isinstance(row.get(name), str):
            try:
                row[name] = json.loads(row[name])
            except RecursionError:
                return BadRow("too_deeply_nested", row[name][:REJECT_TEXT_CHARS])
            except ValueError:
                return BadRow("invalid_json", row[name][:REJECT_TEXT_CHARS])
    return row


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


READERS: dict[str, Callable[[Path, int], Iterator[RawBatch]]] = {
    ".parquet": parquet_batches,
    ".jsonl": jsonl_batches,
    ".jsonl.gz": gzip_jsonl_batches,
    ".json": json_batches,
    ".csv": csv_batches,
}
"""Each readable data-file suffix and its reader: the one declaration of the formats dlm-sft reads."""
SUFFIXES = tuple(READERS)
LISTED = ", ".join(SUFFIXES)
"""The suffixes as error messages and help name them."""


def data_suffix(path: str | Path) -> str | None:
    """The declared suffix a file name ends with (any case; the longest one), or None."""
    name = str(path).lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def file_batches(file: Path, batch_rows: int) -> Iterator[RawBatch]:
    """The raw rows of one data file, by its suffix."""
    suffix = data_suffix(file)
    if suffix is None:
        raise UserError("unsupported file type", file=str(file), expected=LISTED)
    yield from READERS[suffix](file, batch_rows)
