"""Diffusion vs autoregressive on planning tasks, at equal budget, each with its best settings.

For one bundled task (held-out split by answer key: no eval Sudoku solution grid or Countdown
target ever appears in training), at each budget (optimizer steps, same examples and batch for
both sides):
- diffusion: train the quickstart-size model once per objective setting (EOS-tail policy,
  weighting, t_min), then decode the held-out set with each sampler setting (algorithm, steps);
  the settings of `SIDES` (block diffusion with B = 4 and B = one answer row in tokens, decoded
  with the block sampler; complementary masks) run at every budget, the others at the first
  budget, after which the best of them goes on;
- AR: the same-size causal model trained with plain TRL SFT (`dlm-sft eval --ar-baseline`'s
  baseline), greedy decoding.
Prints one table row per (budget, objective setting, decode setting) and the best of each side,
and writes everything to `WORKDIR/results.json`.

    python benchmarks/planning_comparison.py --task sudoku_4x4 --level medium \
        --budgets 250,750 --workdir /tmp/planning-sudoku
    python benchmarks/planning_comparison.py --quick   # format only (a suite test runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from sft.evaluation.ar_baseline import ar_accuracy, train_ar_baseline
from sft.evaluation.bundled import answer_budget, read_rows, task_accuracy
from sft.recipe import load_recipe
from sft.sampling.loading import load_for_sampling
from sft.sampling.settings import SamplerSettings
from sft.tasks.registry import NAMES, TASKS
from sft.training.run import train

RECIPE = "recipes/quickstart/sort_digits.yaml"
QUICKSTART_MODEL = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "model"
OBJECTIVES = {
    "tail=all inv_t": {"diffusion.eos_tail": "all", "diffusion.weighting": "inv_t"},
    "tail=first_n(4) inv_t": {"diffusion.eos_tail": "first_n", "diffusion.eos_tail_n": 4},
    "tail=first_n(4) linear": {
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.weighting": "linear",
    },
    "tail=first_n(4) inv_t t_min=0.2": {
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.t_min": 0.2,
    },
    "block=4 tail=first_n(4) inv_t": {
        "diffusion.block_size": 4,
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
    },
    "block=row tail=first_n(4) inv_t": {
        "diffusion.block_size": "row",
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
    },
    "block=4 tail=first_n(4) inv_t t_min=0.2": {
        "diffusion.block_size": 4,
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.t_min": 0.2,
    },
    "block=row tail=first_n(4) inv_t t_min=0.2": {
        "diffusion.block_size": "row",
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.t_min": 0.2,
    },
    "complementary tail=first_n(4) inv_t t_min=0.2": {
        "diffusion.complementary": True,
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.t_min": 0.2,
    },
    "complementary tail=first_n(4) linear t_min=0.2": {
        "diffusion.complementary": True,
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.weighting": "linear",
        "diffusion.t_min": 0.2,
    },
    "complementary tail=first_n(4) inv_t t_min=0.4": {
        "diffusion.complementary": True,
        "diffusion.eos_tail": "first_n",
        "diffusion.eos_tail_n": 4,
        "diffusion.t_min": 0.4,
    },
}
"""Objective settings swept at the first budget; the best one runs at the others (and `SIDES` at all).
`block_size: row` is one row of the reference answer in tokens (its first line and newline)."""
SIDES = (
    "block=4 tail=first_n(4) inv_t t_min=0.2",
    "block=row tail=first_n(4) inv_t t_min=0.2",
    "complementary tail=first_n(4) inv_t t_min=0.2",
)
"""Settings that run at every budget (issue 22: block diffusion and complementary masks as sides)."""
QUICK_OBJECTIVES = ("tail=all inv_t", "tail=first_n(4) inv_t", "block=4 tail=first_n(4) inv_t t_min=0.2")
DECODERS = {
    "maskgit_plus, 1 token/step": {"alg": "maskgit_plus"},
    "entropy, 1 token/step": {"alg": "entropy"},
    "topk_margin, 1 token/step": {"alg": "topk_margin"},
    "maskgit_plus, 2 tokens/step": {"alg": "maskgit_plus", "halve_steps": True},
}


def row_tokens(rows: list[dict]) -> int:
    """Tokens of one row of the reference answer (its first line and the newline), quickstart tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    answer = next(m["content"] for m in rows[0]["messages"] if m["role"] == "assistant")
    return len(tokenizer(answer.split("\n")[0] + "\n", add_special_tokens=False)["input_ids"])


def diffusion_accuracy(
    run_dir: Path, rows: list[dict], block_size: int | None = None
) -> tuple[dict[str, float], int]:
    """Held-out accuracy of a trained diffusion run under each decoder, and the canvas length
    (the longest reference answer + 4 tokens, as `dlm-sft eval` sets it). A block-diffusion run
    (`block_size`) is decoded with the block sampler (KV cache), the same algorithms and steps."""
    loaded = load_for_sampling(run_dir, device="cpu")
    tokens = answer_budget(loaded.tokenizer, rows)
    blocks = -(-tokens // block_size) if block_size else 1
    scores = {}
    for name, decoder in DECODERS.items():
        steps = max(tokens // 2, blocks) if decoder.get("halve_steps") else tokens
        settings = SamplerSettings(
            max_new_tokens=tokens, steps=steps, alg=decoder["alg"], block_size=block_size
        )
        accuracy, _, _ = task_accuracy(loaded, rows, settings, auto_tokens=False, auto_steps=False)
        scores[name] = next(iter(accuracy.values()))
    return scores, tokens


def finished_run_seconds(run_dir: Path, budget: int) -> float | None:
    """The training time of a finished run of `budget` steps in `run_dir`, or None."""
    try:
        state = json.loads((run_dir / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    if not (run_dir / "dlm_run.json").is_file() or state.get("global_step") != budget:
        return None
    return next(e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e)


def run(args: argparse.Namespace, objectives: tuple[str, ...]) -> dict:
    workdir = Path(args.workdir)
    task = TASKS[NAMES[args.task]]
    train_file, eval_file = task.write_split_files(
        workdir / "data", args.level, args.train_rows, args.eval_rows, seed=0
    )
    rows = read_rows(str(eval_file))
    common = [
        f"data.train={train_file}",
        f"data.eval={eval_file}",
        f"data.max_length={args.max_length}",
        f"training.per_device_train_batch_size={args.batch_size}",
        "training.save_strategy=no",
        "training.eval_strategy=no",
        "training.warmup_steps=0",
        f"training.seed={args.seed}",
        f"training.logging_steps={max(min(args.budgets) // 4, 1)}",
    ]
    results: dict = {
        "task": args.task,
        "level": args.level,
        "train_rows": args.train_rows,
        "seed": args.seed,
        "budgets": {},
    }
    best_objective = None
    row = row_tokens(rows)
    for index, budget in enumerate(args.budgets):
        chosen = objectives if index == 0 else {best_objective, *SIDES}
        entry: dict = {"diffusion": {}, "ar": None}
        for name in [o for o in objectives if o in chosen]:
            run_dir = workdir / f"steps{budget}" / name.replace(" ", "_").replace("(", "").replace(")", "")
            overrides = [*common, f"training.max_steps={budget}", f"training.output_dir={run_dir}"]
            settings = {k: (row if v == "row" else v) for k, v in OBJECTIVES[name].items()}
            overrides += [f"{k}={v}" for k, v in settings.items()]
            seconds = finished_run_seconds(run_dir, budget)
            if seconds is None:  # not trained yet at this budget (a rerun reuses finished runs)
                train(load_recipe(RECIPE, [*overrides, "training.overwrite_output_dir=true"]))
                seconds = finished_run_seconds(run_dir, budget)
            accuracy, tokens = diffusion_accuracy(run_dir, rows, settings.get("diffusion.block_size"))
            entry["diffusion"][name] = {"train_seconds": round(seconds, 1), "accuracy": accuracy}
            print(
                f"[{budget} steps] diffusion {name}: {entry['diffusion'][name]}", file=sys.stderr, flush=True
            )
        config = load_recipe(
            RECIPE, [*common, f"training.max_steps={budget}", "training.output_dir=/tmp/unused"]
        )
        start = time.perf_counter()
        baseline = train_ar_baseline(config)
        seconds = time.perf_counter() - start
        ar = ar_accuracy(baseline, rows, {rows[0]["source"]: tokens})
        entry["ar"] = {"train_seconds": round(seconds, 1), "accuracy": next(iter(ar.values()))}
        print(f"[{budget} steps] AR: {entry['ar']}", file=sys.stderr, flush=True)
        results["budgets"][str(budget)] = entry
        if index == 0:
            best_objective = max(  # None when only sides ran
                (o for o in entry["diffusion"] if o not in SIDES),
                key=lambda o: max(entry["diffusion"][o]["accuracy"].values()),
                default=None,
            )
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def table(results: dict) -> list[str]:
    lines = [
        f"{results['task']} ({results['level']}), {results['train_rows']} training rows, "
        f"seed {results.get('seed', 0)}",
        "| budget (steps) | model | objective | decoder | held-out accuracy | train s |",
        "|---:|---|---|---|---:|---:|",
    ]
    for budget, entry in results["budgets"].items():
        for objective, run in entry["diffusion"].items():
            for decoder, accuracy in run["accuracy"].items():
                seconds = run["train_seconds"]
                lines.append(
                    f"| {budget} | diffusion | {objective} | {decoder} | {accuracy:.3f} | {seconds:.0f} |"
                )
        ar = entry["ar"]
        lines.append(
            f"| {budget} | AR | next-token CE | greedy | {ar['accuracy']:.3f} | {ar['train_seconds']:.0f} |"
        )
    for budget, entry in results["budgets"].items():
        best = max(
            ((acc, o, d) for o, run in entry["diffusion"].items() for d, acc in run["accuracy"].items()),
        )
        ar_accuracy_ = entry["ar"]["accuracy"]
        lines.append(
            f"budget {budget}: best diffusion {best[0]:.3f} ({best[1]}; {best[2]}) vs AR {ar_accuracy_:.3f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sudoku_4x4", choices=sorted(NAMES))
    parser.add_argument("--level", default="medium")
    parser.add_argument("--budgets", default="250,750", help="optimizer steps, comma-separated")
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--eval-rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--workdir", default="/tmp/dlm-planning")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed (initialisation, noise) of both sides"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets, format only")
    parser.add_argument("--objectives", default=None, help="comma-separated OBJECTIVES names (default: all)")
    args = parser.parse_args(argv)
    objectives = tuple(OBJECTIVES)
    if args.objectives:
        objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown:
            parser.error(f"unknown objectives {unknown}; choose from {list(OBJECTIVES)}")
    if args.quick:
        args.budgets, args.train_rows, args.eval_rows, args.batch_size = "2,3", 64, 8, 8
        objectives = QUICK_OBJECTIVES
    args.budgets = [int(b) for b in str(args.budgets).split(",")]
    torch.manual_seed(args.seed)
    print("\n".join(table(run(args, objectives))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
