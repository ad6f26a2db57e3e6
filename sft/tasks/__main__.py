"""Write a bundled task's train/eval files: `python -m sft.tasks NAME DIRECTORY [--level ...]`.

    python -m sft.tasks countdown data/countdown --level medium
    dlm-sft train recipes/quickstart/sort_digits.yaml data.train=data/countdown/train.parquet \
        data.eval=data/countdown/eval.parquet data.max_length=64
"""

from __future__ import annotations

import argparse
import sys

from sft.tasks.registry import NAMES, TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(NAMES))
    parser.add_argument("directory")
    parser.add_argument("--level", default="easy", help="easy, medium or hard (sort_digits: easy, hard)")
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    task = TASKS[NAMES[args.name]]
    if args.level not in task.levels:
        parser.error(f"level {args.level!r} of {args.name}: expected one of {', '.join(task.levels)}")
    for path in task.write_split_files(
        args.directory, args.level, args.train_rows, args.eval_rows, args.seed
    ):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
