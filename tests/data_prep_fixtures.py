"""Helpers for the data-prep tests: tiny corpora in the real hub layouts and a tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
TULU_SCHEMA = pa.schema([("id", pa.string()), ("messages", pa.list_(MESSAGE)), ("source", pa.string())])
SMOL_SCHEMA = pa.schema([("messages", pa.list_(MESSAGE)), ("source", pa.string())])


def chat(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    """user/assistant alternating messages from plain strings."""
    messages = [{"role": "system", "content": system}] if system else []
    for index, text in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    return messages


def tiny_tokens(messages: list[dict[str, str]]) -> int:
    """Token count of the tiny tokenizer on the ChatML text: per message 2 specials + role +
    whitespace-separated words."""
    return sum(3 + len(m["content"].split()) for m in messages)


def write_tiny_tokenizer(directory: Path) -> Path:
    """A WordLevel tokenizer (whitespace words) with ChatML specials and a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    for word in ("user", "assistant", "system", "hello", "world"):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    return directory


def write_tulu_dir(root: Path, rows: list[dict[str, Any]], shards: int = 2) -> Path:
    """Tulu 3 layout: data/train-0000K-of-0000N.parquet with id, messages, source."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    per = max(1, -(-len(rows) // shards))
    for k in range(shards):
        part = rows[k * per : (k + 1) * per]
        table = pa.Table.from_pylist(part, schema=TULU_SCHEMA)
        pq.write_table(table, root / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")
    return root


def write_smoltalk_dir(
    root: Path,
    rows: list[dict[str, Any]],
    config: str = "all",
    shards: int = 2,
    test_rows: list[dict] | None = None,
) -> Path:
    """SmolTalk layout: data/<config>/train-0000K-of-0000N.parquet (+ test-...) without id."""
    directory = root / "data" / config
    directory.mkdir(parents=True, exist_ok=True)
    per = max(1, -(-len(rows) // shards))
    for k in range(shards):
        part = rows[k * per : (k + 1) * per]
        table = pa.Table.from_pylist(part, schema=SMOL_SCHEMA)
        pq.write_table(table, directory / f"train-{k:05d}-of-{shards:05d}.parquet")
    if test_rows:
        pq.write_table(
            pa.Table.from_pylist(test_rows, schema=SMOL_SCHEMA), directory / "test-00000-of-00001.parquet"
        )
    return root


def write_jsonl(path: Path, rows: list[Any], raw_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_recipe(path: Path, sources: list[dict], output_dir: Path, **extra: Any) -> Path:
    data = {"sources": sources, "output_dir": str(output_dir), **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_split(output_dir: Path, split: str) -> list[dict[str, Any]]:
    files = sorted((output_dir / split).glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def read_kept(output_dir: Path) -> list[dict[str, Any]]:
    return read_split(output_dir, "train") + read_split(output_dir, "eval")
