"""The quickstart: train a tiny diffusion LM to sort digits on a CPU and show that it learnt.

Writes the task's train/held-out files, scores the untrained model, trains with the recipe,
scores the trained model, and prints `accuracy: untrained=<fraction> trained=<fraction>`. With
`diffusion.block_size=B` both are scored with the block sampler (KV cache of finished blocks), and
its forwards per generated token and cache reuse are printed.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from sft.config import RunConfig
from sft.evaluation.bundled import exact_match
from sft.run import build_model, build_trainer, prepare_data, save_run
from sft.sampling.block_sampler import SamplerStats
from sft.tasks import sort_digits

DEFAULT_RECIPE = "recipes/quickstart/sort_digits.yaml"
ANSWER_TOKENS = 12  # the longest answer (8 digits) + <|im_end|>, newline and EOS, with room


def ensure_task_files(config: RunConfig) -> None:
    """Write the task's data where the recipe expects it (deterministic; skipped when present)."""
    train_path, eval_path = Path(str(config.data.train)), Path(str(config.data.eval))
    if not (train_path.is_file() and eval_path.is_file()):
        sort_digits.write_split_files(train_path.parent)


def run_quickstart(config: RunConfig, *, steps: int = ANSWER_TOKENS) -> tuple[float, float]:
    ensure_task_files(config)
    data = prepare_data(config)
    loaded = build_model(config)
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
    save_run(trainer, config)
    stats = SamplerStats()
    trained = exact_match(trainer.model, loaded.tokenizer, rows, sort_digits.score, stats=stats, **generation)
    sampler = f"block sampler (block_size={block_size})" if block_size else "full-sequence sampler"
    print(f"{sampler}: {stats.line()}", flush=True)
    return untrained, trained
