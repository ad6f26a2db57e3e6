"""The tokenized-data cache: one writer, never half-written, others wait or are told to tokenize first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sft.config import DataSettings
from sft.data.cache import build_once, publish, wait_for
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_dataset
from sft.errors import UserError
from tests.conftest import QUICKSTART_MODEL, REPO, sort_rows, write_chat_rows

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from transformers import AutoTokenizer
    from sft.config import DataSettings
    from sft.data.sources import load_chat_rows
    from sft.data.tokenization import tokenize_dataset

    data, cache, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[4])
    rows = load_chat_rows(data)
    settings = DataSettings(train=data, cache_dir=cache, num_proc=1)
    Path(sys.argv[5]).touch()  # ready
    while not go.exists():
        time.sleep(0.01)
    start = time.time()
    result = tokenize_dataset(rows, tokenizer, settings, tokenizer.eos_token_id)
    print(json.dumps({"examples": len(result.dataset), "first": result.dataset[0]["input_ids"],
                      "counts": result.counts, "start": start, "end": time.time()}))
    """
)


def test_two_processes_writing_one_cache_at_once_leave_one_whole_copy(tmp_path, tokenizer):
    data = write_chat_rows(tmp_path / "rows.jsonl", sort_rows(3000))
    cache, go = tmp_path / "cache", tmp_path / "go"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(data),
                str(cache),
                str(go),
                str(QUICKSTART_MODEL),
                str(tmp_path / f"ready{i}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers), writers[0].stderr
        time.sleep(0.05)
    go.touch()  # both start tokenizing within milliseconds
    results = []
    for writer in writers:
        out, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert max(r["start"] for r in results) < min(r["end"] for r in results)  # they did overlap
    outcome = [{k: r[k] for k in ("examples", "first", "counts")} for r in results]
    assert outcome[0] == outcome[1]
    assert results[0]["examples"] == 3000
    published = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(published) == 1  # one cache, and no partial copy left behind
    assert [p.name for p in cache.iterdir() if ".partial-" in p.name] == []
    fresh = tokenize_dataset(
        load_chat_rows(str(data)),
        tokenizer,
        DataSettings(cache_dir=str(tmp_path / "fresh")),
        tokenizer.eos_token_id,
    )
    assert fresh.dataset[0]["input_ids"] == results[0]["first"] and fresh.counts == results[0]["counts"]


def test_the_second_of_two_finished_copies_is_discarded_not_mixed_in(tmp_path):
    """What protects a file system that ignores the lock: publishing is one rename, first wins."""
    target = tmp_path / "key"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "counts.json").write_text(name)
    assert publish(tmp_path / "a", target) is True
    assert publish(tmp_path / "b", target) is False
    assert (target / "counts.json").read_text() == "a" and sorted(os.listdir(target)) == ["counts.json"]


def test_a_build_that_fails_leaves_no_cache_and_the_next_one_builds(tmp_path):
    target = tmp_path / "cache" / "key"

    def half_then_crash(tmp: Path) -> None:
        (tmp / "examples").mkdir()
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        build_once(target, half_then_crash)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if ".partial-" in p.name] == []
    assert build_once(target, lambda tmp: (tmp / "counts.json").write_text("{}")) is True
    assert build_once(target, lambda tmp: pytest.fail("built twice")) is False


def test_a_rank_that_must_not_build_waits_for_the_cache(tmp_path, tokenizer):
    data = write_chat_rows(tmp_path / "rows.jsonl", sort_rows(40))
    rows = load_chat_rows(str(data))
    settings = DataSettings(train=str(data), cache_dir=str(tmp_path / "cache"))
    eos = tokenizer.eos_token_id
    builder = threading.Timer(1.0, tokenize_dataset, (rows, tokenizer, settings, eos))
    builder.start()
    waited = tokenize_dataset(rows, tokenizer, settings, eos, build=False)
    builder.join()
    assert len(waited.dataset) == 40 and waited.dataset["example_id"] == list(range(40))


def test_waiting_past_the_timeout_says_to_tokenize_first(tmp_path):
    with pytest.raises(UserError, match="not ready after 0 s") as err:
        wait_for(tmp_path / "never", 0.2, "tokenized data", poll_seconds=0.05)
    assert "dlm-sft train RECIPE --tokenize-only" in err.value.line()
