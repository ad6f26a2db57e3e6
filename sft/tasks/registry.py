"""The bundled synthetic tasks by `source` id: how to draw their rows and how to score answers.

A data row whose `source` names a task here gets exact-match accuracy from `dlm-sft eval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sft.tasks import countdown, sort_digits, sudoku
from sft.tasks.common import Problem, distinct_rows, is_held_out, write_rows

Rows = Callable[[int, int, str, set[str] | None, Callable[[str, str], bool] | None], list[dict]]
"""(count, seed, level, prompts to exclude, accept(prompt, answer)) -> rows."""


@dataclass(frozen=True)
class Task:
    """A bundled task. With an `answer_key` (prompt, answer) -> key, the held-out split is by key:
    eval rows use only held-out keys and training rows never do, so no eval solution (Sudoku grid,
    Countdown target) is ever seen in training; without one, only eval prompts are kept out."""

    source: str
    levels: tuple[str, ...]
    score: Callable[[str, str], bool]  # (prompt, completion) -> correct?
    rows: Rows
    answer_key: Callable[[str, str], str] | None = None

    def write_split_files(
        self, directory: str | Path, level: str, train_rows: int = 20000, eval_rows: int = 256, seed: int = 0
    ) -> tuple[Path, Path]:
        """`train.parquet` and a held-out `eval.parquet` (no prompt, nor answer key, in both)."""
        directory = Path(directory)
        key = self.answer_key
        in_eval = None if key is None else (lambda prompt, answer: is_held_out(key(prompt, answer)))
        in_train = None if key is None else (lambda prompt, answer: not is_held_out(key(prompt, answer)))
        held_out = self.rows(eval_rows, seed + 1, level, None, in_eval)
        train = self.rows(train_rows, seed, level, {r["messages"][0]["content"] for r in held_out}, in_train)
        return write_rows(directory / "train.parquet", train), write_rows(
            directory / "eval.parquet", held_out
        )


SORT_LEVELS = {"easy": (4, 8), "hard": (10, 16)}  # digits per problem; easy is the quickstart's


def _sort_rows(
    count: int, seed: int, level: str, exclude: set[str] | None, accept: None = None
) -> list[dict]:
    low, high = SORT_LEVELS[level]
    return sort_digits.make_rows(count, seed, low, high, exclude=exclude)


def _drawn_rows(problem_at: Callable[[str], Problem], source: str) -> Rows:
    """Rows of distinct problems drawn from `problem_at(level)`."""

    def rows(
        count: int,
        seed: int,
        level: str,
        exclude: set[str] | None,
        accept: Callable[[str, str], bool] | None = None,
    ) -> list[dict]:
        return distinct_rows(problem_at(level), source, count, seed, exclude, accept)

    return rows


def _countdown_target(prompt: str, answer: str) -> str:
    return str(countdown.parse_prompt(prompt)[0])


def _sudoku_solution(prompt: str, answer: str) -> str:
    return answer


TASKS: dict[str, Task] = {
    task.source: task
    for task in (
        Task(sort_digits.SOURCE, tuple(SORT_LEVELS), sort_digits.score, _sort_rows),
        Task(
            countdown.SOURCE,
            tuple(countdown.LEVELS),
            countdown.score,
            _drawn_rows(countdown.problem, countdown.SOURCE),
            _countdown_target,
        ),
        Task(
            sudoku.SOURCES[4],
            tuple(sudoku.LEVELS[4]),
            sudoku.score,
            _drawn_rows(lambda level: sudoku.problem(4, level), sudoku.SOURCES[4]),
            _sudoku_solution,
        ),
        Task(
            sudoku.SOURCES[9],
            tuple(sudoku.LEVELS[9]),
            sudoku.score,
            _drawn_rows(lambda level: sudoku.problem(9, level), sudoku.SOURCES[9]),
            _sudoku_solution,
        ),
    )
}

NAMES = {source.split("/", 1)[1]: source for source in TASKS}
"""Short names (`sort_digits`, `countdown`, `sudoku_4x4`, `sudoku_9x9`) → source ids."""


def task_for_source(source: str | None) -> Task | None:
    return TASKS.get(source or "")
