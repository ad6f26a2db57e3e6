"""`dlm-sft prepare DATA_RECIPE.yaml [key=value ...]`: a chat data set from a data recipe (`data_prep/`)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    prepare = commands.add_parser("prepare", help="prepare a chat data set from a data recipe")
    prepare.add_argument("recipe")
    prepare.add_argument("overrides", nargs="*", help="key=value")
    return prepare


def run(args: argparse.Namespace) -> int:
    from data_prep.pipeline import prepare

    prepare(args.recipe, args.overrides)
    return 0
