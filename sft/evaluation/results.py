"""lm-eval results files of a checkpoint: where `dlm-sft eval --tasks` (sft/evaluation/harness.py)
puts them, reading them back and one line per metric. Plain JSON: nothing here needs lm-eval
installed, so `dlm-sft report` (sft/report.py) lists a run's results without it.

A run or export directory keeps its files in `eval/lm_eval_<UTC time>.json` (see `default_output`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = "eval"
PATTERN = "lm_eval_*.json"


def default_output(checkpoint: str | Path) -> Path:
    """CHECKPOINT/eval/lm_eval_<UTC time>.json for a local directory; for a hub id (whose cached
    snapshot is not ours to write into) ./eval/<org>__<name>/lm_eval_<UTC time>.json."""
    name = time.strftime("lm_eval_%Y%m%dT%H%M%SZ.json", time.gmtime())
    local = Path(checkpoint)
    if local.is_dir():
        return local / RESULTS_DIR / name
    return Path(RESULTS_DIR) / str(checkpoint).replace("/", "__") / name


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """lm-eval's results dict as JSON (what json cannot encode, as text)."""
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return output


def results_files(directory: str | Path) -> list[Path]:
    """The checkpoint's results files, oldest first (the names sort by time)."""
    return sorted((Path(directory) / RESULTS_DIR).glob(PATTERN))


def metrics(results: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, stderr or None) for every numeric metric of a results dict."""
    rows = []
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            name, _, filter_name = key.partition(",")
            if not filter_name or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            error = values.get(f"{name}_stderr,{filter_name}")
            label = name if filter_name == "none" else f"{name} ({filter_name})"
            rows.append(
                (task, label, float(value), float(error) if isinstance(error, (int, float)) else None)
            )
    return rows


def metric_lines(results: dict[str, Any]) -> list[str]:
    """`task metric: value ± stderr`, one per metric."""
    lines = []
    for task, name, value, error in metrics(results):
        spread = "" if error is None else f" ± {error:.4f}"
        lines.append(f"{task} {name}: {value:.4f}{spread}")
    return lines
