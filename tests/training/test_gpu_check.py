"""`benchmarks/gpu_check.py --smoke`: every GPU check's code path at toy size on the CPU."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import sft.training.trainer
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_runs_every_check_and_prints_one_line_each(tmp_path):
    env = {"OMP_NUM_THREADS": "2", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line[0]: line for line in proc.stdout.splitlines() if re.match(r"[a-e] ", line)}
    assert sorted(lines) == list("abcde")
    assert re.search(r"sdpa: loss_rel_diff=\S+ hidden_rel_err=\S+ tol=0.02 PASS$", lines["a"])
    assert re.search(r"pack_tok_s=\d+ pad_tok_s=\d+ pack/pad=[\d.]+$", lines["b"])
    assert "model_tflops=" in lines["c"] and re.search(r"plan=[\d.]+GiB", lines["d"])
    assert re.search(r"lora_losses=[\d.]+,[\d.]+ full_losses=[\d.]+,[\d.]+ PASS$", lines["e"])


def test_the_parity_check_fails_when_documents_leak_into_each_other(monkeypatch, tmp_path):
    """Positive control: a packed batch given the plain 2-D padding mask lets documents attend to
    each other; check (a) must say FAIL."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look themselves up there
    spec.loader.exec_module(gpu_check)

    def leaking(batch, attn_implementation, dtype):
        return {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}

    monkeypatch.setattr(sft.training.trainer, "attention_inputs", leaking)
    monkeypatch.setattr(gpu_check, "attention_inputs", leaking)
    line = next(gpu_check.check_throughput(gpu_check.SMOKE, "cpu", "sdpa", "cpu", tmp_path))
    assert line.startswith("a ") and line.endswith("FAIL")
