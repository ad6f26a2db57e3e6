"""Chat data → tokenized training examples `{input_ids, prompt_length, truncated, example_id}`.

Rows carry `messages` (a list of {role, content}, the Tulu 3 / SmolTalk schema), ShareGPT
`conversations` or `prompt`/`completion` strings; each passes the row check `dlm-sft prepare`
applies (`sft.chat_rows`) before it reaches the tokenizer. The tokenizer's chat template renders
each example; the response is everything the template adds for the target assistant turn (for
ChatML: the content, `<|im_end|>` and the newline), followed by one EOS. The prompt/response
boundary comes from the rendered text: tokens that start before the end of the rendered prompt
belong to the prompt, so a prompt token is never supervised. Every row that yields no example is
counted by reason; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from sft import hub
from sft.chat_files import CONVERSATION_KEYS, file_batches
from sft.chat_rows import RowProblem, conversation, is_valid_text
from sft.config import DataSettings
from sft.encoding import PromptEncoder
from sft.errors import UserError
from sft.hub import DatasetRef
from sft.token_cache import build_once, wait_for

KEPT = ("ok", "truncated")
"""Statuses of examples that are trained on; every other status is a reason for dropping."""


@dataclass
class TokenizedData:
    """A tokenized split and its accounting (status → number of examples)."""

    dataset: datasets.Dataset
    counts: Counter
    cache: Path | None = None

    @property
    def dropped(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k not in KEPT}


def data_files(path: str) -> tuple[str, list[str]]:
    """Resolve a data path to (datasets builder name, files)."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return "json", [str(p)]
        if suffix == ".parquet":
            return "parquet", [str(p)]
        raise UserError("unsupported data file type", file=path, expected=".jsonl, .json or .parquet")
    if p.is_dir():
        for builder, patterns in (("parquet", ("*.parquet",)), ("json", ("*.jsonl", "*.json"))):
            files = sorted(str(f) for pattern in patterns for f in p.rglob(pattern))
            if files:
                return builder, files
        raise UserError(
            "no .parquet/.jsonl/.json files in directory",
            file=path,
            expected="a directory of chat data shards",
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

    Local files are read by `sft.chat_files` and checked row by row (`sft.chat_rows`, the check
    `dlm-sft prepare` applies): a row that cannot be used keeps its place with `messages` None and
    its reason in `problem`, so tokenization counts it; any schema, in any mix across files, reads.
    Hub datasets and `save_to_disk` directories are read as they are; `to_messages` checks their rows.
    """
    parts = []
    for item in [paths] if isinstance(paths, (str, dict)) else paths:
        loaded = _dataset(item)
        if loaded is not None:
            dataset, name = loaded
            columns = [c for c in ("messages", "prompt", "completion") if c in dataset.column_names]
            if "messages" not in columns and not {"prompt", "completion"} <= set(columns):
                raise UserError(
                    f"no conversation columns (has {', '.join(dataset.column_names)})",
                    file=name,
                    expected="a 'messages' column or 'prompt' and 'completion'",
                )
            extra = [c for c in extra_columns if c in dataset.column_names]
            parts.append(dataset.select_columns(columns + extra))
            continue
        _, files = data_files(str(item))
        empty = [f for f in files if Path(f).stat().st_size == 0]
        if empty:
            raise UserError("empty data file", file=empty[0], expected="chat rows")
        parts.append(_checked_rows(files, tuple(extra_columns)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def dataset_ref(item: str | dict[str, Any]) -> DatasetRef | None:
    """The hub dataset (or split of a local `DatasetDict`) an entry of `data.train`/`data.eval`
    names; None for a local file or directory given as a string."""
    if isinstance(item, dict):
        return DatasetRef(**item)
    return DatasetRef(item) if hub.is_dataset_id(item) else None


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


READER_VERSION = 1
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


def to_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A row's checked conversation as a list of {role, content}; raises `RowProblem` for a row
    that cannot be trained on (the reason it is counted under)."""
    if row.get("problem"):
        raise RowProblem(row["problem"])
    return conversation(row)


def usable_rows(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], list[dict[str, str]]]]:
    """(row, its checked conversation) for each row that passes the row check; the others are
    left out, as training leaves them out."""
    for row in rows:
        try:
            yield row, to_messages(row)
        except RowProblem:
            continue


def tokenize_conversation(
    messages: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    eos_token_id: int,
    max_length: int,
    multi_turn: str,
    truncation: str,
) -> list[dict[str, Any]]:
    """One conversation → examples (one per trained assistant turn), each with a `status`."""
    policy = dict(max_length=max_length, multi_turn=multi_turn, truncation=truncation)
    encoder = PromptEncoder(tokenizer)
    return tokenize_conversations([messages], tokenizer, encoder, eos_token_id=eos_token_id, **policy)[0]


def tokenize_conversations(
    conversations: list[list[dict[str, str]] | str],
    tokenizer: PreTrainedTokenizerBase,
    encoder: PromptEncoder,
    *,
    eos_token_id: int,
    max_length: int,
    multi_turn: str,
    truncation: str,
) -> list[list[dict[str, Any]]]:
    """Conversations (or, for a row already found unusable, the reason) → each one's examples, in
    one batched encode.

    Each example's prompt and conversation are rendered once; all conversations are then encoded
    together and each prompt length is the number of tokens starting inside the rendered prompt."""
    examples: list[list[dict[str, Any]]] = [[] for _ in conversations]
    slots: list[dict[str, Any]] = []  # the examples still to encode, in order
    prompts: list[str] = []
    texts: list[str] = []
    for index, messages in enumerate(conversations):
        if isinstance(messages, str):
            examples[index].append(_status(messages))
            continue
        try:
            turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        except (KeyError, TypeError):
            examples[index].append(_status("malformed"))
            continue
        if not turns:
            examples[index].append(_status("no_assistant_turn"))
            continue
        for k in turns if multi_turn == "all" else turns[-1:]:
            try:
                history, conversation = messages[:k], messages[: k + 1]
                prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
                text = tokenizer.apply_chat_template(conversation, tokenize=False)
            except Exception:  # noqa: BLE001 - a template error on one row drops that row
                examples[index].append(_status("template_error"))
                continue
            if not text.startswith(prompt):
                raise UserError(
                    "the chat template does not render the prompt as a prefix of the conversation",
                    file=str(tokenizer.name_or_path),
                    key="chat_template",
                    expected="a prefix-stable template such as ChatML",
                )
            slot: dict[str, Any] = {}
            examples[index].append(slot)
            slots.append(slot)
            prompts.append(prompt)
            texts.append(text)
    for slot, ids, prompt_length in zip(slots, *encoder.encode(texts, prompts), strict=True):
        if not ids or ids[-1] != eos_token_id:
            ids.append(eos_token_id)
        slot.update(_fit(ids, prompt_length, max_length, truncation))
    return examples


def _fit(ids: list[int], prompt_length: int, max_length: int, truncation: str) -> dict[str, Any]:
    if prompt_length >= len(ids):
        return _status("empty_response")
    if prompt_length >= max_length:
        return _status("prompt_too_long")
    if len(ids) <= max_length:
        return {"input_ids": ids, "prompt_length": prompt_length, "truncated": False, "status": "ok"}
    if truncation == "drop":
        return _status("too_long")
    return {
        "input_ids": ids[:max_length],
        "prompt_length": prompt_length,
        "truncated": True,
        "status": "truncated",
    }


def _status(reason: str) -> dict[str, Any]:
    return {"input_ids": [], "prompt_length": 0, "truncated": False, "status": reason}


CACHE_VERSION = 3
"""Bumped when tokenization or the cache layout changes, so old caches are not reused."""

COLUMNS = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "prompt_length": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
        "status": datasets.Value("string"),
    }
)
ROWS_PER_PROCESS = 5_000
"""The fewest rows worth a tokenizing process of their own (starting one costs about a second)."""
ROWS_PER_SECOND = 100
"""A floor on one process's tokenizing speed, under a quarter of the ~450 rows per CPU-second measured
(benchmarks/RESULTS.md): ranks waiting for rank 0 to tokenize give up after the time this would take."""
MIN_WAIT_SECONDS = 600


def cache_key(
    rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, settings: DataSettings, eos_token_id: int
) -> str:
    """What the tokenized data depends on: the rows, the tokenizer and its chat template, the
    length limit and the multi-turn and truncation policies."""
    vocab = (
        tokenizer.backend_tokenizer.to_str()
        if tokenizer.is_fast
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    parts = {
        "version": CACHE_VERSION,
        "rows": rows_identity(rows),
        "tokenizer": hashlib.sha256(vocab.encode()).hexdigest(),
        "chat_template": tokenizer.chat_template,
        "eos": eos_token_id,
        "max_length": settings.max_length,
        "multi_turn": settings.multi_turn,
        "truncation": settings.truncation,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def rows_identity(rows: datasets.Dataset) -> Any:
    """The rows as every process and node names them: the Arrow files they are read from and their
    sizes, else (rows in memory, or a selection of them) datasets' fingerprint, which for a dataset
    opened from a file can be random and so differ between the ranks of one launch."""
    files = [entry["filename"] for entry in rows.cache_files]
    if not files or rows._indices is not None:
        return rows._fingerprint
    return [(file, os.path.getsize(file)) for file in files]


def tokenize_processes(settings: DataSettings, rows: int) -> int:
    """`settings.num_proc`, or else the available cores, each with at least ROWS_PER_PROCESS rows."""
    if settings.num_proc:
        return settings.num_proc
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, rows // ROWS_PER_PROCESS))


def wait_seconds(rows: int, processes: int) -> float:
    """How long a rank waits for another to tokenize `rows` with `processes` processes."""
    return max(MIN_WAIT_SECONDS, rows / (ROWS_PER_SECOND * processes))


def tokenize_dataset(
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    settings: DataSettings,
    eos_token_id: int,
    *,
    build: bool = True,
) -> TokenizedData:
    """Tokenize every row once, count statuses and keep the trainable examples.

    The result is cached under `settings.cache_dir/<cache_key>` and reused across epochs, runs and
    processes; a changed input, tokenizer, template, length or policy gives a new key. The cache is
    written by one process and published whole (`sft.token_cache`). With `build=False` (every rank of
    a launch but the global rank 0) this process waits for another to write it instead."""
    key = cache_key(rows, tokenizer, settings, eos_token_id)
    cache = Path(settings.cache_dir).expanduser() / key
    if build:
        build_once(cache, lambda tmp: _tokenize_into(tmp, key, rows, tokenizer, settings, eos_token_id))
    else:
        wait_for(cache, wait_seconds(len(rows), tokenize_processes(settings, len(rows))), "tokenized data")
    counts = Counter(json.loads((cache / "counts.json").read_text()))
    return TokenizedData(_load_examples(cache / "examples"), counts, cache)


def _load_examples(path: Path) -> datasets.Dataset:
    """The kept examples with `example_id`, each one's position (its noise seed), held in memory."""
    if not path.is_dir():  # nothing was kept: datasets cannot read back an empty dataset
        features = {name: COLUMNS[name] for name in ("input_ids", "prompt_length", "truncated")}
        features["example_id"] = datasets.Value("int64")
        return datasets.Dataset.from_dict(dict.fromkeys(features, []), features=datasets.Features(features))
    examples = datasets.load_from_disk(str(path))
    return examples.add_column("example_id", np.arange(len(examples)))


def _tokenize_into(
    directory: Path,
    key: str,
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    settings: DataSettings,
    eos_token_id: int,
) -> None:
    """Write `examples/` (the kept examples, in order) and `counts.json` (status → count)."""
    (directory / "work").mkdir()
    processes = tokenize_processes(settings, len(rows))
    policy = dict(
        eos_token_id=eos_token_id,
        max_length=settings.max_length,
        multi_turn=settings.multi_turn,
        truncation=settings.truncation,
    )
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    if processes > 1:  # one core per process: the tokenizer's own threads would oversubscribe them
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        mapped = rows.map(
            _tokenize_rows,
            fn_kwargs={"tokenizer": tokenizer, "encoder": PromptEncoder(tokenizer), **policy},
            batched=True,
            remove_columns=rows.column_names,
            features=COLUMNS,
            num_proc=processes if processes > 1 else None,
            cache_file_name=str(directory / "work" / "tokenized.arrow"),
            new_fingerprint=key,
            desc="Tokenizing",
        )
    finally:
        if processes > 1 and parallelism is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        elif processes > 1:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    status = mapped.data.column("status")
    counts = {entry["values"]: entry["counts"] for entry in pc.value_counts(status).to_pylist()}
    kept = np.flatnonzero(pc.is_in(status, value_set=pa.array(KEPT)).to_numpy(zero_copy_only=False))
    if len(kept) < len(mapped):
        mapped = mapped.select(kept, indices_cache_file_name=str(directory / "work" / "kept.arrow"))
    if len(kept):
        mapped.remove_columns("status").save_to_disk(str(directory / "examples"))
    (directory / "counts.json").write_text(json.dumps(counts))
    shutil.rmtree(directory / "work")


def _tokenize_rows(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, encoder: PromptEncoder, **policy: Any
) -> dict[str, list]:
    """A batch of rows → the columns of their examples (one row can give several or none)."""
    conversations: list[list[dict[str, str]] | str] = []
    for i in range(len(next(iter(batch.values())))):
        try:
            conversations.append(to_messages({name: values[i] for name, values in batch.items()}))
        except RowProblem as problem:
            conversations.append(problem.reason)
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for examples in tokenize_conversations(conversations, tokenizer, encoder, **policy):
        for example in examples:
            for name, column in columns.items():
                column.append(example[name])
    return columns
