"""The bundled synthetic tasks by `source` id: how to draw their rows and how to score answers.

A data row whose `source` names a task here gets exact-match accuracy from `dlm-sft eval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sft.tasks import countdown, sort_digits, sudoku
from sft.tasks.common import distinct_rows, write_rows


@dataclass(frozen=True)
class Task:
    source: str
    levels: tuple[str, ...]
    score: Callable[[str, str], bool]  # (prompt, completion) -> correct?
    rows: Callable[[int, int, str, set[str] | None], list[dict]]  # (count, seed, level, exclude)

    def write_split_files(
        self, directory: str | Path, level: str, train_rows: int = 20000, eval_rows: int = 256, seed: int = 0
    ) -> tuple[Path, Path]:
        """`train.parquet` and a held-out `eval.parquet` (no prompt in both) under `directory`."""
        directory = Path(directory)
        held_out = self.rows(eval_rows, seed + 1, level, None)
        train = self.rows(train_rows, seed, level, {r["messages"][0]["content"] for r in held_out})
        return write_rows(directory / "train.parquet", train), write_rows(
            directory / "eval.parquet", held_out
        )


SORT_LEVELS = {"easy": (4, 8), "hard": (10, 16)}  # digits per problem; easy is the quickstart's


def _sort_rows(count: int, seed: int, level: str, exclude: set[str] | None) -> list[dict]:
    low, high = SORT_LEVELS[level]
    return sort_digits.make_rows(count, seed, low, high, exclude=exclude)


def _countdown_rows(count: int, seed: int, level: str, exclude: set[str] | None) -> list[dict]:
    return distinct_rows(countdown.problem(level), countdown.SOURCE, count, seed, exclude)


def _sudoku_rows(size: int) -> Callable[[int, int, str, set[str] | None], list[dict]]:
    def rows(count: int, seed: int, level: str, exclude: set[str] | None) -> list[dict]:
        return distinct_rows(sudoku.problem(size, level), sudoku.SOURCES[size], count, seed, exclude)

    return rows


TASKS: dict[str, Task] = {
    task.source: task
    for task in (
        Task(sort_digits.SOURCE, tuple(SORT_LEVELS), sort_digits.score, _sort_rows),
        Task(countdown.SOURCE, tuple(countdown.LEVELS), countdown.score, _countdown_rows),
        Task(sudoku.SOURCES[4], tuple(sudoku.LEVELS[4]), sudoku.score, _sudoku_rows(4)),
        Task(sudoku.SOURCES[9], tuple(sudoku.LEVELS[9]), sudoku.score, _sudoku_rows(9)),
    )
}

NAMES = {source.split("/", 1)[1]: source for source in TASKS}
"""Short names (`sort_digits`, `countdown`, `sudoku_4x4`, `sudoku_9x9`) → source ids."""


def task_for_source(source: str | None) -> Task | None:
    return TASKS.get(source or "")
