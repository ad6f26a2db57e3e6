"""`dlm-sft`: the command line. Thin: parse, call the library, turn user errors into one line.

    dlm-sft train RECIPE.yaml [section.key=value ...] [--dry-run]
    dlm-sft prepare DATA_RECIPE.yaml [key=value ...]
    dlm-sft quickstart [--recipe RECIPE.yaml] [section.key=value ...]

A `UserError` (bad recipe, missing file, bad data) prints `error: <one line>` and exits with 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm-sft", description="SFT for masked diffusion LMs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a recipe YAML")
    train.add_argument("recipe")
    train.add_argument("overrides", nargs="*", help="section.key=value")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, dataset size and step counts, then exit",
    )

    prepare = commands.add_parser("prepare", help="prepare a chat data set from a data recipe")
    prepare.add_argument("recipe")
    prepare.add_argument("overrides", nargs="*", help="key=value")

    quick = commands.add_parser("quickstart", help="train the bundled tiny model on the sort task")
    quick.add_argument("--recipe", default=None, help="default: recipes/quickstart/sort_digits.yaml")
    quick.add_argument("overrides", nargs="*", help="section.key=value")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "prepare":
        from data_prep.pipeline import prepare

        prepare(args.recipe, args.overrides)
        return 0

    from sft.recipe import load_recipe

    if args.command == "quickstart":
        from sft.quickstart import DEFAULT_RECIPE, run_quickstart

        config = load_recipe(args.recipe or DEFAULT_RECIPE, args.overrides)
        untrained, trained = run_quickstart(config)
        print(f"accuracy: untrained={untrained:.3f} trained={trained:.3f}")
        return 0

    config = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        from sft.train import describe, prepare_data

        print(describe(config, prepare_data(config)))
        return 0
    from sft.train import train

    train(config)
    print(f"saved to {config.training.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sft.errors import UserError

    try:
        return _run(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err.line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
