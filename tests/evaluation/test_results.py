"""lm-eval results files: where they go by default, and one line per metric with its error."""

from __future__ import annotations

from sft.evaluation.results import default_output, metric_lines, results_files, write_results


def test_results_go_beside_a_local_checkpoint_and_under_eval_for_a_hub_id(tmp_path, monkeypatch):
    local = default_output(tmp_path)
    assert local.parent == tmp_path / "eval" and local.name.startswith("lm_eval_") and local.suffix == ".json"
    monkeypatch.chdir(tmp_path)
    hub = default_output("Dream-org/Dream-v0-Instruct-7B")
    assert hub.parent.as_posix() == "eval/Dream-org__Dream-v0-Instruct-7B"


def test_metric_lines_skip_stderr_entries_and_name_filters(tmp_path):
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.05,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A",
            }
        }
    }
    assert metric_lines(results) == [
        "gsm8k exact_match (strict-match): 0.2500 ± 0.0500",
        "gsm8k exact_match (flexible-extract): 0.5000",
    ]
    written = write_results(results, default_output(tmp_path))
    assert results_files(tmp_path) == [written]
