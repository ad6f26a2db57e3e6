"""The quickstart's shipped assets are reproducible and its command runs end to end."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from sft.cli import main
from sft.tasks import assets, sort_digits
from tests.conftest import QUICKSTART_MODEL, REPO


def test_shipped_tokenizer_and_config_rebuild_identically(tmp_path):
    assets.write_assets(tmp_path)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / name).read_text() == (QUICKSTART_MODEL / name).read_text(), name


def test_shipped_task_data_regenerates_identically(tmp_path):
    train, held_out = sort_digits.write_split_files(tmp_path)
    shipped = REPO / "recipes" / "quickstart" / "data"
    assert pq.read_table(train).to_pylist() == pq.read_table(shipped / "train.parquet").to_pylist()
    assert pq.read_table(held_out).to_pylist() == pq.read_table(shipped / "eval.parquet").to_pylist()
    train_prompts = {r["messages"][0]["content"] for r in pq.read_table(train).to_pylist()}
    assert not train_prompts & {r["messages"][0]["content"] for r in pq.read_table(held_out).to_pylist()}


def test_scorer_is_exact_match():
    assert sort_digits.score("Sort 3912", "1239")
    assert sort_digits.score("Sort 3912", " 1239\n")
    assert not sort_digits.score("Sort 3912", "123")


def test_quickstart_command_prints_both_accuracies(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(
        [
            "quickstart",
            "--recipe",
            "recipes/quickstart/sort_digits.yaml",
            "training.max_steps=10",
            f"training.output_dir={tmp_path}",
            "training.disable_tqdm=true",
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("accuracy: untrained=") and " trained=" in last
    assert json.loads((tmp_path / "config.json").read_text())["dlm_family"] == "ar"
    assert (tmp_path / "base" / "model.safetensors").is_file()
