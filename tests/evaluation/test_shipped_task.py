"""The lm-eval task shipped for the quickstart reads the bundled eval rows as prompt and answer."""

from __future__ import annotations

import os
from pathlib import Path

from lm_eval.tasks import TaskManager

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_sort_digits_task_reads_the_quickstart_eval_rows(monkeypatch):
    monkeypatch.chdir(REPO)  # its data_files path is relative to the repository root
    manager = TaskManager(include_path=str(REPO / "recipes" / "eval_tasks"), include_defaults=False)
    task = manager.load(["dlm_sort_digits"])["tasks"]["dlm_sort_digits"]
    docs = list(task.test_docs())
    assert len(docs) == 256 and os.path.isfile("recipes/quickstart/data/eval.parquet")
    first = docs[0]
    prompt, answer = task.doc_to_text(first), task.doc_to_target(first)
    assert prompt.startswith("Sort ") and answer == "".join(sorted(prompt.removeprefix("Sort ")))
    assert task.config.generation_kwargs["until"] == ["<|im_end|>"]
