"""Chat data → tokenized training examples `{input_ids, prompt_length, truncated, example_id}`.

Rows carry `messages` (a list of {role, content}, the Tulu 3 / SmolTalk schema), ShareGPT
`conversations` or `prompt`/`completion` strings; each passes the row check `dlm-sft prepare`
applies (`sft.data.rows`) before it reaches the tokenizer. The tokenizer's chat template renders
each example; the response is everything the template adds for the target assistant turn (for
ChatML: the content, `<|im_end|>` and the newline), followed by one EOS. The prompt/response
boundary comes from the rendered text: tokens that start before the end of the rendered prompt
belong to the prompt, so a prompt token is never supervised. A conversation with `tool` turns is
kept when the chat template renders them (a probe conversation's tool result appears in its text),
else dropped as `tool_turns_not_in_template`. Every row that yields no example is counted by reason;
nothing is dropped silently.
"""

from __future__ import annotations

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
from sft.data.cache import build_once, cache_key, wait_for
from sft.data.encoding import PromptEncoder
from sft.data.rows import RowProblem, to_messages
from sft.errors import UserError

KEPT = ("ok", "truncated")
"""Statuses of examples that are trained on; every other status is a reason for dropping."""
TOOL_PROBE = "dlm-sft tool result 7431"


@dataclass
class TokenizedData:
    """A tokenized split and its accounting (status → number of examples)."""

    dataset: datasets.Dataset
    counts: Counter
    cache: Path | None = None

    @property
    def dropped(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k not in KEPT}


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
    tools: bool | None = None  # whether the template renders tool turns, probed on the first one
    for index, messages in enumerate(conversations):
        if isinstance(messages, str):
            examples[index].append(_status(messages))
            continue
        try:
            turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            with_tools = any(m["role"] == "tool" for m in messages)
        except (KeyError, TypeError):
            examples[index].append(_status("malformed"))
            continue
        if not turns:
            examples[index].append(_status("no_assistant_turn"))
            continue
        if with_tools:
            tools = renders_tool_turns(tokenizer) if tools is None else tools
            if not tools:
                examples[index].append(_status("tool_turns_not_in_template"))
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


def renders_tool_turns(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the chat template writes a tool turn's content into the text (a template that
    raises on the `tool` role or leaves it out does not)."""
    probe = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": TOOL_PROBE},
        {"role": "assistant", "content": "a"},
    ]
    try:
        return TOOL_PROBE in tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - any template failure means it cannot render them
        return False


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
    written by one process and published whole (`sft.data.cache`). With `build=False` (every rank of
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
