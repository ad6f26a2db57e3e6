"""Chat rows → tokens and response boundaries; files and directories; accounting."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft.config import DataSettings
from sft.data.cache import cache_key
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_conversation, tokenize_dataset, tokenize_processes
from sft.errors import UserError
from tests.conftest import write_chat_rows

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Sort 321"},
    {"role": "assistant", "content": "123"},
    {"role": "user", "content": "Sort 54"},
    {"role": "assistant", "content": "45"},
]


def encode(tokenizer, messages, **kw):
    settings = dict(eos_token_id=tokenizer.eos_token_id, max_length=64, multi_turn="last", truncation="drop")
    settings.update(kw)
    return tokenize_conversation(messages, tokenizer, **settings)


def test_last_turn_policy_makes_the_history_the_prompt(tokenizer):
    [ex] = encode(tokenizer, CONVERSATION)
    prompt = tokenizer.decode(ex["input_ids"][: ex["prompt_length"]])
    response = tokenizer.decode(ex["input_ids"][ex["prompt_length"] :])
    assert prompt.endswith("<|im_start|>assistant\n") and "Sort 54" in prompt and "123" in prompt
    assert response == "45<|im_end|>\n<|endoftext|>"


def test_all_turns_policy_makes_one_example_per_assistant_turn(tokenizer):
    first, second = encode(tokenizer, CONVERSATION, multi_turn="all")
    assert tokenizer.decode(first["input_ids"][first["prompt_length"] :]) == "123<|im_end|>\n<|endoftext|>"
    assert "Sort 54" not in tokenizer.decode(first["input_ids"])  # sees only its history
    assert tokenizer.decode(second["input_ids"][second["prompt_length"] :]).startswith("45")


def test_prompt_is_never_cut_and_long_examples_are_counted(tokenizer):
    full = encode(tokenizer, CONVERSATION)[0]
    fits = full["prompt_length"] + 2  # the prompt (44 tokens) and two of the five response tokens
    [dropped] = encode(tokenizer, CONVERSATION, max_length=fits)
    assert dropped["status"] == "too_long"
    [cut] = encode(tokenizer, CONVERSATION, max_length=fits, truncation="truncate_response")
    assert cut["status"] == "truncated" and len(cut["input_ids"]) == fits
    assert cut["prompt_length"] == full["prompt_length"]
    assert cut["input_ids"] == full["input_ids"][:fits]
    [no_room] = encode(
        tokenizer, CONVERSATION, max_length=full["prompt_length"], truncation="truncate_response"
    )
    assert no_room["status"] == "prompt_too_long"


def test_rows_without_an_assistant_turn_are_counted_not_crashed(tokenizer, tmp_path):
    rows = [
        {"messages": CONVERSATION},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "Sort 21", "completion": "12"},
    ]
    path = write_chat_rows(tmp_path / "rows.jsonl", rows)
    data = tokenize_dataset(
        load_chat_rows(str(path)), tokenizer, DataSettings(train=str(path)), tokenizer.eos_token_id
    )
    assert len(data.dataset) == 2
    assert data.dropped == {"not_ending_with_assistant": 1}
    assert data.dataset["example_id"] == [0, 1]


def test_parquet_directories_and_files_load_alike(tokenizer, tmp_path):
    table = pa.Table.from_pylist([{"id": "a", "source": "s", "messages": CONVERSATION}] * 3)
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-0.parquet")
    pq.write_table(table, tmp_path / "train" / "part-1.parquet")
    assert len(load_chat_rows(str(tmp_path / "train"))) == 6
    assert load_chat_rows(str(tmp_path / "train" / "part-0.parquet")).column_names == ["messages", "problem"]


def test_unreadable_inputs_are_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="unsupported data file type"):
        load_chat_rows(str(tmp_path / "notes.txt"))
    bad = write_chat_rows(tmp_path / "bad.jsonl", [{"text": "no conversation"}])
    with pytest.raises(UserError, match="no conversation columns"):
        load_chat_rows(str(bad))


def test_tokenized_data_is_cached_by_what_it_depends_on(tokenizer, tmp_path):
    path = write_chat_rows(tmp_path / "rows.jsonl", [{"messages": CONVERSATION}] * 3)
    settings = DataSettings(train=str(path), cache_dir=str(tmp_path / "cache"))
    rows = load_chat_rows(str(path))
    first = tokenize_dataset(rows, tokenizer, settings, tokenizer.eos_token_id)
    again = tokenize_dataset(rows, tokenizer, settings, tokenizer.eos_token_id)
    assert again.dataset.cache_files[0]["filename"].startswith(str(tmp_path / "cache"))
    assert again.dataset["input_ids"] == first.dataset["input_ids"] and again.counts == first.counts
    published = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert published == [first.cache.name]

    key = cache_key(rows, tokenizer, settings, tokenizer.eos_token_id)
    assert cache_key(rows, tokenizer, DataSettings(max_length=32), tokenizer.eos_token_id) != key
    assert cache_key(rows, tokenizer, DataSettings(multi_turn="all"), tokenizer.eos_token_id) != key
    other_rows = load_chat_rows(str(write_chat_rows(tmp_path / "other.jsonl", [{"messages": CONVERSATION}])))
    assert cache_key(other_rows, tokenizer, settings, tokenizer.eos_token_id) != key
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = original.replace("<|im_end|>", "<|im_end|> ")
        assert cache_key(rows, tokenizer, settings, tokenizer.eos_token_id) != key
    finally:
        tokenizer.chat_template = original


def test_several_tokenizing_processes_give_what_one_gives(tokenizer, tmp_path):
    path = write_chat_rows(tmp_path / "rows.jsonl", [{"messages": CONVERSATION}, {"prompt": "Sort 21"}] * 20)
    rows = load_chat_rows(str(path))
    eos = tokenizer.eos_token_id
    one = tokenize_dataset(rows, tokenizer, DataSettings(num_proc=1, cache_dir=str(tmp_path / "one")), eos)
    two = tokenize_dataset(rows, tokenizer, DataSettings(num_proc=2, cache_dir=str(tmp_path / "two")), eos)
    assert two.dataset.to_dict() == one.dataset.to_dict() and two.counts == one.counts
    assert len(two.dataset) == 20 and sum(two.dropped.values()) == 20  # no completion


def test_num_proc_defaults_to_the_cores_with_enough_rows_each():
    cores = len(os.sched_getaffinity(0))
    assert tokenize_processes(DataSettings(), 4_999) == 1
    assert tokenize_processes(DataSettings(), 10_000_000) == cores
    assert tokenize_processes(DataSettings(num_proc=3), 10) == 3


def test_a_split_with_every_row_dropped_is_an_empty_dataset(tokenizer, tmp_path):
    path = write_chat_rows(tmp_path / "rows.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 2)
    settings = DataSettings(cache_dir=str(tmp_path / "cache"))
    data = tokenize_dataset(load_chat_rows(str(path)), tokenizer, settings, tokenizer.eos_token_id)
    assert len(data.dataset) == 0 and data.dropped == {"not_ending_with_assistant": 2}
