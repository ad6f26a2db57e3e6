"""Train-side tokenization throughput versus the fast tokenizer encoding the same texts.

Data: synthetic conversations in the Tulu 3 and SmolTalk layouts (`prepare_benchmark.generate`:
system turns, multi-turn chats, long-tailed lengths, ~1% malformed rows), tokenizer: Qwen2.5's real
vocabulary (`synthetic_chat.build_qwen_tokenizer`) with the NFC normalizer Qwen2.5's tokenizer.json
has. Over the same rows:

- train side: `sft.data.tokenization.tokenize_dataset` end to end (read the rows, render prompt and
  conversation, encode, find prompt lengths, apply the length policy, write and reload the cache),
  one process, on a fresh cache directory each time;
- encode only: the tokenizer backend's `encode_batch_fast` (ids only, no offsets) on the rendered
  conversation text of every example, rendered beforehand and not timed, 1,000 texts per call;
- unless `--quick`, transformers' `tokenizer(texts)` on the same texts, for reference, and the wall
  time of the train side with 2..`--max-proc` processes.

Everything runs on one core (`TOKENIZERS_PARALLELISM=false`, `num_proc: 1`), timed in wall and CPU
seconds; rates are input rows per second. Where other jobs share the cores a process gets a
fraction of one and wall time measures the scheduler, so the ratio is taken over CPU seconds (on a
dedicated core the two agree); both are printed. The train side and encode only each run twice, in
the order train, encode, encode, train, keeping the faster of each pair. The time for
`--project-rows` rows on `--project-cores` dedicated cores is projected from the train side's rows
per CPU-second (each `num_proc` process tokenizes its own shard of the rows). The last line reads
`tokenize/encode_only rows_per_s_ratio=R` (train side over encode only, rows per CPU-second).
`--quick` runs a few hundred rows, once each (format check).

    python benchmarks/tokenize_throughput.py --rows 12000 --max-proc 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prepare_benchmark import generate  # noqa: E402
from synthetic_chat import build_qwen_tokenizer  # noqa: E402
from tokenizers import normalizers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from sft.config import DataSettings  # noqa: E402
from sft.data.rows import to_messages  # noqa: E402
from sft.data.sources import load_chat_rows  # noqa: E402
from sft.data.tokenization import tokenize_dataset  # noqa: E402

BATCH = 1000


def rendered_texts(rows, tokenizer) -> list[str]:
    """The conversation text of each example the train side encodes (`multi_turn: last`)."""
    texts = []
    for row in rows:
        try:
            messages = to_messages(row)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            texts.append(tokenizer.apply_chat_template(messages[: last + 1], tokenize=False))
        except Exception:  # noqa: BLE001 - rows the train side drops before encoding
            continue
    return texts


def timed(work) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def train_side(rows, tokenizer, workdir: Path, max_length: int, processes: int):
    cache = workdir / f"cache-{processes}"
    shutil.rmtree(cache, ignore_errors=True)
    settings = DataSettings(max_length=max_length, num_proc=processes, cache_dir=str(cache))
    return tokenize_dataset(rows, tokenizer, settings, tokenizer.eos_token_id)


def encode_in_batches(texts: list[str], encode) -> None:
    for i in range(0, len(texts), BATCH):
        encode(texts[i : i + BATCH])


def report(name: str, rows: int, wall: float, cpu: float) -> None:
    print(
        f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU; {rows / wall:,.0f} rows/s, {rows / cpu:,.0f} rows/CPU-s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_000, help="synthetic conversations")
    parser.add_argument("--workdir", default="/tmp/dlm-sft-tokenize-bench")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--max-proc", type=int, default=2, help="largest process count timed")
    parser.add_argument("--project-rows", type=int, default=1_980_000)
    parser.add_argument("--project-cores", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a few hundred rows: format check only")
    args = parser.parse_args(argv)
    rows_wanted = 300 if args.quick else args.rows
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core: CPU seconds are core-seconds

    tokenizer_dir = build_qwen_tokenizer(workdir / "qwen2.5-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()  # as in Qwen2.5's tokenizer.json
    tulu, smol = generate(workdir / f"data-{rows_wanted}", rows_wanted, tokenizer_dir)
    rows = load_chat_rows([str(tulu / "data"), str(smol / "data" / "all")])
    texts = rendered_texts(rows, tokenizer)
    backend = tokenizer.backend_tokenizer
    print(f"rows: {len(rows):,}, encoded conversations: {len(texts):,}", flush=True)

    def train_once():
        return timed(lambda: train_side(rows, tokenizer, workdir, args.max_length, 1))

    def encode_once():
        return timed(
            lambda: encode_in_batches(texts, lambda b: [e.ids for e in backend.encode_batch_fast(b)])
        )

    train_wall, train_cpu, data = train_once()
    encode_wall, encode_cpu, _ = encode_once()
    if not args.quick:  # ABBA: the second of each pair runs under the other's drift
        wall, cpu, _ = encode_once()
        encode_wall, encode_cpu = min(encode_wall, wall), min(encode_cpu, cpu)
        wall, cpu, _ = train_once()
        train_wall, train_cpu = min(train_wall, wall), min(train_cpu, cpu)
    tokens = sum(len(ids) for ids in data.dataset["input_ids"])
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(data.dropped.items())) or "none"
    print(f"kept {len(data.dataset):,} examples, {tokens:,} tokens; dropped: {dropped}")
    report("train side (tokenize_dataset, 1 process)", len(rows), train_wall, train_cpu)
    report("encode only (encode_batch_fast)", len(rows), encode_wall, encode_cpu)
    projected = args.project_rows * train_cpu / len(rows) / args.project_cores
    print(f"projected: {args.project_rows:,} rows on {args.project_cores} cores: {projected / 60:.1f} min")
    if not args.quick:
        wall, cpu, _ = timed(
            lambda: encode_in_batches(texts, lambda b: tokenizer(b, add_special_tokens=False))
        )
        report("transformers tokenizer(texts)", len(rows), wall, cpu)
        for processes in range(2, args.max_proc + 1):
            wall, _, _ = timed(lambda n=processes: train_side(rows, tokenizer, workdir, args.max_length, n))
            print(f"train side, {processes} processes: {wall:.1f} s wall, {len(rows) / wall:,.0f} rows/s")
    print(f"wall-clock ratio: {encode_wall / train_wall:.3f}")
    print(f"tokenize/encode_only rows_per_s_ratio={encode_cpu / train_cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
