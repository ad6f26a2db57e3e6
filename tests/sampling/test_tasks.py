"""The bundled synthetic tasks: generators, difficulty levels, split files and validity scorers."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from sft.tasks import countdown, sort_digits, sudoku
from sft.tasks.__main__ import main as tasks_main
from sft.tasks.registry import NAMES, TASKS, task_for_source


@pytest.mark.parametrize("source", sorted(TASKS))
def test_every_level_of_every_task_scores_its_reference_answers_correct(source):
    task = TASKS[source]
    for level in task.levels:
        rows = task.rows(20, 0, level, None)
        assert len({r["messages"][0]["content"] for r in rows}) == 20
        for row in rows:
            assert row["source"] == source
            prompt, answer = (m["content"] for m in row["messages"])
            assert task.score(prompt, answer), (prompt, answer)
            assert not task.score(prompt, "")


def test_registry_easy_sort_level_is_the_quickstart_data():
    assert TASKS[sort_digits.SOURCE].rows(50, 3, "easy", None) == sort_digits.make_rows(50, 3)
    assert task_for_source("dlm-sft/sort_digits") is TASKS[sort_digits.SOURCE]
    assert task_for_source("allenai/tulu") is None and task_for_source(None) is None


def test_countdown_levels_set_how_many_numbers_are_given():
    for level, count in countdown.LEVELS.items():
        prompt, answer = countdown.make_problem(random.Random(1), count)
        target, given = countdown.parse_prompt(prompt)
        assert len(given) == count and len(answer.split(",")) == count - 1
        assert 0 < target <= countdown.MAX_TARGET, level


def test_countdown_scorer_accepts_any_valid_derivation_and_rejects_invalid_ones():
    prompt = "Countdown: reach 25 with 3 7 4"
    assert countdown.score(prompt, "7*3=21,21+4=25")
    assert countdown.score(prompt, "3*7=21,4+21=25")  # another order, same numbers
    assert countdown.score(prompt, " 7 * 3 = 21 , 21 + 4 = 25 ")
    assert not countdown.score(prompt, "7*3=21,21+4=26")  # wrong target
    assert not countdown.score(prompt, "7*3=22,22+3=25")  # wrong arithmetic, 3 reused
    assert not countdown.score(prompt, "7*3=21,21+4=25,25-0=25")  # 0 was never given
    assert not countdown.score(prompt, "7*4=28,28-3=25,25*1=25")  # 1 not given
    assert not countdown.score("Countdown: reach 21 with 3 7 4", "7*3=21")  # 4 unused
    assert countdown.score("Countdown: reach 4 with 8 2", "8/2=4")
    assert not countdown.score("Countdown: reach 2 with 5 2", "5/2=2")  # not exact
    assert not countdown.score(prompt, "twenty-five")


def test_sudoku_levels_set_the_number_of_blanks_and_grids_are_valid():
    for size, levels in sudoku.LEVELS.items():
        for blanks in levels.values():
            prompt, answer = sudoku.make_problem(random.Random(2), size, blanks)
            grid_text = "\n".join(prompt.splitlines()[1:])
            assert grid_text.count("0") == blanks
            puzzle = sudoku.parse_grid(grid_text, size)
            assert sudoku.is_solution(sudoku.parse_grid(answer, size), puzzle)


def test_sudoku_scorer_checks_validity_and_givens_not_string_equality():
    prompt = "Solve this 4x4 sudoku (0 = blank):\n0000\n0000\n0000\n0000"
    assert sudoku.score(prompt, "1234\n3412\n2143\n4321")
    assert sudoku.score(prompt, "2143\n4321\n1234\n3412")  # any valid grid fits an empty puzzle
    assert not sudoku.score(prompt, "1234\n3412\n2143\n4312")  # column and box repeat
    assert not sudoku.score(prompt, "1234\n2341\n3412\n4123")  # rows/columns fine, boxes not
    assert not sudoku.score(prompt, "1234\n3412\n2143")  # too short
    given = "Solve this 4x4 sudoku (0 = blank):\n1000\n0000\n0000\n0000"
    assert sudoku.score(given, "1234\n3412\n2143\n4321")
    assert not sudoku.score(given, "2143\n4321\n1234\n3412")  # changes the given 1


def test_split_files_are_deterministic_and_hold_no_eval_prompt_in_train(tmp_path):
    assert (
        tasks_main(
            ["sudoku_4x4", str(tmp_path / "a"), "--level", "hard", "--train-rows", "60", "--eval-rows", "10"]
        )
        == 0
    )
    tasks_main(
        ["sudoku_4x4", str(tmp_path / "b"), "--level", "hard", "--train-rows", "60", "--eval-rows", "10"]
    )
    train = pq.read_table(tmp_path / "a" / "train.parquet").to_pylist()
    held_out = pq.read_table(tmp_path / "a" / "eval.parquet").to_pylist()
    assert len(train) == 60 and len(held_out) == 10
    prompts = {r["messages"][0]["content"] for r in train}
    assert not prompts & {r["messages"][0]["content"] for r in held_out}
    assert (tmp_path / "a" / "train.parquet").read_bytes() == (tmp_path / "b" / "train.parquet").read_bytes()
    assert set(NAMES) == {"sort_digits", "countdown", "sudoku_4x4", "sudoku_9x9"}


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("sudoku_4x4", lambda prompt, answer: answer),  # the solution grid
        ("countdown", lambda prompt, answer: countdown.parse_prompt(prompt)[0]),  # the target
    ],
)
def test_no_eval_solution_or_target_ever_appears_in_training(name, key, tmp_path):
    tasks_main([name, str(tmp_path), "--level", "medium", "--train-rows", "400", "--eval-rows", "60"])
    keys = {
        split: {
            key(*(m["content"] for m in r["messages"]))
            for r in pq.read_table(tmp_path / f"{split}.parquet").to_pylist()
        }
        for split in ("train", "eval")
    }
    assert keys["eval"] and keys["train"] and not keys["eval"] & keys["train"]
    if name == "sudoku_4x4":  # the generator reaches 96 grids: about a fifth are eval-only
        assert 10 <= len(keys["eval"]) <= 35 and len(keys["train"]) > 60
