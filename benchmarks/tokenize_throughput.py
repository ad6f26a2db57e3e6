"""Train-side tokenization throughput versus the fast tokenizer encoding the same texts.

Data: synthetic conversations in the Tulu 3 and SmolTalk layouts (`prepare_benchmark.generate`:
system turns, multi-turn chats, long-tailed lengths, ~1% malformed rows), tokenizer: Qwen2.5's real
vocabulary (`synthetic_chat.build_qwen_tokenizer`) with the NFC normalizer Qwen2.5's tokenizer.json
has. Timings over the same rows (each train-side run on a fresh cache directory):

- train side: `sft.data.tokenize_dataset` end to end (read the rows, render prompt and
  conversation, encode, find prompt lengths, apply the length policy, write and reload the cache),
  at `--num-proc 1` and, unless `--quick`, at every count up to `--max-proc`;
- encode only: the tokenizer backend's `encode_batch_fast` (ids only, no offsets) on the rendered
  conversation text of every example, rendered beforehand and not timed, 1,000 texts per call;
- unless `--quick`, transformers' `tokenizer(texts)` on the same texts, for reference;
- unless `--quick`, the train side on one core (`TOKENIZERS_PARALLELISM=false`, one process), with
  its CPU time: rows per CPU-second is what each of N processes on N dedicated cores sustains, so
  the time for `--project-rows` rows on `--project-cores` cores is projected from it (the wall time
  of several processes on this machine's shared cores is printed too).

Rates are input rows per second. The train side at one process and encode only are each timed
twice, in the order train, encode, encode, train, and the faster of each pair is kept, so load that
drifts during the run touches both alike. The last line reads
`tokenize/encode_only rows_per_s_ratio=R` (train side at one process over encode only).
`--quick` runs a few hundred rows, once each (format check).

    python benchmarks/tokenize_throughput.py --rows 100000 --max-proc 2
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
from sft.data import load_chat_rows, to_messages, tokenize_dataset  # noqa: E402

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


def time_train_side(rows, tokenizer, workdir: Path, max_length: int, processes: int) -> tuple[float, object]:
    cache = workdir / f"cache-{processes}"
    shutil.rmtree(cache, ignore_errors=True)
    settings = DataSettings(max_length=max_length, num_proc=processes, cache_dir=str(cache))
    start = time.perf_counter()
    data = tokenize_dataset(rows, tokenizer, settings, tokenizer.eos_token_id)
    return time.perf_counter() - start, data


def time_encode(texts: list[str], encode) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        encode(texts[i : i + BATCH])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic conversations")
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

    tokenizer_dir = build_qwen_tokenizer(workdir / "qwen2.5-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()  # as in Qwen2.5's tokenizer.json
    tulu, smol = generate(workdir / f"data-{rows_wanted}", rows_wanted, tokenizer_dir)
    rows = load_chat_rows([str(tulu / "data"), str(smol / "data" / "all")])
    texts = rendered_texts(rows, tokenizer)
    backend = tokenizer.backend_tokenizer
    print(f"rows: {len(rows):,}, encoded conversations: {len(texts):,}", flush=True)

    def encode_only() -> float:
        return time_encode(texts, lambda batch: [e.ids for e in backend.encode_batch_fast(batch)])

    train_s, data = time_train_side(rows, tokenizer, workdir, args.max_length, 1)
    encode_s = encode_only()
    if not args.quick:  # ABBA: the second of each pair runs under the other's drift
        encode_s = min(encode_s, encode_only())
        train_s = min(train_s, time_train_side(rows, tokenizer, workdir, args.max_length, 1)[0])
    tokens = sum(len(ids) for ids in data.dataset["input_ids"])
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(data.dropped.items())) or "none"
    print(
        f"train side, 1 process: {train_s:.1f} s, {len(rows) / train_s:,.0f} rows/s "
        f"({len(data.dataset):,} examples, {tokens:,} tokens kept; dropped: {dropped})"
    )
    print(f"encode only (encode_batch_fast): {encode_s:.1f} s, {len(rows) / encode_s:,.0f} rows/s")
    if not args.quick:
        wrapper_s = time_encode(texts, lambda batch: tokenizer(batch, add_special_tokens=False))
        print(f"transformers tokenizer(texts): {wrapper_s:.1f} s, {len(rows) / wrapper_s:,.0f} rows/s")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        cpu = time.process_time()
        wall, _ = time_train_side(rows, tokenizer, workdir, args.max_length, 1)
        per_cpu_s = len(rows) / (time.process_time() - cpu)
        print(f"train side, 1 process on 1 core: {wall:.1f} s, {per_cpu_s:,.0f} rows per CPU-second")
        projected = args.project_rows / (per_cpu_s * args.project_cores)
        print(
            f"projected: {args.project_rows:,} rows on {args.project_cores} cores: {projected / 60:.1f} min"
        )
        for processes in range(2, args.max_proc + 1):
            seconds, _ = time_train_side(rows, tokenizer, workdir, args.max_length, processes)
            print(f"train side, {processes} processes: {seconds:.1f} s, {len(rows) / seconds:,.0f} rows/s")
    print(f"tokenize/encode_only rows_per_s_ratio={encode_s / train_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
