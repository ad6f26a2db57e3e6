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


HELD_OUT_FRACTION = 0.2
"""Share of a task's answer keys (Sudoku solution grids, Countdown targets) reserved for eval."""


def is_held_out(key: str) -> bool:
    """Is this answer key in the eval-only part? A fixed hash split, the same on every machine."""
    digest = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return digest < HELD_OUT_FRACTION * 16**8


def distinct_rows(
    problem: Problem,
    source: str,
    count: int,
    seed: int,
    exclude: set[str] | None = None,
    accept: Callable[[str, str], bool] | None = None,
) -> list[dict]:
    """`count` rows with distinct prompts (none in `exclude`, each `accept(prompt, answer)`ed),
    drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict] = []
    misses = 0
    while len(rows) < count:
        prompt, answer = problem(rng)
        if prompt in seen or (accept is not None and not accept(prompt, answer)):
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
