"""`dlm-sft`: the command line. Thin: parse, call the library, turn user errors into one line.

    dlm-sft train RECIPE.yaml [section.key=value ...] [--dry-run | --tokenize-only]
    dlm-sft train RECIPE.yaml [...] --accelerate ddp|fsdp|zero2|zero3|CFG [--num-processes N] [--print-launch]
    dlm-sft prepare DATA_RECIPE.yaml [key=value ...]
    dlm-sft quickstart [--recipe RECIPE.yaml] [section.key=value ...]
    dlm-sft generate CHECKPOINT --prompt TEXT [--interactive] [sampler options]
    dlm-sft eval CHECKPOINT RECIPE_OR_DATA [section.key=value ...] [--ar-baseline] [sampler options]
    dlm-sft export RUN_OR_CHECKPOINT --output DIR [--format auto|dream|llada|native] [--adapter NAME]
    dlm-sft plan RECIPE.yaml [section.key=value ...] [--engine ddp|fsdp|zero2|zero3] [--num-gpus N]
                 [--gpu-mem 24GiB] [--examples N] [--mean-tokens M]
    dlm-sft report RUN_DIR [--output PNG]

A `UserError` (bad recipe, missing file, bad data) prints `error: <one line>` and exits with 2;
`--debug` shows the traceback instead. Each command's modules are imported when it runs, so `--help`
and usage errors answer without loading torch.
"""

from __future__ import annotations

import argparse
import sys
import typing

from sft.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with usage mistakes reported like every other user error: one line, exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlm-sft", description="SFT for masked diffusion LMs.")
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
    train.add_argument(
        "--tokenize-only",
        action="store_true",
        help="tokenize the data into data.cache_dir (on all cores) and exit; run it once before a "
        "multi-GPU or multi-node launch, whose ranks then read that cache",
    )
    train.add_argument(
        "--accelerate",
        metavar="NAME_OR_PATH",
        default=None,
        help="launch through `accelerate launch` with recipes/accelerate/NAME.yaml "
        "(ddp, fsdp, zero2, zero3) or an accelerate config YAML",
    )
    train.add_argument(
        "--num-processes",
        type=int,
        default=None,
        metavar="N",
        help="with --accelerate: processes in all (default: the visible GPUs; on CPU, N gloo processes)",
    )
    train.add_argument(
        "--print-launch", action="store_true", help="with --accelerate: print the launch line and exit"
    )

    prepare = commands.add_parser("prepare", help="prepare a chat data set from a data recipe")
    prepare.add_argument("recipe")
    prepare.add_argument("overrides", nargs="*", help="key=value")

    quick = commands.add_parser("quickstart", help="train the bundled tiny model on the sort task")
    quick.add_argument("--recipe", default=None, help="default: recipes/quickstart/sort_digits.yaml")
    quick.add_argument("overrides", nargs="*", help="section.key=value")

    from sft.cli.sampling_commands import add_eval_parser, add_generate_parser

    add_generate_parser(commands)
    add_eval_parser(commands)

    from sft.cli.export_commands import add_export_parser

    add_export_parser(commands)
    _add_plan_and_report_parsers(commands)
    return parser


def _add_plan_and_report_parsers(commands: argparse._SubParsersAction) -> None:
    plan = commands.add_parser("plan", help="a run's size and per-GPU memory, without weights or data")
    plan.add_argument("recipe")
    plan.add_argument("overrides", nargs="*", help="section.key=value")
    plan.add_argument("--engine", default="ddp", choices=("ddp", "fsdp", "zero2", "zero3"))
    plan.add_argument("--num-gpus", type=int, default=1, metavar="N", help="GPUs in all (default 1)")
    plan.add_argument("--gpu-mem", default=None, metavar="SIZE", help="e.g. 24GiB, 80GB: say if it fits")
    plan.add_argument("--examples", type=int, default=None, help="training examples, when not countable")
    plan.add_argument("--mean-tokens", type=float, default=None, help="mean tokens per example")

    report = commands.add_parser("report", help="loss / eval-loss / lr curves (PNG) and a run summary")
    report.add_argument("run_dir")
    report.add_argument("--output", default=None, help="PNG path (default RUN_DIR/report.png)")


def _run_plan_or_report(args: argparse.Namespace) -> int:
    if args.command == "report":
        from sft.report import write_run_report

        print(write_run_report(args.run_dir, args.output))
        return 0
    from sft.export.shards import parse_size
    from sft.planning.plan import GIB, make_plan
    from sft.recipe import load_recipe

    config = load_recipe(args.recipe, args.overrides, require_data=False)
    gpu_mem = parse_size(args.gpu_mem, key="--gpu-mem", plain_unit=GIB) if args.gpu_mem else None
    plan = make_plan(config, args.engine, args.num_gpus, gpu_mem, args.examples, args.mean_tokens)
    print(plan.render())
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command in ("plan", "report"):
        return _run_plan_or_report(args)

    if args.command == "export":
        from sft.cli.export_commands import run_export

        return run_export(args)

    if args.command in ("generate", "eval"):
        from sft.cli.sampling_commands import run_eval, run_generate

        return run_generate(args) if args.command == "generate" else run_eval(args)

    if args.command == "prepare":
        from data_prep.pipeline import prepare

        prepare(args.recipe, args.overrides)
        return 0

    from sft.cli.launch import refuse_data_parallel
    from sft.recipe import load_recipe

    if args.command == "quickstart":
        from sft.cli.quickstart import DEFAULT_RECIPE, run_quickstart

        config = load_recipe(args.recipe or DEFAULT_RECIPE, args.overrides)
        refuse_data_parallel(config)
        untrained, trained = run_quickstart(config)
        print(f"accuracy: untrained={untrained:.3f} trained={trained:.3f}")
        return 0

    config = load_recipe(args.recipe, args.overrides)
    if args.accelerate is not None or args.num_processes is not None or args.print_launch:
        return _launch(args)
    if args.dry_run or args.tokenize_only:
        from sft.data.splits import data_summary, prepare_data
        from sft.training.run import describe

        data = prepare_data(config)
        if args.dry_run:
            print(describe(config, data))
            return 0
        print("\n".join(data_summary(data)))
        for name, split in (("train", data.train), ("eval", data.eval)):
            if split is not None:
                print(f"{name} tokenized into {split.cache}")
        return 0
    refuse_data_parallel(config)
    from sft.training.run import train

    train(config)
    print(f"saved to {config.training.output_dir}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`train --accelerate NAME`: the recipe is valid (checked once here); run it in every process."""
    from sft.cli.launch import run_launch
    from sft.errors import UserError

    if args.accelerate is None:
        flag = "--num-processes" if args.num_processes is not None else "--print-launch"
        raise UserError("needs --accelerate", key=flag, expected="--accelerate ddp|fsdp|zero2|zero3|CONFIG")
    for flag, given in (("--dry-run", args.dry_run), ("--tokenize-only", args.tokenize_only)):
        if given:
            raise UserError("cannot be combined with --accelerate (run it first, in one process)", key=flag)
    return run_launch(
        args.recipe, args.overrides, args.accelerate, args.num_processes, args.debug, args.print_launch
    )


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
    try:
        return _run(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err.line()}", file=sys.stderr)
        return 2
