"""`dlm-sft eval`: eval loss and exact match of a checkpoint on the bundled tasks, or lm-evaluation-harness
tasks.

    dlm-sft eval CHECKPOINT RECIPE_OR_DATA [section.key=value ...] [--ar-baseline] [sampler options]
    dlm-sft eval CHECKPOINT --tasks T1,T2 [--preset NAME] [--num-fewshot K] [--limit N]
                 [--include-path DIR] [--apply-chat-template] [--output FILE] [sampler options]
"""

from __future__ import annotations

import argparse
import sys

from sft.cli.sampler_options import (
    CHECKPOINT_HELP,
    add_sampler_options,
    given_sampler_options,
    sampler_settings,
)
from sft.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "eval", help="eval loss and task accuracy of a checkpoint, or lm-evaluation-harness tasks"
    )
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument(
        "target",
        nargs="?",
        help="a recipe YAML (its data.eval) or a chat data file/directory (not with --tasks)",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value (recipe only)")
    harness = parser.add_argument_group("lm-evaluation-harness (needs the `eval` extra)")
    harness.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks, e.g. gsm8k,arc_easy")
    harness.add_argument(
        "--preset",
        default=None,
        help="Dream's or LLaDA's published settings per task: dream-instruct or llada-instruct "
        "(see docs/evaluation.md); --tasks then picks among its tasks",
    )
    harness.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)"
    )
    harness.add_argument("--include-path", default=None, help="a directory of extra lm-eval task YAMLs")
    harness.add_argument(
        "--apply-chat-template", action="store_true", help="render prompts with the tokenizer's chat template"
    )
    harness.add_argument(
        "--mc-samples",
        type=int,
        default=None,
        help="Monte-Carlo samples per loglikelihood request (default 128)",
    )
    harness.add_argument(
        "--confirm-run-unsafe-code",
        action="store_true",
        help="let code tasks (HumanEval, MBPP) execute the generated code, as lm-eval asks",
    )
    harness.add_argument(
        "--output", default=None, help="results JSON (default CHECKPOINT/eval/lm_eval_<UTC time>.json)"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="eval row length (default: recipe or 2048)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--ar-baseline",
        action="store_true",
        help="also train a same-size autoregressive model with plain TRL SFT on the recipe's data and budget",
    )
    parser.add_argument(
        "--ar-max-steps", type=int, default=None, help="AR baseline steps (default: the recipe's)"
    )
    add_sampler_options(parser, max_new_tokens=None)
    return parser


def run(args: argparse.Namespace) -> int:
    from sft.evaluation.bundled import evaluate_checkpoint, read_rows, resolve_target
    from sft.sampling.loading import load_for_sampling

    if args.tasks is not None or args.preset is not None:
        return _run_harness(args)
    if args.target is None:
        raise UserError("nothing to evaluate on", expected="RECIPE_OR_DATA, or --tasks / --preset")
    target = resolve_target(args.target, args.overrides, args.max_length)
    if args.ar_baseline and target.recipe is None:
        raise UserError("--ar-baseline needs a recipe (its training data and budget)", file=args.target)
    sampler = sampler_settings(args, args.max_new_tokens or 1)
    loaded = load_for_sampling(args.checkpoint, device=args.device)
    report = evaluate_checkpoint(
        loaded,
        target,
        sampler,
        auto_tokens=args.max_new_tokens is None,
        auto_steps=args.steps is None,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if args.ar_baseline:
        from sft.evaluation.ar_baseline import ar_accuracy, train_ar_baseline

        baseline = train_ar_baseline(target.recipe, args.ar_max_steps)
        print(
            f"ar-baseline: trained {baseline.steps} steps in {baseline.train_seconds:.0f}s", file=sys.stderr
        )
        tokens = {source: s.max_new_tokens for source, s in report.sampler.items()}
        rows = read_rows(target.paths)[: args.limit]
        report.ar_accuracy = ar_accuracy(baseline, rows, tokens, args.batch_size)
    print("\n".join(report.lines()))
    return 0


def _run_harness(args: argparse.Namespace) -> int:
    """`eval --tasks/--preset`: lm-eval tasks, results JSON written and summarised."""
    if args.target is not None:
        raise UserError(
            f"a recipe or data path ({args.target}) cannot be combined with --tasks/--preset",
            expected="either RECIPE_OR_DATA (bundled tasks) or --tasks (lm-eval)",
        )
    if args.ar_baseline:
        raise UserError("--ar-baseline works with a recipe, not with --tasks", key="--ar-baseline")
    try:
        from sft.evaluation.harness import plan_runs, run_harness
    except ModuleNotFoundError as err:
        if err.name != "lm_eval" and not (err.name or "").startswith("lm_eval."):
            raise
        raise UserError(
            "lm-eval is not installed", key="--tasks", expected="pip install 'dlm-sft[eval]'"
        ) from None
    from sft.evaluation.results import default_output, metric_lines, write_results
    from sft.sampling.loading import load_for_sampling

    overrides = given_sampler_options(args)
    if args.mc_samples is not None:
        overrides["mc_samples"] = args.mc_samples
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    runs = plan_runs(tasks, args.preset, args.num_fewshot, args.apply_chat_template, overrides)
    loaded = load_for_sampling(args.checkpoint, device=args.device)
    results = run_harness(
        loaded,
        runs,
        limit=args.limit,
        include_path=args.include_path,
        batch_size=args.batch_size,
        seed=args.seed,
        confirm_run_unsafe_code=args.confirm_run_unsafe_code,
    )
    output = write_results(results, args.output or default_output(args.checkpoint))
    print("\n".join([*metric_lines(results), f"results: {output}"]))
    return 0
