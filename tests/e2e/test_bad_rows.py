"""No row can crash `dlm-sft prepare` or `dlm-sft train`: a generated corpus of bad rows of many
kinds, mixed into good ones across JSON lines, JSON and two parquet schemas, goes through both
commands as users run them; every row is kept or dropped with its reason, and the counts add up."""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sft.cli import main
from sft.data.rows import MAX_ROW_CHARS
from tests.conftest import recipe_dict, sort_rows
from tests.data_prep_fixtures import write_recipe

Row = dict[str, Any]
BAD_BYTES = b"\xff\xfe"
PLACEHOLDER = "@@BAD-BYTES@@"


def _with(row: Row, *messages: dict[str, Any]) -> Row:
    return {**row, "messages": list(messages)}


def _turns(row: Row) -> tuple[dict[str, str], dict[str, str]]:
    return row["messages"][0], row["messages"][1]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value that is not a string (lists and objects nest up to 3 deep)."""
    kinds = ["int", "float", "bool", "null"] + (["list", "object"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(10**12), 10**12)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return [None]  # a bare null is `missing_content`; this one is a list holding null
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randint(1, 3))}


def _line(value: Any) -> bytes:
    """One JSON line; lone surrogates in strings are written as `\\udXXX` escapes, as JSON allows."""
    return (
        json.dumps(value).encode("ascii").replace(json.dumps(PLACEHOLDER).encode(), b'"' + BAD_BYTES + b'"')
    )


# kind -> (make the JSON line from a good row, prepare's malformed detail, train's drop reason);
# None means the row is kept.
JSONL_KINDS: dict[str, tuple[Callable[[Row, random.Random], bytes], str | None, str | None]] = {
    "invalid_json": (lambda g, r: b"not json at all", "invalid_json", "invalid_json"),
    "unclosed_object": (lambda g, r: b'{"messages": [', "invalid_json", "invalid_json"),
    "invalid_utf8": (
        lambda g, r: _line(_with(g, {"role": "user", "content": PLACEHOLDER}, _turns(g)[1])),
        "invalid_utf8",
        "invalid_utf8",
    ),
    "lone_high_surrogate": (
        lambda g, r: _line(_with(g, {"role": "user", "content": "sort \ud800"}, _turns(g)[1])),
        "invalid_unicode",
        "invalid_unicode",
    ),
    "lone_low_surrogate_in_role": (
        lambda g, r: _line(_with(g, _turns(g)[0], {"role": "assistant\udc00", "content": "1"})),
        "invalid_unicode",
        "invalid_unicode",
    ),
    "surrogate_in_source": (lambda g, r: _line({**g, "source": "\ud83d"}), "invalid_unicode", None),
    "deeply_nested": (
        lambda g, r: b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "too_deeply_nested",
        "too_deeply_nested",
    ),
    "integer_with_5000_digits": (
        lambda g, r: b'{"id": 1' + b"0" * 5000 + b', "messages": []}',
        "invalid_json",
        "invalid_json",
    ),
    "giant_row": (
        lambda g, r: _line(
            _with(g, _turns(g)[0], {"role": "assistant", "content": "9" * (MAX_ROW_CHARS + 1)})
        ),
        "row_too_large",
        "row_too_large",
    ),
    "nan_content": (
        lambda g, r: (
            b'{"messages": [{"role": "user", "content": NaN}, {"role": "assistant", "content": "1"}]}'
        ),
        "content_not_a_string",
        "content_not_a_string",
    ),
    "row_is_list": (lambda g, r: _line([1, 2, 3]), "row_not_an_object", "row_not_an_object"),
    "row_is_string": (lambda g, r: _line("just text"), "row_not_an_object", "row_not_an_object"),
    "row_is_null": (lambda g, r: b"null", "row_not_an_object", "row_not_an_object"),
    "row_is_number": (lambda g, r: b"42", "row_not_an_object", "row_not_an_object"),
    "missing_messages": (lambda g, r: _line({"id": g["id"]}), "missing_messages", "missing_messages"),
    "messages_null": (lambda g, r: _line({**g, "messages": None}), "missing_messages", "missing_messages"),
    "messages_string": (
        lambda g, r: _line({**g, "messages": "hi"}),
        "messages_not_a_list",
        "messages_not_a_list",
    ),
    "messages_object": (
        lambda g, r: _line({**g, "messages": _turns(g)[0]}),
        "messages_not_a_list",
        "messages_not_a_list",
    ),
    "empty_messages": (lambda g, r: _line({**g, "messages": []}), "empty_messages", "empty_messages"),
    "message_is_string": (
        lambda g, r: _line({**g, "messages": ["hi", "there"]}),
        "message_not_an_object",
        "message_not_an_object",
    ),
    "message_is_null": (
        lambda g, r: _line({**g, "messages": [None, _turns(g)[1]]}),
        "message_not_an_object",
        "message_not_an_object",
    ),
    "missing_role": (
        lambda g, r: _line(_with(g, {"content": "hi"}, _turns(g)[1])),
        "missing_role",
        "missing_role",
    ),
    "null_role": (
        lambda g, r: _line(_with(g, {"role": None, "content": "hi"}, _turns(g)[1])),
        "missing_role",
        "missing_role",
    ),
    "missing_content": (
        lambda g, r: _line(_with(g, _turns(g)[0], {"role": "assistant"})),
        "missing_content",
        "missing_content",
    ),
    "null_content": (
        lambda g, r: _line(_with(g, {"role": "user", "content": None}, _turns(g)[1])),
        "missing_content",
        "missing_content",
    ),
    "role_number": (
        lambda g, r: _line(_with(g, {"role": 1, "content": "hi"}, _turns(g)[1])),
        "role_not_a_string",
        "role_not_a_string",
    ),
    "content_list": (
        lambda g, r: _line(_with(g, {"role": "user", "content": ["hi"]}, _turns(g)[1])),
        "content_not_a_string",
        "content_not_a_string",
    ),
    "content_image_part": (
        lambda g, r: _line(
            _with(g, {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, _turns(g)[1])
        ),
        "non_text_content",
        "non_text_content",
    ),
    "structured_tool_calls": (
        lambda g, r: _line(
            _with(g, _turns(g)[0], {"role": "assistant", "content": None, "tool_calls": [{}]})
        ),
        "structured_tool_calls",
        "structured_tool_calls",
    ),
    "content_bool": (
        lambda g, r: _line(_with(g, _turns(g)[0], {"role": "assistant", "content": True})),
        "content_not_a_string",
        "content_not_a_string",
    ),
    "content_random_nested_value": (
        lambda g, r: _line(_with(g, _turns(g)[0], {"role": "assistant", "content": _random_value(r)})),
        "content_not_a_string",
        "content_not_a_string",
    ),
    "unknown_role": (
        lambda g, r: _line(_with(g, {"role": "narrator", "content": "hi"}, _turns(g)[1])),
        "unknown_role",
        "unknown_role",
    ),
    "empty_content": (
        lambda g, r: _line(_with(g, _turns(g)[0], {"role": "assistant", "content": ""})),
        "empty_content",
        "empty_content",
    ),
    "whitespace_content": (
        lambda g, r: _line(_with(g, {"role": "user", "content": " \n\t\u3000"}, _turns(g)[1])),
        "empty_content",
        "empty_content",
    ),
    "no_user_turn": (
        lambda g, r: _line(_with(g, {"role": "system", "content": "s"}, _turns(g)[1])),
        "no_user_turn",
        "no_user_turn",
    ),
    "ends_with_user": (
        lambda g, r: _line(_with(g, *_turns(g), {"role": "user", "content": "again"})),
        "not_ending_with_assistant",
        "not_ending_with_assistant",
    ),
    "single_user_turn": (
        lambda g, r: _line(_with(g, _turns(g)[0])),
        "not_ending_with_assistant",
        "not_ending_with_assistant",
    ),
    "starts_with_assistant": (
        lambda g, r: _line(_with(g, _turns(g)[1], *_turns(g))),
        "roles_out_of_order",
        "roles_out_of_order",
    ),
    "two_users_in_a_row": (
        lambda g, r: _line(_with(g, _turns(g)[0], *_turns(g))),
        "roles_out_of_order",
        "roles_out_of_order",
    ),
    "system_in_the_middle": (
        lambda g, r: _line(_with(g, _turns(g)[0], {"role": "system", "content": "s"}, _turns(g)[1])),
        "roles_out_of_order",
        "roles_out_of_order",
    ),
    "prompt_null": (
        lambda g, r: _line({"prompt": None, "completion": _turns(g)[1]["content"]}),
        "missing_content",
        "missing_content",
    ),
    "completion_list": (
        lambda g, r: _line({"prompt": _turns(g)[0]["content"], "completion": ["1"]}),
        "content_not_a_string",
        "content_not_a_string",
    ),
    "sharegpt_unknown_from": (
        lambda g, r: _line(
            {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "1"}]}
        ),
        "unknown_role",
        "unknown_role",
    ),
    "sharegpt_missing_value": (
        lambda g, r: _line({"conversations": [{"from": "human"}, {"from": "gpt", "value": "1"}]}),
        "missing_content",
        "missing_content",
    ),
    "id_is_an_object": (lambda g, r: _line({**g, "id": {"a": 1}}), "id_not_a_string", None),
    "source_is_a_number": (lambda g, r: _line({**g, "source": 5}), "source_not_a_string", None),
    "extra_keys_everywhere": (
        lambda g, r: _line(
            {**_with(g, {**_turns(g)[0], "name": "x"}, {**_turns(g)[1], "tool_calls": None}), "x": 1}
        ),
        None,
        None,
    ),
    "crlf_line_end": (lambda g, r: _line(g) + b"\r", None, None),
}


def _parquet_rows(goods: list[Row]) -> tuple[list[Row], list[bytes | None], Counter, Counter]:
    """File A: `messages` schema; (rows, source bytes, expected prepare details, train reasons)."""
    kinds: dict[str, tuple[Callable[[Row], Row], str | None]] = {
        "null_content": (
            lambda g: _with(g, {"role": "user", "content": None}, _turns(g)[1]),
            "missing_content",
        ),
        "null_role": (lambda g: _with(g, {"role": None, "content": "hi"}, _turns(g)[1]), "missing_role"),
        "null_message": (lambda g: _with(g, None, _turns(g)[1]), "message_not_an_object"),
        "messages_null": (lambda g: {**g, "messages": None}, "missing_messages"),
        "empty_messages": (lambda g: {**g, "messages": []}, "empty_messages"),
        "whitespace_content": (
            lambda g: _with(g, _turns(g)[0], {"role": "assistant", "content": "  "}),
            "empty_content",
        ),
        "unknown_role": (
            lambda g: _with(g, {"role": "narrator", "content": "x"}, _turns(g)[1]),
            "unknown_role",
        ),
        "starts_with_assistant": (lambda g: _with(g, _turns(g)[1], *_turns(g)), "roles_out_of_order"),
        "ends_with_user": (lambda g: _with(g, *_turns(g), _turns(g)[0]), "not_ending_with_assistant"),
        "giant_row": (
            lambda g: _with(g, _turns(g)[0], {"role": "assistant", "content": "7" * (MAX_ROW_CHARS + 1)}),
            "row_too_large",
        ),
    }
    rows, sources, expected = [], [], Counter()
    for index, good in enumerate(goods):
        if index < len(kinds):
            make, reason = list(kinds.values())[index]
            rows.append(make(good))
            expected[reason] += 1
        else:
            rows.append(good)
        sources.append(good["source"].encode())
    sources[len(kinds)] = b"sort" + BAD_BYTES  # a string column holding bytes that are not UTF-8
    expected["invalid_utf8"] += 1
    return rows, sources, expected, expected.copy()


def write_corpus(directory: Path, seed: int = 0) -> tuple[list[Path], int, Counter, Counter]:
    """Writes the corpus; returns (files, input rows, expected prepare details, train reasons)."""
    rng = random.Random(seed)
    goods = iter(
        {"id": r["id"], "source": "sort", "messages": r["messages"]}
        for r in {r["id"]: r for r in sort_rows(400, seed=seed + 7)}.values()
    )
    directory.mkdir(parents=True)
    prepare_expected: Counter = Counter()
    train_expected: Counter = Counter()
    total = 0

    # rows.jsonl: every JSON-lines kind twice, in random order among good rows; a BOM before
    # the first line, blank lines, and a truncated last line
    entries = [(kind, spec) for kind, spec in JSONL_KINDS.items() for _ in range(2)]
    entries += [("good", None)] * 40
    rng.shuffle(entries)
    lines = []
    for _kind, spec in entries:
        good = next(goods)
        if spec is None:
            lines.append(_line(good))
            continue
        make, prepare_reason, train_reason = spec
        lines.append(make(good, rng))
        prepare_expected[prepare_reason] += prepare_reason is not None
        train_expected[train_reason] += train_reason is not None
    lines.insert(rng.randrange(len(lines)), b"   ")
    lines.append(b'{"messages": [{"role": "user", "content": "Sort 21"}, {"role": "assis')
    prepare_expected["truncated_last_line"] += 1
    train_expected["truncated_last_line"] += 1
    (directory / "rows.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines))
    total += len(entries) + 1

    # messages.parquet: the Tulu 3 schema, with nulls, bad shapes, a giant row and invalid UTF-8
    rows, sources, p_expected, t_expected = _parquet_rows([next(goods) for _ in range(30)])
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "messages": pa.array([r["messages"] for r in rows], pa.list_(message)),
            "source": pa.array(sources, pa.binary()).view(pa.string()),
        }
    )
    pq.write_table(table, directory / "messages.parquet")
    prepare_expected += p_expected
    train_expected += t_expected
    total += len(rows)

    # pairs.parquet: another schema (prompt/completion, an extra column)
    pairs = [
        {"prompt": g["messages"][0]["content"], "completion": g["messages"][1]["content"]}
        for g in goods_list(goods, 12)
    ]
    pairs[0]["prompt"] = None
    pairs[1]["completion"] = " "
    table = pa.Table.from_pylist([{**p, "meta": i} for i, p in enumerate(pairs)])
    pq.write_table(table, directory / "pairs.parquet")
    prepare_expected.update({"missing_content": 1, "empty_content": 1})
    train_expected.update({"missing_content": 1, "empty_content": 1})
    total += len(pairs)

    # sharegpt.json: a JSON list in the ShareGPT schema, with a non-UTF-8 byte inside a string
    share = [
        {
            "conversations": [
                {"from": "human", "value": m[0]["content"]},
                {"from": "gpt", "value": m[1]["content"]},
            ]
        }
        for m in (g["messages"] for g in goods_list(goods, 10))
    ]
    share[3]["conversations"][1]["value"] = PLACEHOLDER
    share[5] = 7
    text = json.dumps(share).encode().replace(json.dumps(PLACEHOLDER).encode(), b'"' + BAD_BYTES + b'"')
    (directory / "sharegpt.json").write_bytes(text)
    prepare_expected.update({"invalid_unicode": 1, "row_not_an_object": 1})
    train_expected.update({"invalid_unicode": 1, "row_not_an_object": 1})
    total += len(share)
    files = [directory / n for n in ("rows.jsonl", "messages.parquet", "pairs.parquet", "sharegpt.json")]
    return files, total, +prepare_expected, +train_expected


def goods_list(goods, count: int) -> list[Row]:
    return [next(goods) for _ in range(count)]


def test_bad_rows_of_every_kind_are_dropped_with_their_reason_by_prepare_and_train(
    qwen2_dir, tmp_path, capsys
):
    files, total, prepare_expected, train_expected = write_corpus(tmp_path / "corpus")
    assert len(JSONL_KINDS) + len({"invalid_utf8", "null_message"}) >= 30

    recipe = write_recipe(
        tmp_path / "data.yaml", [{"name": "mix", "path": str(tmp_path / "corpus")}], tmp_path / "prepared"
    )
    assert main(["prepare", str(recipe)]) == 0
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    dropped = sum(prepare_expected.values())
    assert stats["input_rows"] == total
    assert stats["malformed_detail"] == dict(prepare_expected)
    assert stats["dropped"] == {"malformed": dropped, "duplicate": 0}
    assert stats["kept_rows"] == total - dropped
    rejects = pq.read_table(tmp_path / "prepared" / "rejects.parquet").to_pylist()
    assert Counter(r["detail"] for r in rejects) == prepare_expected

    raw = recipe_dict(qwen2_dir, tmp_path / "corpus", tmp_path / "run", max_steps=2)
    raw["data"]["train"] = [str(f) for f in files]
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    out = capsys.readouterr().out
    summary = re.search(r"train examples: (\d+) of (\d+) \(truncated 0; dropped (\d+): (.*)\)", out)
    assert summary, out
    kept, seen, train_dropped = (int(summary.group(i)) for i in (1, 2, 3))
    reasons = Counter({k: int(v) for k, v in (p.split("=") for p in summary.group(4).split(", "))})
    assert seen == total and train_dropped == sum(train_expected.values()) and kept + train_dropped == total
    assert reasons == train_expected
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _error_line(capsys) -> str:
    """The one `error:` line on stderr (besides prepare's progress bar), and no traceback."""
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("prepare:")
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_training_set_with_every_row_dropped_is_one_line_and_leaves_no_cache(qwen2_dir, tmp_path, capsys):
    rows = [
        {"messages": [{"role": "user", "content": "Sort 21"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort 31"}]},
        {
            "messages": [
                {"role": "user", "content": "Sort " + "9" * 99},
                {"role": "assistant", "content": "9" * 99},
            ]
        },
    ]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = recipe_dict(qwen2_dir, tmp_path / "bad.jsonl", tmp_path / "run")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw))
    for _ in range(2):  # the re-run says the same, not a stale-cache error
        capsys.readouterr()
        assert main(["train", str(tmp_path / "train.yaml")]) == 2
        line = _error_line(capsys)
        assert "data.train: no examples to train on in " in line and "bad.jsonl: 0 of 3" in line
        assert "dropped 3: not_ending_with_assistant=2, prompt_too_long=1" in line
        cache = tmp_path / "run" / "tokenized"
        assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())  # (a lock file may stay)


def _train_recipe(qwen2_dir: Path, tmp_path: Path, train: Path, model: Path | None = None) -> Path:
    raw = recipe_dict(model or qwen2_dir, train, tmp_path / "run")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "train.yaml"


UNREADABLE: dict[str, Callable[[Path], Path]] = {
    "utf16": lambda d: _write(d / "utf16.jsonl", '{"messages": []}\n'.encode("utf-16")),
    "not_parquet": lambda d: _write(d / "broken.parquet", b"PAR1 this is not parquet"),
    "parquet_without_conversations": lambda d: _parquet(d / "text.parquet", [{"text": "a"}]),
    "cut_off_gzip": lambda d: _write(d / "cut.jsonl.gz", gzip.compress(b'{"messages": []}\n' * 999)[:-40]),
    "csv_without_conversations": lambda d: _write(d / "notes.csv", b"text,label\na,1\n"),
    "utf16_csv": lambda d: _write(d / "utf16.csv", "prompt,completion\na,b\n".encode("utf-16")),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _parquet(path: Path, rows: list[Row]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_a_file_that_cannot_be_read_is_one_line_naming_it(kind, qwen2_dir, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    bad = UNREADABLE[kind](tmp_path / "data")
    recipe = write_recipe(tmp_path / "data.yaml", [{"name": "x", "path": str(bad)}], tmp_path / "prepared")
    capsys.readouterr()
    assert main(["prepare", str(recipe)]) == 2
    assert str(bad) in _error_line(capsys)
    assert main(["train", str(_train_recipe(qwen2_dir, tmp_path, bad))]) == 2
    assert str(bad) in _error_line(capsys)


def test_rows_without_conversation_columns_are_one_line(qwen2_dir, tmp_path, capsys):
    data = tmp_path / "notes.jsonl"
    data.write_text('{"text": "a", "label": 1}\n')
    capsys.readouterr()
    assert main(["train", str(_train_recipe(qwen2_dir, tmp_path, data))]) == 2
    line = _error_line(capsys)
    assert str(data) in line and "no conversation columns (has label, text)" in line


def test_a_tokenizer_without_a_chat_template_is_one_line(qwen2_dir, tmp_path, capsys):
    model = Path(shutil.copytree(qwen2_dir, tmp_path / "model"))
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in sort_rows(4)))
    capsys.readouterr()
    assert main(["train", str(_train_recipe(qwen2_dir, tmp_path, data, model))]) == 2
    line = _error_line(capsys)
    assert f"{model}: model.name_or_path: the tokenizer has no chat template" in line
