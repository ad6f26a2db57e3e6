"""The planning comparison runs end to end at a tiny size: both sides at both budgets, one table."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import REPO


def test_planning_comparison_quick_mode_prints_both_sides_at_both_budgets(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "planning_comparison.py"),
            "--quick",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the recipe and its bundled model resolve from any directory
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"budget 2: best diffusion [01]\.\d{3} \(.+; .+\) vs AR [01]\.\d{3}", lines[-2])
    assert re.fullmatch(r"budget 3: best diffusion [01]\.\d{3} \(.+; .+\) vs AR [01]\.\d{3}", lines[-1])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["budgets"]) == {"2", "3"}
    swept, later = results["budgets"]["2"]["diffusion"], results["budgets"]["3"]["diffusion"]
    # the best plain setting goes on, and the block-diffusion side runs at both budgets
    assert len(swept) == 3 and len(later) == 2 and set(later) <= set(swept)
    assert "block=4 tail=first_n(4) inv_t t_min=0.2" in later
    assert all(len(run["accuracy"]) == 4 for run in swept.values())  # every decoder scored
