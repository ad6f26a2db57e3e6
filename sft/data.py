"""Chat data → tokenized training examples `{input_ids, prompt_length, truncated, example_id}`.

Rows carry `messages` (a list of {role, content}, the Tulu 3 / SmolTalk schema) or
`prompt`/`completion` strings. The tokenizer's chat template renders each example; the response is
everything the template adds for the target assistant turn (for ChatML: the content, `<|im_end|>`
and the newline), followed by one EOS. The prompt/response boundary comes from the rendered text:
tokens that start before the end of the rendered prompt belong to the prompt, so a prompt token is
never supervised. Every row that yields no example is counted by reason; nothing is dropped
silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from sft.config import DataSettings
from sft.encoding import PromptEncoder
from sft.errors import UserError
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
    raise UserError("data path not found", file=path, expected="an existing file or directory")


def load_chat_rows(paths: str | list[str], extra_columns: tuple[str, ...] = ()) -> datasets.Dataset:
    """Load chat rows from files/directories, keeping only the conversation columns (and those of
    `extra_columns` that a file has, e.g. `source` for task scoring)."""
    parts = []
    for path in [paths] if isinstance(paths, str) else paths:
        if Path(path, "state.json").is_file():  # a datasets.save_to_disk directory
            loaded = datasets.load_from_disk(path)
        else:
            builder, files = data_files(path)
            empty = [f for f in files if Path(f).stat().st_size == 0]
            if empty:
                raise UserError("empty data file", file=empty[0], expected="chat rows")
            verbosity = datasets.logging.get_verbosity()
            datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # the UserError says it once
            try:
                loaded = datasets.load_dataset(builder, data_files=files, split="train")
            except Exception as err:  # noqa: BLE001 - any reader failure is a data problem
                raise UserError(
                    f"cannot read data: {_reader_message(err)}",
                    file=path,
                    expected="one JSON object per line (.jsonl), a JSON list (.json) or parquet",
                ) from None
            finally:
                datasets.logging.set_verbosity(verbosity)
        columns = [c for c in ("messages", "prompt", "completion") if c in loaded.column_names]
        extra = [c for c in extra_columns if c in loaded.column_names]
        if "messages" not in columns and not {"prompt", "completion"} <= set(columns):
            raise UserError(
                f"no conversation columns (has {', '.join(loaded.column_names)})",
                file=path,
                expected="a 'messages' column or 'prompt' and 'completion'",
            )
        parts.append(loaded.select_columns(columns + extra))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _reader_message(err: BaseException) -> str:
    """The reader's own message: `datasets` wraps it in a DatasetGenerationError without detail."""
    current: BaseException | None = err
    for _ in range(10):
        if current is None:
            break
        text = str(current).strip()
        if text and not isinstance(current, datasets.exceptions.DatasetGenerationError):
            return text.splitlines()[0]
        current = current.__cause__ or current.__context__
    return type(err).__name__


def to_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A row's conversation as a list of {role, content} (prompt/completion become one exchange)."""
    if row.get("messages") is not None:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


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


CACHE_VERSION = 2
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
        "rows": rows._fingerprint,
        "tokenizer": hashlib.sha256(vocab.encode()).hexdigest(),
        "chat_template": tokenizer.chat_template,
        "eos": eos_token_id,
        "max_length": settings.max_length,
        "multi_turn": settings.multi_turn,
        "truncation": settings.truncation,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


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
        except (KeyError, TypeError):
            conversations.append("malformed")
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for examples in tokenize_conversations(conversations, tokenizer, encoder, **policy):
        for example in examples:
            for name, column in columns.items():
                column.append(example[name])
    return columns
