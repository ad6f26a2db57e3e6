"""`dlm-sft plan RECIPE.yaml [...] [--engine E] [--num-gpus N] [--gpu-mem 24GiB]`: a run's size and
per-GPU memory, without weights or data (`sft.planning`)."""

from __future__ import annotations

import argparse

from sft.engines import ENGINES


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    plan = commands.add_parser("plan", help="a run's size and per-GPU memory, without weights or data")
    plan.add_argument("recipe")
    plan.add_argument("overrides", nargs="*", help="section.key=value")
    plan.add_argument("--engine", default="ddp", choices=ENGINES)
    plan.add_argument("--num-gpus", type=int, default=1, metavar="N", help="GPUs in all (default 1)")
    plan.add_argument("--gpu-mem", default=None, metavar="SIZE", help="e.g. 24GiB, 80GB: say if it fits")
    plan.add_argument("--examples", type=int, default=None, help="training examples, when not countable")
    plan.add_argument("--mean-tokens", type=float, default=None, help="mean tokens per example")
    return plan


def run(args: argparse.Namespace) -> int:
    from sft.export.shards import parse_size
    from sft.planning.plan import GIB, make_plan
    from sft.recipe import load_recipe

    config = load_recipe(args.recipe, args.overrides, require_data=False)
    gpu_mem = parse_size(args.gpu_mem, key="--gpu-mem", plain_unit=GIB) if args.gpu_mem else None
    plan = make_plan(config, args.engine, args.num_gpus, gpu_mem, args.examples, args.mean_tokens)
    print(plan.render())
    return 0
