"""Data files: gzipped JSON lines and CSV read as JSON lines are; the suffixes declared once."""

from __future__ import annotations

import csv
import gzip
import json
import re

import pytest

from data_prep.pipeline import prepare
from sft.cli import main
from sft.data.files import SUFFIXES
from sft.data.sources import is_dataset_id, load_chat_rows
from sft.errors import UserError
from tests.conftest import REPO, write_chat_rows
from tests.data_prep_fixtures import read_kept, write_recipe

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Sort {n}"},
            {"role": "assistant", "content": "".join(sorted(str(n)))},
        ]
    }
    for n in (321, 54, 987)
]
ROWS[-1]["messages"][0]["content"] = "Sort,\n987"  # a quoted CSV cell with a comma and a line break


def write_gzip(path, rows):
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def write_csv(path, rows):
    """`messages` as a JSON cell; the last row as `prompt`/`completion` cells (numbers stay text)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "messages", "prompt", "completion"])
        writer.writeheader()
        for index, row in enumerate(rows[:-1]):
            writer.writerow({"id": f"r{index}", "messages": json.dumps(row["messages"])})
        last = rows[-1]["messages"]
        writer.writerow({"id": "pc", "prompt": last[0]["content"], "completion": last[1]["content"]})
    return path


def test_gzipped_json_lines_and_csv_give_the_rows_of_json_lines(tmp_path):
    plain = load_chat_rows(str(write_chat_rows(tmp_path / "rows.jsonl", ROWS)))["messages"]
    assert plain == [row["messages"] for row in ROWS]
    assert load_chat_rows(str(write_gzip(tmp_path / "rows.jsonl.gz", ROWS)))["messages"] == plain
    assert load_chat_rows(str(write_csv(tmp_path / "rows.csv", ROWS)))["messages"] == plain
    both = load_chat_rows(str(tmp_path))  # a directory of mixed files reads them all
    assert len(both) == 3 * len(ROWS) and both["problem"] == [None] * (3 * len(ROWS))


def test_prepare_reads_gzipped_json_lines_and_csv(tmp_path):
    sources = [
        {"name": "gz", "path": str(write_gzip(tmp_path / "a.jsonl.gz", ROWS[:2]))},
        {"name": "csv", "path": str(write_csv(tmp_path / "b.csv", ROWS[1:]))},
    ]
    stats = prepare(str(write_recipe(tmp_path / "data.yaml", sources, tmp_path / "out")), [], progress=False)
    assert stats["input_rows"] == 4 and stats["kept_rows"] == 3  # ROWS[1] twice: a duplicate
    assert sorted(row["messages"][0]["content"] for row in read_kept(tmp_path / "out")) == [
        "Sort 321",
        "Sort 54",
        "Sort,\n987",
    ]


def test_a_bad_csv_cell_is_a_counted_row_and_a_corrupt_gzip_one_line(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["messages"], ['[{"role": "user"'], [json.dumps(ROWS[0]["messages"])]])
    assert load_chat_rows(str(path))["problem"] == ["invalid_json", None]
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"messages": []}\n' * 1000)[:-40])
    with pytest.raises(UserError, match="cannot decompress") as err:
        load_chat_rows(str(broken))
    assert str(broken) in str(err.value)


def test_a_local_file_with_a_data_suffix_is_never_a_hub_dataset_id(qwen2_dir, tmp_path, capsys):
    assert {".csv", ".jsonl.gz"} <= set(SUFFIXES)
    for suffix in SUFFIXES:
        assert not is_dataset_id(f"my-org/train{suffix}")
    assert is_dataset_id("HuggingFaceTB/smoltalk")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name_or_path: {qwen2_dir}}}\ndata: {{train: {tmp_path}/missing.csv}}\n")
    assert main(["train", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and all(suffix in err for suffix in SUFFIXES)


def test_data_file_suffixes_are_listed_only_where_they_are_declared():
    """`sft/data/files.py` declares them (READERS); no other module (nor the config's docs) lists
    them again: no line names two of them."""
    suffix = re.compile(r"(?<!\w)\.(jsonl\.gz|jsonl|json|parquet|csv)\b")
    listed = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "sft").rglob("*.py")
        if path != REPO / "sft" / "data" / "files.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if len(set(suffix.findall(line))) > 1
    ]
    assert listed == []
