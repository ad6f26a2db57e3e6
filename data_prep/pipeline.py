"""`dlm-sft prepare`: stream every source through the filters and account for every row.

Order per row: schema/shape checks (`malformed`) → include/exclude (`excluded_source`) →
decontamination (`contaminated`) → exact dedup (`duplicate`) → token length (`too_long`, batched)
→ near dedup (`near_duplicate`). Kept rows go to `train/` or `eval/` by a seeded hash of their
id. Everything is written into a hidden sibling directory that replaces `output_dir` only when the
run succeeds, so an interrupted run leaves the old output intact and needs no clean-up.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import xxhash

from data_prep.dedup import ExactDeduper, NearDeduper
from data_prep.filters import (
    REASONS,
    Decontaminator,
    TokenCounter,
    load_eval_prompts,
    source_excluded,
)
from data_prep.recipe import Recipe, load_data_recipe
from data_prep.report import write_prep_report
from data_prep.sources import Row, adapt, count_rows, raw_json, read_batches, resolve_files, valid_text
from data_prep.writer import ParquetShardWriter, RejectWriter
from sft.errors import UserError
from sft.validation import is_hub_id

MARKER = "stats.json"


class Accounting:
    """Input, kept and dropped counts, overall and per source; the identity is checked at the end."""

    def __init__(self, names: list[str], reasons: list[str]) -> None:
        self.reasons = reasons
        self.input = Counter({n: 0 for n in names})
        self.kept = Counter({n: 0 for n in names})
        self.dropped = {n: Counter({r: 0 for r in reasons}) for n in names}
        self.details = {n: Counter() for n in names}
        self.kept_by_field: Counter = Counter()
        self.lengths = {n: array("l") for n in names}
        self.train = 0
        self.eval = 0

    def to_dict(self) -> dict[str, Any]:
        def totals(counters: list[Counter]) -> dict[str, int]:
            out: Counter = Counter({r: 0 for r in self.reasons})
            for counter in counters:
                out.update(counter)
            return dict(sorted(out.items()))

        per_source = {}
        for name in self.input:
            per_source[name] = {
                "input_rows": self.input[name],
                "kept_rows": self.kept[name],
                "dropped": dict(sorted(self.dropped[name].items())),
                "malformed_detail": dict(sorted(self.details[name].items())),
            }
        stats = {
            "input_rows": sum(self.input.values()),
            "kept_rows": sum(self.kept.values()),
            "train_rows": self.train,
            "eval_rows": self.eval,
            "dropped": totals(list(self.dropped.values())),
            "malformed_detail": totals(list(self.details.values())),
            "per_source": per_source,
            "kept_by_source_field": dict(sorted(self.kept_by_field.items())),
        }
        stats["malformed_detail"] = {k: v for k, v in stats["malformed_detail"].items() if v}
        return stats


def _resolve_sources(recipe: Recipe) -> list[list[Path] | None]:
    resolved = []
    for index, spec in enumerate(recipe.sources):
        key = f"sources.{index}.path"
        files = resolve_files(spec)
        if files is None and not is_hub_id(spec.path):
            raise UserError(f"no such file or directory: {spec.path}", file=recipe.path, key=key)
        if files == []:
            raise UserError(
                f"no data files for split '{spec.split}'"
                + (f" and config '{spec.config}'" if spec.config else "")
                + f" under {spec.path}",
                file=recipe.path,
                key=key,
                expected="data/<config>/<split>-*.parquet, data/<split>-*.parquet or "
                "parquet/jsonl/json files",
            )
        resolved.append(files)
    return resolved


def _fresh_dir(output: Path) -> Path:
    """The staging directory for this run; stale staging from an interrupted run is removed."""
    if output.exists() and (
        not output.is_dir() or (any(output.iterdir()) and not (output / MARKER).exists())
    ):
        raise UserError(
            "exists and is not a previous `dlm-sft prepare` output; refusing to replace it",
            key="output_dir",
            file=str(output),
            expected="a new or empty directory, or one written by `dlm-sft prepare`",
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial"
    old = output.parent / f".{output.name}.old"
    for stale in (staging, old):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir()
    return staging


def _publish(staging: Path, output: Path) -> None:
    old = output.parent / f".{output.name}.old"
    if output.exists():
        output.rename(old)
    staging.rename(output)
    if old.exists():
        shutil.rmtree(old)


class _Run:
    """One pass over all sources with the recipe's filters."""

    def __init__(self, recipe: Recipe, staging: Path, progress: bool) -> None:
        self.recipe = recipe
        f = recipe.filters
        reasons = ["malformed", "duplicate"] if f.exact_dedup else ["malformed"]
        reasons += ["excluded_source"] if f.include_sources or f.exclude_sources else []
        reasons += ["contaminated"] if f.decontaminate else []
        reasons += ["too_long"] if f.max_tokens is not None else []
        reasons += ["near_duplicate"] if f.near_dedup else []
        self.acc = Accounting([s.name for s in recipe.sources], sorted(reasons, key=REASONS.index))
        self.exact = ExactDeduper() if f.exact_dedup else None
        self.near = NearDeduper(f.near_dedup_threshold, f.near_dedup_num_perm) if f.near_dedup else None
        self.counter = TokenCounter(f.tokenizer, recipe.path) if f.tokenizer else None
        prompts = load_eval_prompts(f.decontaminate, recipe.path) if f.decontaminate else []
        self.decon = Decontaminator(prompts, f.decontaminate_ngram) if prompts else None
        self.train = ParquetShardWriter(staging / "train", "train", recipe.shard_rows)
        self.eval = ParquetShardWriter(staging / "eval", "eval", recipe.shard_rows)
        self.rejects = RejectWriter(staging / "rejects.parquet")
        self.eval_cut = int(recipe.eval_fraction * 2**64)
        self.progress = progress

    def _drop(
        self,
        name: str,
        reason: str,
        detail: str | None,
        raw: Any,
        row: Row | None,
        file: str,
        index: int,
        tokens: int | None = None,
    ) -> None:
        self.acc.dropped[name][reason] += 1
        if detail:
            self.acc.details[name][detail] += 1
        self.rejects.add(
            reason=reason,
            detail=detail,
            source=row.source if row else name,
            id=row.id if row else None,
            file=valid_text(file),
            row=index,
            tokens=tokens,
            raw=raw_json(raw),
        )

    def _batch(self, name: str, fmt: str, file: str, start: int, rows: list[Any]) -> None:
        f = self.recipe.filters
        survivors: list[tuple[Row, Any, int]] = []
        self.acc.input[name] += len(rows)
        for offset, raw in enumerate(rows):
            index = start + offset
            row = adapt(raw, fmt, name, check_shape=f.malformed)
            if isinstance(row, str):
                self._drop(name, "malformed", row, raw, None, file, index)
                continue
            reason = None
            if f.include_sources or f.exclude_sources:
                reason = source_excluded(row, f.include_sources, f.exclude_sources)
            if reason is None and self.decon is not None:
                reason = self.decon.check(row)
            if reason is None and self.exact is not None:
                reason = self.exact.check(row)
            if reason:
                self._drop(name, reason, None, raw, row, file, index)
                continue
            survivors.append((row, raw, index))
        if self.counter is not None:
            lengths = self.counter.count([r.messages for r, _, _ in survivors])
        else:
            lengths: list[int | None] = [sum(len(m["content"]) for m in r.messages) for r, _, _ in survivors]
        self.acc.lengths[name].extend(n for n in lengths if n is not None)
        columns: dict[str, dict[str, list]] = {
            s: {"id": [], "source": [], "messages": []} for s in ("train", "eval")
        }
        for (row, raw, index), length in zip(survivors, lengths, strict=True):
            if length is None:
                self._drop(name, "malformed", "chat_template_error", raw, row, file, index)
                continue
            if f.max_tokens is not None and length > f.max_tokens:
                self._drop(name, "too_long", None, raw, row, file, index, tokens=length)
                continue
            if self.near is not None and self.near.check(row):
                self._drop(name, "near_duplicate", None, raw, row, file, index)
                continue
            key = xxhash.xxh3_64_intdigest(f"{self.recipe.seed}\x1f{row.id}".encode())
            split = "eval" if key < self.eval_cut else "train"
            out = columns[split]
            out["id"].append(row.id)
            out["source"].append(row.source)
            out["messages"].append(row.messages)
            self.acc.kept[name] += 1
            self.acc.kept_by_field[row.source] += 1
        self.train.write(columns["train"])
        self.eval.write(columns["eval"])
        self.acc.train += len(columns["train"]["id"])
        self.acc.eval += len(columns["eval"]["id"])

    def run(self, resolved: list[list[Path] | None]) -> None:
        from tqdm import tqdm

        known = [count_rows(files) if files is not None else None for files in resolved]
        total = None if None in known else sum(k for k in known if k is not None)
        with tqdm(
            total=total,
            unit="rows",
            unit_scale=True,
            desc="prepare",
            disable=not self.progress,
            mininterval=1.0,
            file=sys.stderr,
        ) as bar:
            for index, (spec, files) in enumerate(zip(self.recipe.sources, resolved, strict=True)):
                bar.set_postfix_str(spec.name)
                key = f"sources.{index}.path"
                for batch in read_batches(spec, files, self.recipe.batch_rows, key):
                    self._batch(spec.name, spec.format, batch.file, batch.start, batch.rows)
                    bar.update(len(batch.rows))
        self.train.close()
        self.eval.close()
        self.rejects.close()


def check_identity(stats: dict[str, Any]) -> None:
    """input = kept + Σ dropped, overall and per source (a bug if not; never silently wrong)."""
    parts = [stats] + list(stats["per_source"].values())
    for part in parts:
        if part["input_rows"] != part["kept_rows"] + sum(part["dropped"].values()):
            raise AssertionError(f"row accounting does not add up: {part}")


def run_recipe(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Run a validated recipe; returns the stats dict (also written to stats.json)."""
    started = time.perf_counter()
    resolved = _resolve_sources(recipe)
    output = Path(recipe.output_dir).expanduser()
    staging = _fresh_dir(output)
    try:
        run = _Run(recipe, staging, progress)
        run.run(resolved)
        stats = run.acc.to_dict()
        stats["recipe"] = recipe.to_dict()
        stats["token_counter"] = (
            None
            if run.counter is None
            else ("chat_template" if run.counter.has_template else "chatml_fallback")
        )
        check_identity(stats)
        (staging / MARKER).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        write_prep_report(staging, stats, run.acc.lengths, recipe.filters.max_tokens)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    stats["wall_seconds"] = round(seconds, 3)
    if progress:
        print(summary(stats, output, seconds))
    return stats


def summary(stats: dict[str, Any], output: Path, seconds: float) -> str:
    """A few lines for the terminal."""
    dropped = ", ".join(f"{k} {v:,}" for k, v in stats["dropped"].items() if v) or "none"
    rate = stats["input_rows"] / seconds if seconds > 0 else 0.0
    return (
        f"prepared {stats['input_rows']:,} rows in {seconds:.1f}s ({rate:,.0f} rows/s): "
        f"kept {stats['kept_rows']:,} (train {stats['train_rows']:,}, eval {stats['eval_rows']:,})"
        f"; dropped {dropped}\n"
        f"output: {output} (report.md, stats.json, rejects.parquet, train/, eval/)"
    )


def prepare(
    recipe_path: str, overrides: list[str] | tuple[str, ...] = (), progress: bool = True
) -> dict[str, Any]:
    """Entry point of `dlm-sft prepare RECIPE.yaml [key=value ...]`; returns the stats dict."""
    return run_recipe(load_data_recipe(recipe_path, overrides), progress=progress)
