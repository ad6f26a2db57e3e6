"""Sudoku, 4x4 and 9x9: fill the blanks (0) so every row, column and box holds each digit once.

    user:      "Solve this 4x4 sudoku (0 = blank):\n1030\n0012\n2401\n3020"
    assistant: "1234\n4312\n2431\n3124"

A constraint-satisfaction task diffusion LMs are known to plan better than autoregressive ones
(Dream 7B). Grids are a base pattern shuffled by digit relabelling and row/column/band/stack
permutations; the blanks are drawn at random, so a puzzle may have several solutions. `score`
accepts any valid grid that keeps the givens. Levels set the number of blanks.
"""

from __future__ import annotations

import math
import random

SOURCES = {4: "dlm-sft/sudoku_4x4", 9: "dlm-sft/sudoku_9x9"}
LEVELS = {
    4: {"easy": 4, "medium": 6, "hard": 8},
    9: {"easy": 30, "medium": 40, "hard": 50},
}


def solved_grid(rng: random.Random, size: int) -> list[list[int]]:
    box = math.isqrt(size)
    pattern = [[(box * (r % box) + r // box + c) % size for c in range(size)] for r in range(size)]

    def order() -> list[int]:  # bands (stacks) in random order, rows (columns) shuffled within each
        bands = rng.sample(range(box), box)
        return [band * box + i for band in bands for i in rng.sample(range(box), box)]

    rows, cols, digits = order(), order(), rng.sample(range(1, size + 1), size)
    return [[digits[pattern[r][c]] for c in cols] for r in rows]


def render(grid: list[list[int]]) -> str:
    return "\n".join("".join(map(str, row)) for row in grid)


def make_problem(rng: random.Random, size: int = 4, blanks: int = 6) -> tuple[str, str]:
    solution = solved_grid(rng, size)
    puzzle = [row[:] for row in solution]
    for cell in rng.sample(range(size * size), blanks):
        puzzle[cell // size][cell % size] = 0
    return f"Solve this {size}x{size} sudoku (0 = blank):\n{render(puzzle)}", render(solution)


def problem(size: int, level: str = "easy") -> object:
    blanks = LEVELS[size][level]
    return lambda rng: make_problem(rng, size, blanks)


def parse_grid(text: str, size: int) -> list[list[int]] | None:
    rows = text.split()
    if len(rows) != size or any(len(r) != size or not r.isdigit() for r in rows):
        return None
    return [[int(ch) for ch in row] for row in rows]


def is_solution(grid: list[list[int]], puzzle: list[list[int]]) -> bool:
    size, box = len(puzzle), math.isqrt(len(puzzle))
    digits = set(range(1, size + 1))
    groups = [set(row) for row in grid] + [set(col) for col in zip(*grid)]
    groups += [
        {grid[r][c] for r in range(br, br + box) for c in range(bc, bc + box)}
        for br in range(0, size, box)
        for bc in range(0, size, box)
    ]
    keeps_givens = all(g in (0, v) for prow, row in zip(puzzle, grid) for g, v in zip(prow, row))
    return keeps_givens and all(group == digits for group in groups)


def score(prompt: str, completion: str) -> bool:
    """The completion is a valid solved grid that keeps every given digit of the prompt."""
    lines = prompt.strip().splitlines()[1:]
    puzzle = parse_grid("\n".join(lines), len(lines))
    if puzzle is None:
        raise ValueError(f"not a sudoku prompt: {prompt!r}")
    grid = parse_grid(completion, len(puzzle))
    return grid is not None and is_solution(grid, puzzle)
