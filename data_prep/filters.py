"""Row filters. Each check returns a reason (or detail) string when the row must go, else None.

Reasons used in the accounting: `malformed` (with a detail such as `empty_content`),
`excluded_source`, `duplicate`, `near_duplicate`, `contaminated`, `too_long`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xxhash

from data_prep.sources import Row
from sft.errors import UserError
from sft.families.base import load_tokenizer_dir

REASONS = (
    "malformed",
    "excluded_source",
    "duplicate",
    "near_duplicate",
    "contaminated",
    "too_long",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def source_excluded(row: Row, include: Sequence[str], exclude: Sequence[str]) -> str | None:
    """`excluded_source` when the row's source (`name:field` or the bare field) fails the lists.

    Patterns are shell globs (`tulu3:*no_robots*`); an empty include list includes everything.
    """
    values = [row.source] + ([row.raw_source] if row.raw_source else [])

    def hit(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(v, p) for v in values for p in patterns)

    if include and not hit(include):
        return "excluded_source"
    if exclude and hit(exclude):
        return "excluded_source"
    return None


# --------------------------------------------------------------------------- token length


def render_chatml(messages: list[dict[str, str]]) -> str:
    """ChatML text; used only when the tokenizer has no chat template of its own."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


class TokenCounter:
    """Counts tokens of chat-templated conversations with a fast tokenizer, in batches."""

    def __init__(self, tokenizer_path: str, file: str = "") -> None:
        try:
            self.tokenizer = load_tokenizer_dir(tokenizer_path)
        except UserError as err:  # a hub id missing from the cache offline: say how to fetch it
            raise UserError(
                err.what, file=file or None, key="filters.tokenizer", expected=err.expected
            ) from None
        except Exception as exc:  # noqa: BLE001 - missing dir, broken files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load tokenizer '{tokenizer_path}': {first}",
                file=file or None,
                key="filters.tokenizer",
                expected="a local tokenizer directory or a reachable hub id",
            ) from exc
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._backend = getattr(self.tokenizer, "backend_tokenizer", None)

    def render(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """The chat-templated text of each conversation (the tokenizer's own template)."""
        if not self.has_template:
            return [render_chatml(c) for c in conversations]
        texts = self.tokenizer.apply_chat_template(conversations, tokenize=False)
        return [texts] if isinstance(texts, str) else list(texts)

    def count_texts(self, texts: list[str]) -> list[int]:
        """Token counts of already-templated texts (batched; the template carries any BOS)."""
        if self._backend is not None and hasattr(self._backend, "encode_batch_fast"):
            return [len(e) for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def count(self, conversations: list[list[dict[str, str]]]) -> list[int | None]:
        """Token counts; None for a conversation the chat template refuses (e.g. a template that
        raises on a role it does not support) so the caller can drop that row, not the run."""
        try:
            texts: list[str | None] = list(self.render(conversations))
        except Exception:  # noqa: BLE001 - find the offending rows one by one
            texts = []
            for conversation in conversations:
                try:
                    texts.append(self.render([conversation])[0])
                except Exception:  # noqa: BLE001
                    texts.append(None)
        counts = iter(self.count_texts([t for t in texts if t is not None]))
        return [next(counts) if t is not None else None for t in texts]


# --------------------------------------------------------------------------- decontamination

_WORD = re.compile(r"\w+")


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the lower-cased word n-grams of a text (texts shorter than n: the whole text)."""
    words = _WORD.findall(text.lower())
    if not words:
        return set()
    if len(words) < n:
        return {xxhash.xxh3_64_intdigest(" ".join(words).encode())}
    return {xxhash.xxh3_64_intdigest(" ".join(words[i : i + n]).encode()) for i in range(len(words) - n + 1)}


def _prompt_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for key in ("prompt", "question", "instruction", "input", "text", "problem"):
            if isinstance(value.get(key), str):
                return [value[key]]
        for key in ("messages", "conversations"):
            if isinstance(value.get(key), list):
                return [
                    m.get("content", m.get("value", ""))
                    for m in value[key]
                    if isinstance(m, dict) and m.get("role", m.get("from")) in ("user", "human")
                ]
    return []


def load_eval_prompts(paths: Sequence[str], file: str = "") -> list[str]:
    """Evaluation prompts from .txt (one per line), .jsonl/.json or .parquet files."""
    prompts: list[str] = []
    for index, path in enumerate(paths):
        key = f"filters.decontaminate.{index}"
        p = Path(path)
        try:
            if p.suffix == ".parquet":
                import pyarrow.parquet as pq

                rows = pq.read_table(p).to_pylist()
            elif p.suffix == ".jsonl":
                lines = p.read_text(encoding="utf-8").splitlines()
                rows = [json.loads(line) for line in lines if line.strip()]
            elif p.suffix == ".json":
                rows = json.loads(p.read_text(encoding="utf-8"))
                rows = rows if isinstance(rows, list) else [rows]
            else:
                rows = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except Exception as exc:  # noqa: BLE001
            raise UserError(
                f"cannot read evaluation prompts '{path}': {exc}", file=file or None, key=key
            ) from exc
        for row in rows:
            prompts.extend(_prompt_texts(row))
    return prompts


class Decontaminator:
    """Drops rows whose user turns share any word n-gram with a given evaluation prompt."""

    def __init__(self, prompts: Sequence[str], n: int) -> None:
        self.n = n
        self.grams: set[int] = set()
        for prompt in prompts:
            self.grams |= ngram_hashes(prompt, n)

    def check(self, row: Row) -> str | None:
        if not self.grams:
            return None
        for message in row.messages:
            if message["role"] == "user" and not self.grams.isdisjoint(
                ngram_hashes(message["content"], self.n)
            ):
                return "contaminated"
        return None
