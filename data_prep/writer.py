"""Incremental parquet output: kept rows as `train/` and `eval/` shards, drops as rejects.parquet.

Rows are buffered per batch and written as row groups; a shard is closed after `shard_rows`
rows and all shards are renamed to the hub's `<split>-0000K-of-0000N.parquet` at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
ROW_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("messages", pa.list_(MESSAGE))])
REJECT_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
        ("id", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("tokens", pa.int64()),
        ("raw", pa.string()),
    ]
)


class ParquetShardWriter:
    """Writes rows of one split into numbered parquet shards."""

    def __init__(self, directory: Path, split: str, shard_rows: int) -> None:
        self.directory = directory
        self.split = split
        self.shard_rows = shard_rows
        self.paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self.rows = 0
        directory.mkdir(parents=True, exist_ok=True)

    def _open(self) -> pq.ParquetWriter:
        path = self.directory / f"{self.split}-{len(self.paths):05d}.parquet"
        self.paths.append(path)
        self._in_shard = 0
        return pq.ParquetWriter(path, ROW_SCHEMA, compression="zstd")

    def write(self, columns: dict[str, list[Any]]) -> None:
        count = len(columns["id"])
        offset = 0
        while offset < count:
            if self._writer is None:
                self._writer = self._open()
            take = min(count - offset, self.shard_rows - self._in_shard)
            part = {k: v[offset : offset + take] for k, v in columns.items()}
            self._writer.write_table(pa.Table.from_pydict(part, schema=ROW_SCHEMA))
            self._in_shard += take
            self.rows += take
            offset += take
            if self._in_shard >= self.shard_rows:
                self._writer.close()
                self._writer = None

    def close(self) -> list[Path]:
        """Close and rename shards to `<split>-0000K-of-0000N.parquet`; an empty split gets one
        empty shard so readers always find the schema."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.paths:
            path = self.directory / f"{self.split}-00000.parquet"
            pq.write_table(ROW_SCHEMA.empty_table(), path, compression="zstd")
            self.paths.append(path)
        total = len(self.paths)
        final = []
        for index, path in enumerate(self.paths):
            target = self.directory / f"{self.split}-{index:05d}-of-{total:05d}.parquet"
            path.rename(target)
            final.append(target)
        self.paths = final
        return final


class RejectWriter:
    """Every dropped row with its reason, in one parquet file."""

    def __init__(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(path, REJECT_SCHEMA, compression="zstd")
        self._buffer: dict[str, list[Any]] = {name: [] for name in REJECT_SCHEMA.names}
        self.rows = 0

    def add(self, **values: Any) -> None:
        for name in REJECT_SCHEMA.names:
            self._buffer[name].append(values.get(name))
        self.rows += 1
        if len(self._buffer["reason"]) >= 8192:
            self.flush()

    def flush(self) -> None:
        if self._buffer["reason"]:
            self._writer.write_table(pa.Table.from_pydict(self._buffer, schema=REJECT_SCHEMA))
            self._buffer = {name: [] for name in REJECT_SCHEMA.names}

    def close(self) -> None:
        self.flush()
        self._writer.close()
