"""Where chat rows come from: local files and directories (read and checked row by row into an
Arrow file in the datasets cache, written once per version of the files), `save_to_disk`
directories and hub datasets (`sft.hub.DatasetRef`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from sft import hub
from sft.data.files import CONVERSATION_KEYS, LISTED, data_suffix, file_batches
from sft.data.rows import RowProblem, conversation, is_valid_text
from sft.errors import UserError
from sft.hub import DatasetRef


def data_files(path: str) -> list[str]:
    """The data files a local path names: the file itself, or a directory's parquet files when it
    has any (the JSON files beside a hub snapshot's parquet shards are metadata), else all its data
    files."""
    p = Path(path)
    if p.is_file():
        if data_suffix(p) is None:
            raise UserError("unsupported data file type", file=path, expected=LISTED)
        return [str(p)]
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and data_suffix(f) is not None)
        parquet = [f for f in found if data_suffix(f) == ".parquet"]
        if found:
            return parquet or found
        raise UserError(
            f"no data files ({LISTED}) in directory", file=path, expected="a directory of chat data shards"
        )
    raise UserError(
        "data path not found", file=path, expected="an existing file or directory, or a hub dataset id"
    )


def load_chat_rows(
    paths: str | dict[str, Any] | list[str | dict[str, Any]], extra_columns: tuple[str, ...] = ()
) -> datasets.Dataset:
    """Load chat rows from files, directories and hub datasets (`sft.hub.DatasetRef`: an `org/name`
    string or a `{name, config, split, revision}` mapping), keeping only the conversation columns
    (and those of `extra_columns` that a source has, e.g. `source` for task scoring).

    Local files are read by `sft.data.files` and checked row by row (`sft.data.rows`, the check
    `dlm-sft prepare` applies): a row that cannot be used keeps its place with `messages` None and
    its reason in `problem`, so tokenization counts it; any schema, in any mix across files, reads.
    Hub datasets and `save_to_disk` directories are read as they are; `to_messages` checks their rows.
    """
    parts = []
    for item in [paths] if isinstance(paths, (str, dict)) else paths:
        loaded = _dataset(item)
        if loaded is not None:
            dataset, name = loaded
            columns = conversation_columns(dataset, file=name)
            extra = [c for c in extra_columns if c in dataset.column_names]
            parts.append(dataset.select_columns(columns + extra))
            continue
        files = data_files(str(item))
        empty = [f for f in files if Path(f).stat().st_size == 0]
        if empty:
            raise UserError("empty data file", file=empty[0], expected="chat rows")
        parts.append(_checked_rows(files, tuple(extra_columns)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def conversation_columns(
    dataset: datasets.Dataset, file: str | None = None, key: str | None = None
) -> list[str]:
    """The conversation columns of a Dataset (`messages`, or `prompt` and `completion`); a UserError
    naming `file`/`key` when it has neither."""
    columns = [c for c in ("messages", "prompt", "completion") if c in dataset.column_names]
    if "messages" not in columns and not {"prompt", "completion"} <= set(columns):
        raise UserError(
            f"no conversation columns (has {', '.join(dataset.column_names)})",
            file=file,
            key=key,
            expected="a 'messages' column or 'prompt' and 'completion'",
        )
    return columns


def is_dataset_id(text: str) -> bool:
    """A string naming a hub dataset rather than a local file: `org/name`, no data-file suffix, and
    nothing at that path."""
    return hub.hub_name(text) is not None and data_suffix(text) is None


def dataset_ref(item: str | dict[str, Any]) -> DatasetRef | None:
    """The hub dataset (or split of a local `DatasetDict`) an entry of `data.train`/`data.eval`
    names; None for a local file or directory given as a string."""
    if isinstance(item, dict):
        return DatasetRef(**item)
    return DatasetRef(item) if is_dataset_id(item) else None


def _dataset(item: str | dict[str, Any]) -> tuple[datasets.Dataset, str] | None:
    """An entry of `data.train`/`data.eval` that is a hub dataset or a `save_to_disk` directory, as a
    Dataset with its name for messages; None for local data files."""
    ref = dataset_ref(item)
    if ref is not None and not Path(ref.name).exists():
        return hub.load_dataset(ref), ref.name
    path = ref.name if ref is not None else str(item)
    if Path(path, "dataset_dict.json").is_file():  # a DatasetDict.save_to_disk root
        splits = datasets.load_from_disk(path)
        split = ref.split if ref is not None else None
        if split not in splits:
            raise UserError(
                f"a DatasetDict with splits {', '.join(splits)}; choose one",
                file=path,
                expected=f"{path}/<split> or {{name: {path}, split: <split>}}",
            )
        return splits[split], path
    if Path(path, "state.json").is_file():  # a Dataset.save_to_disk directory
        return datasets.load_from_disk(path), path
    return None


READER_VERSION = 2
"""Bumped when reading or checking rows changes, so rows read by older code are not reused."""

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _checked_rows(files: list[str], extra_columns: tuple[str, ...]) -> datasets.Dataset:
    """The checked rows of local files, memory-mapped from an Arrow file in the datasets cache
    (`HF_DATASETS_CACHE/dlm-sft-rows/<key>`), written once per version of the files: the key is
    their paths, sizes and modification times."""
    stamps = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps([READER_VERSION, stamps, extra_columns]).encode()).hexdigest()[:32]
    path = Path(datasets.config.HF_DATASETS_CACHE) / "dlm-sft-rows" / key / "rows.arrow"
    if not path.is_file():
        schema = pa.schema(
            [("messages", MESSAGES), ("problem", pa.string())] + [(c, pa.string()) for c in extra_columns]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"rows.arrow.partial-{os.getpid()}")
        try:
            with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for file in files:
                    for columns in _checked_columns(Path(file), extra_columns):
                        writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(path))


def _checked_columns(file: Path, extra_columns: tuple[str, ...]) -> Iterator[dict[str, list]]:
    """A file's rows, batch by batch, as columns: `messages` (None for a bad row), `problem` (its
    reason) and the `extra_columns` (None unless valid text)."""
    keys: set[str] = set()
    for batch in file_batches(file, batch_rows=2048):
        columns: dict[str, list] = {"messages": [], "problem": [], **{c: [] for c in extra_columns}}
        for raw in batch.rows:
            if isinstance(raw, dict) and len(keys) < 100:
                keys.update(map(str, raw))
            try:
                messages, problem = conversation(raw), None
            except RowProblem as err:
                messages, problem = None, err.reason
            columns["messages"].append(messages)
            columns["problem"].append(problem)
            for name in extra_columns:
                value = raw.get(name) if isinstance(raw, dict) else None
                columns[name].append(value if isinstance(value, str) and is_valid_text(value) else None)
        yield columns
    if keys and not keys & set(CONVERSATION_KEYS):
        raise UserError(
            f"no conversation columns (has {', '.join(sorted(keys)[:10])})",
            file=str(file),
            expected="a 'messages' column, ShareGPT 'conversations', or 'prompt' and 'completion'",
        )
