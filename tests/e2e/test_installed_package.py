"""A built wheel carries the recipes: `plan` and the recipe paths resolve from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_recipes_and_plans_from_another_directory(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for shipped in (
        "sft/recipes/quickstart/sort_digits.yaml",
        "sft/recipes/quickstart/model/tokenizer.json",
        "sft/recipes/quickstart/data/train.parquet",
        "sft/recipes/accelerate/zero3.yaml",
        "sft/recipes/data/tulu3_smoltalk.yaml",
        "sft/recipes/dream-7b/sft_lora.yaml",
    ):
        assert shipped in names
    # the import hook that makes `lm_eval --model dlm` work sits at site-packages' top level
    hook = (REPO / "sft" / "evaluation" / "dlm_sft_lm_eval.pth").read_text()
    assert (tmp_path / "site" / "dlm_sft_lm_eval.pth").read_text() == hook
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    run = subprocess.run(
        [sys.executable, "-m", "sft.cli", "plan", "recipes/quickstart/sort_digits.yaml"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert str(tmp_path / "site" / "sft" / "recipes" / "quickstart" / "model") in run.stdout
    assert "train examples" in run.stdout
