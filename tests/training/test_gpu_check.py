"""`benchmarks/gpu_check.py --smoke`: every GPU check's code path at toy size on the CPU."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_runs_every_check_and_prints_one_line_each(tmp_path):
    """Run as on a GPU machine: from another directory, `sft` found from the checkout itself."""
    env = {"OMP_NUM_THREADS": "2", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    checks = [
        line
        for line in lines
        if line.split(" ", 1)[0] in ("probe", "control", "throughput", "baseline", "block", "e2e")
    ]
    assert [line.split(" ", 2)[:2] for line in checks] == [
        ["probe", "attn=sdpa"],
        ["probe", "attn=torch_varlen"],
        ["control", "causal_model"],
        ["control", "causal_model"],
        ["throughput", "diffusion"],
        ["baseline", "ar_full_logits"],
        ["block", "flex_attention_vs_sdpa"],
        ["e2e", "dream_tiny"],
    ]
    assert all(line.endswith(" PASS") for line in checks)
    assert re.search(r"first_moved>=[1-9]\S+ others_moved<=0\.0e\+00 PASS$", checks[1])
    assert re.search(
        r"attn=torch_varlen .* first_moved>=0\.0e\+00 .* probe=FAIL\(expected\) PASS$", checks[3]
    )
    assert re.search(r"diffusion/ar_tok_s=[\d.]+ PASS$", checks[5])
    assert re.search(r"block_size=4 .* loss_err=\d\.\de[-+]\d+ grad_err=nan step_ms", checks[6])
    assert re.search(r"packed train steps=2 loss=[\d.]+ export generate=", checks[7])
    assert re.match(r"summary .* checks=8 passed=8 failed=0 .* PASS$", lines[-1])


def test_the_probe_fails_when_packed_documents_leak_into_each_other(monkeypatch):
    """Positive control of the leak side: packed rows given the plain padding mask (no document
    boundaries) attend across documents; the probe must say so."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look themselves up there
    spec.loader.exec_module(gpu_check)

    def leaking(batch, attn_implementation, dtype):
        return {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}

    monkeypatch.setattr(gpu_check, "attention_inputs", leaking)
    line, ok = next(gpu_check.check_probes(gpu_check.SMOKE, ["sdpa"], "cpu"))
    assert line.startswith("probe attn=sdpa") and not ok
    assert float(re.search(r"others_moved<=(\S+)", line).group(1)) > gpu_check.STILL
