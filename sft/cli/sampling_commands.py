"""The `generate` and `eval` subcommands of `dlm-sft` (argument parsing and printing only).

    dlm-sft generate CHECKPOINT --prompt TEXT [--prompt TEXT ...] [--interactive] [sampler options]
    dlm-sft eval CHECKPOINT RECIPE_OR_DATA [section.key=value ...] [--ar-baseline] [sampler options]
    dlm-sft eval CHECKPOINT --tasks T1,T2 [--preset NAME] [--num-fewshot K] [--limit N]
                 [--include-path DIR] [--apply-chat-template] [--output FILE] [sampler options]

Sampler options mirror Dream's `diffusion_generate` (see `sft/sampling/sampler.py`). Options left
unset keep `SamplerSettings`' defaults, or with `eval --preset` the preset's value.
"""

from __future__ import annotations

import argparse
import sys
import time

from sft.errors import UserError
from sft.sampling.sampler import ALGORITHMS, SAMPLER_OPTIONS, SamplerSettings


def add_sampler_options(parser: argparse.ArgumentParser, max_new_tokens: int | None) -> None:
    group = parser.add_argument_group("sampler (Dream's diffusion_generate options)")
    auto = "default: fits the task's longest reference answer" if max_new_tokens is None else None
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=auto or f"canvas length (default {max_new_tokens})",
    )
    group.add_argument("--steps", type=int, default=None, help="denoising steps (default: max-new-tokens)")
    group.add_argument("--temperature", type=float, default=None, help="0 = greedy, deterministic (default)")
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument(
        "--alg", choices=ALGORITHMS, default=None, help="which tokens to reveal (default maskgit_plus)"
    )
    group.add_argument(
        "--alg-temp", type=float, default=None, help="sample the revealed set (confidence algs)"
    )
    group.add_argument("--eps", type=float, default=None, help="last timestep (default 1e-3)")
    group.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks (LLaDA)")
    group.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="block-diffusion sampling with a KV cache (models trained with diffusion.block_size)",
    )
    group.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="also reveal every token above this confidence (Fast-dLLM)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for temperature > 0 and alg-temp")
    group.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def given_sampler_options(args: argparse.Namespace) -> dict[str, object]:
    """The sampler options set on the command line (None = not given)."""
    names = ("max_new_tokens", *SAMPLER_OPTIONS)
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def sampler_settings(args: argparse.Namespace, max_new_tokens: int) -> SamplerSettings:
    given = {k: v for k, v in given_sampler_options(args).items() if k in SAMPLER_OPTIONS}
    settings = SamplerSettings(**{"max_new_tokens": max_new_tokens, "steps": max_new_tokens, **given})
    try:
        settings.check()
    except ValueError as err:
        raise UserError(str(err), key="sampler options") from None
    return settings


# ---------------------------------------------------------------------------------- generate
def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("generate", help="sample replies from a checkpoint (chat template applied)")
    parser.add_argument(
        "checkpoint", help="a model directory (training output, export), a LoRA adapter, or a hub id"
    )
    parser.add_argument("--prompt", action="append", default=[], help="a user message; repeat for a batch")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--interactive", action="store_true", help="chat loop (empty line or /exit ends)")
    parser.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text")
    add_sampler_options(parser, max_new_tokens=64)


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from sft.sampling.chat import chat_loop, generate_replies
    from sft.sampling.loading import load_for_sampling

    if not args.prompt and not args.interactive:
        raise UserError("nothing to do", key="--prompt", expected="--prompt TEXT or --interactive")
    settings = sampler_settings(args, args.max_new_tokens)
    loaded = load_for_sampling(args.checkpoint, device=args.device)
    device = next(loaded.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    common = dict(mask_token_id=loaded.mask_token_id, shift=loaded.family.shift, generator=generator)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt:
        conversations = [[*system, {"role": "user", "content": p}] for p in args.prompt]
        start = time.perf_counter()
        replies = generate_replies(
            loaded.model,
            loaded.tokenizer,
            conversations,
            chat_template=not args.raw,
            **common,
            **settings.kwargs(),
        )
        seconds = time.perf_counter() - start
        for i, reply in enumerate(replies):
            print(reply if len(replies) == 1 else f"[{i}] {reply}")
        print(
            f"({len(replies)} x {settings.max_new_tokens} tokens, {settings.steps} steps, {seconds:.2f}s)",
            file=sys.stderr,
        )
    if args.interactive:
        if args.raw:
            raise UserError("--interactive needs the chat template", key="--raw")
        chat_loop(loaded.model, loaded.tokenizer, settings, system=args.system, **common)
    return 0


# -------------------------------------------------------------------------------------- eval
def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="eval loss and task accuracy of a checkpoint, or lm-evaluation-harness tasks"
    )
    parser.add_argument(
        "checkpoint", help="a model directory (training output, export), a LoRA adapter, or a hub id"
    )
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


def run_eval(args: argparse.Namespace) -> int:
    from sft.evaluation.bundled import evaluate_checkpoint, read_rows, resolve_target
    from sft.sampling.loading import load_for_sampling

    if args.tasks is not None or args.preset is not None:
        return run_harness_eval(args)
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
        from sft.sampling.ar_baseline import ar_accuracy, train_ar_baseline

        baseline = train_ar_baseline(target.recipe, args.ar_max_steps)
        print(
            f"ar-baseline: trained {baseline.steps} steps in {baseline.train_seconds:.0f}s", file=sys.stderr
        )
        tokens = {source: s.max_new_tokens for source, s in report.sampler.items()}
        rows = read_rows(target.paths)[: args.limit]
        report.ar_accuracy = ar_accuracy(baseline, rows, tokens, args.batch_size)
    print("\n".join(report.lines()))
    return 0


def run_harness_eval(args: argparse.Namespace) -> int:
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
    from sft.eval_results import default_output, metric_lines, write_results
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
