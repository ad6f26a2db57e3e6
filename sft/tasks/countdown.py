"""Countdown: combine the given numbers with + - * / to reach a target. A planning task.

    user:      "Countdown: reach 25 with 3 7 4"
    assistant: "7*3=21,21+4=25"

Every number is used exactly once; each step combines two available numbers (given or earlier
results) into an exact non-negative integer. The answer has to be planned backwards from the
target, which is where diffusion LMs beat autoregressive ones of the same size (Ye et al., 2024;
Dream 7B). `score` checks validity, not string equality: any correct derivation counts.
Levels set how many numbers are given (easy 3, medium 4, hard 5).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

SOURCE = "dlm-sft/countdown"
LEVELS = {"easy": 3, "medium": 4, "hard": 5}
MAX_NUMBER = 20  # the given numbers are 1..MAX_NUMBER
MAX_TARGET = 999
_STEP = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")
_PROMPT = re.compile(r"reach (\d+) with ([\d ]+)$")


def _apply(a: int, op: str, b: int) -> Fraction | None:
    if op == "+":
        return Fraction(a + b)
    if op == "-":
        return Fraction(a - b)
    if op == "*":
        return Fraction(a * b)
    return Fraction(a, b) if b else None


def make_problem(rng: random.Random, numbers: int = 3) -> tuple[str, str]:
    """A random derivation over `numbers` given numbers; its final result is the target."""
    while True:
        given = [rng.randint(1, MAX_NUMBER) for _ in range(numbers)]
        pool, steps = list(given), []
        while len(pool) > 1:
            a, b = sorted(rng.sample(pool, 2), reverse=True)
            pool.remove(a)
            pool.remove(b)
            ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b > 1 and a % b == 0 else [])
            op = rng.choice(ops)
            result = int(_apply(a, op, b))
            steps.append(f"{a}{op}{b}={result}")
            pool.append(result)
        if 0 < pool[0] <= MAX_TARGET:
            return f"Countdown: reach {pool[0]} with {' '.join(map(str, given))}", ",".join(steps)


def problem(level: str = "easy") -> object:
    numbers = LEVELS[level]
    return lambda rng: make_problem(rng, numbers)


def parse_prompt(prompt: str) -> tuple[int, list[int]]:
    match = _PROMPT.search(prompt.strip())
    if match is None:
        raise ValueError(f"not a countdown prompt: {prompt!r}")
    return int(match.group(1)), [int(n) for n in match.group(2).split()]


def score(prompt: str, completion: str) -> bool:
    """Valid derivation: every step exact, operands available, all numbers used, target reached."""
    target, given = parse_prompt(prompt)
    pool = Counter(given)
    for step in completion.strip().split(","):
        match = _STEP.match(step)
        if match is None:
            return False
        a, op, b, result = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        if _apply(a, op, b) != result:
            return False
        for operand in (a, b):
            if pool[operand] == 0:
                return False
            pool[operand] -= 1
        pool[result] += 1
    return +pool == Counter([target])
