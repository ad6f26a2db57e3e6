"""Shared plumbing of the synthetic tasks: seeded distinct problems → Tulu-3-schema rows → parquet."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

Problem = Callable[[random.Random], tuple[str, str]]
"""Draws one (prompt, answer) pair from a seeded generator."""


def chat_row(source: str, prompt: str, answer: str) -> dict:
    return {
        "id": hashlib.sha1(prompt.encode()).hexdigest()[:16],
        "source": source,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
    }


def distinct_rows(
    problem: Problem, source: str, count: int, seed: int, exclude: set[str] | None = None
) -> list[dict]:
    """`count` rows with distinct prompts (none in `exclude`), drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict] = []
    misses = 0
    while len(rows) < count:
        prompt, answer = problem(rng)
        if prompt in seen:
            misses += 1
            if misses > 100 * count + 1000:
                raise ValueError(f"cannot draw {count} distinct problems for {source}")
            continue
        seen.add(prompt)
        rows.append(chat_row(source, prompt, answer))
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
    return path
