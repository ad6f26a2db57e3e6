"""`dlm-sft`: the command line. Thin: parse, call the library, turn user errors into one line.

Each command is one module of this folder with `add_parser(subparsers)` and `run(args) -> int`,
listed once in `COMMANDS`; the parser records which `run` a command line calls, so no command can
fall through to another. Command modules import the library inside `run`, so `--help` and usage
errors answer without loading torch.

A `UserError` (bad recipe, missing file, bad data) prints `error: <one line>` and exits with 2 (130
after Ctrl-C);
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import typing

from sft.cli import evaluate, export, generate, plan, prepare, quickstart, report, train
from sft.errors import UserError
from sft.notices import quiet_deepspeed_cpu_notice

COMMANDS = (train, prepare, quickstart, generate, evaluate, export, plan, report)
"""Every `dlm-sft` command, in the order `--help` lists them."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage mistakes reported like every other user error: one line, exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlm-sft", description="SFT for masked diffusion LMs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(run=command.run)
    return parser


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv`, taking `key=value` overrides anywhere on the line, before or after flags."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    quiet_deepspeed_cpu_notice()
    try:
        return args.run(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err.line()}", file=sys.stderr)
        return err.exit_code
