"""`dlm-sft quickstart [--recipe RECIPE.yaml] [section.key=value ...]`: train a tiny diffusion LM to sort
digits on a CPU and show that it learnt.

Writes the task's train/held-out files, scores the untrained model, trains with the recipe,
scores the trained model, and prints `accuracy: untrained=<fraction> trained=<fraction>`. With
`diffusion.block_size=B` both are scored with the block sampler (KV cache of finished blocks), and
its forwards per generated token and cache reuse are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft.config import RunConfig

DEFAULT_RECIPE = "recipes/quickstart/sort_digits.yaml"
ANSWER_TOKENS = 12  # the longest answer (8 digits) + <|im_end|>, newline and EOS, with room


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    quick = commands.add_parser("quickstart", help="train the bundled tiny model on the sort task")
    quick.add_argument("--recipe", default=None, help=f"default: {DEFAULT_RECIPE}")
    quick.add_argument("overrides", nargs="*", help="section.key=value")
    return quick


def run(args: argparse.Namespace) -> int:
    from sft.cli.launch import check_processes
    from sft.recipe import load_recipe

    recipe = str(args.recipe or DEFAULT_RECIPE)
    check_processes(recipe, args.overrides)
    config = load_recipe(recipe, args.overrides)
    untrained, trained = run_quickstart(config)
    print(f"accuracy: untrained={untrained:.3f} trained={trained:.3f}")
    return 0


def ensure_task_files(config: RunConfig) -> None:
    """Write the task's data where the recipe expects it (deterministic; skipped when present)."""
    from sft.tasks import sort_digits

    train_path, eval_path = Path(str(config.data.train)), Path(str(config.data.eval))
    if not (train_path.is_file() and eval_path.is_file()):
        sort_digits.write_split_files(train_path.parent)


def run_quickstart(config: RunConfig, *, steps: int = ANSWER_TOKENS) -> tuple[float, float]:
    import pyarrow.parquet as pq

    from sft.data.splits import prepare_data
    from sft.evaluation.bundled import exact_match
    from sft.sampling.block_sampler import SamplerStats
    from sft.tasks import sort_digits
    from sft.training.run import build_model, build_trainer

    ensure_task_files(config)
    data = prepare_data(config)
    loaded = build_model(config, data.model)
    rows = pq.read_table(str(config.data.eval)).to_pylist()
    generation = {
        "mask_token_id": loaded.mask_token_id,
        "shift": loaded.family.shift,
        "max_new_tokens": ANSWER_TOKENS,
        "steps": steps,
    }
    block_size = config.training.block_size
    if block_size:
        generation["block_size"] = block_size
    untrained = exact_match(loaded.model, loaded.tokenizer, rows, sort_digits.score, **generation)
    print(f"untrained exact match: {untrained:.3f}", flush=True)
    trainer = build_trainer(config, data, loaded)
    trainer.train()
    trainer.save_model()
    stats = SamplerStats()
    trained = exact_match(trainer.model, loaded.tokenizer, rows, sort_digits.score, stats=stats, **generation)
    sampler = f"block sampler (block_size={block_size})" if block_size else "full-sequence sampler"
    print(f"{sampler}: {stats.line()}", flush=True)
    return untrained, trained
