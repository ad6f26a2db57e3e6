"""`dlm-sft train RECIPE.yaml [section.key=value ...]`: one training run from a recipe.

dlm-sft train RECIPE.yaml [...] [--dry-run | --tokenize-only]
dlm-sft train RECIPE.yaml [...] --accelerate ddp|fsdp|zero2|zero3|CFG [--num-processes N] [--print-launch]
"""

from __future__ import annotations

import argparse

from sft.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return train


def run(args: argparse.Namespace) -> int:
    from sft.cli.launch import check_processes
    from sft.recipe import load_recipe

    launching = args.accelerate is not None or args.num_processes is not None or args.print_launch
    if not (launching or args.dry_run or args.tokenize_only):
        check_processes(args.recipe, args.overrides)  # before the TrainingArguments pick devices
    config = load_recipe(args.recipe, args.overrides)
    if launching:
        return _launch(args)
    if args.dry_run or args.tokenize_only:
        from sft.data.splits import data_summary, prepare_data
        from sft.training.preflight import check_run
        from sft.training.run import describe

        if args.dry_run:
            check_run(config)  # what the run would refuse, before tokenizing
        data = prepare_data(config)
        if args.dry_run:
            print(describe(config, data))
            return 0
        print("\n".join(data_summary(data)))
        for name, split in (("train", data.train), ("eval", data.eval)):
            if split is not None:
                print(f"{name} tokenized into {split.cache}")
        return 0
    from sft.ranks import say
    from sft.training.run import train

    train(config)
    say(f"saved to {config.training.output_dir}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`train --accelerate NAME`: the recipe is valid (checked once here); run it in every process."""
    from sft.cli.launch import run_launch

    if args.accelerate is None:
        flag = "--num-processes" if args.num_processes is not None else "--print-launch"
        raise UserError("needs --accelerate", key=flag, expected="--accelerate ddp|fsdp|zero2|zero3|CONFIG")
    for flag, given in (("--dry-run", args.dry_run), ("--tokenize-only", args.tokenize_only)):
        if given:
            raise UserError("cannot be combined with --accelerate (run it first, in one process)", key=flag)
    return run_launch(
        args.recipe, args.overrides, args.accelerate, args.num_processes, args.debug, args.print_launch
    )
