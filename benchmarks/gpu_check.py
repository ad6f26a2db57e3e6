"""The GPU path in one run on one GPU: one line per check and a summary line (minutes on an H100).

Runs from a checkout without `pip install` (the repository root is put on `sys.path`) on an image
with torch, transformers, accelerate and peft; trl and datasets (which the training path imports)
arrive as the wheels `benchmarks/gpu_wheels.sh` downloads (docs/distributed.md). Downloads nothing:
the models are built from configs, the tokenizer is the quickstart's.

    python benchmarks/gpu_check.py           # on a CUDA GPU; paste the lines into benchmarks/RESULTS.md
    python benchmarks/gpu_check.py --smoke   # every check's code path on the CPU at toy size (the suite)

probe ATTN     per attention path (sdpa, torch_varlen, flash_attention_2 when installed): packed rows
               of a bidirectional Qwen2 (bf16, grouped K/V heads) against each document run alone
               (SDPA): hidden states and layer-0 gradients; then a perturbation: changing each
               document's last token must move its first token's hidden state (bidirectional) and
               no other document's (no leak). Under --smoke torch_varlen's CUDA kernel is replaced
               by a plain-torch stand-in (`cpu_varlen_attn`).
control ATTN   the same probe on the causal model (`config.is_causal`) must fail: its first tokens
               do not move. A probe that a causal model passes could not see lost bidirectionality.
throughput     a Qwen2.5-0.5B-shaped body (hidden 896, 24 layers, 14 heads / 2 K/V heads, vocabulary
               151,936, random init), bf16 weights, packed rows of 4,096 tokens, AdamW, this
               toolkit's `compute_loss` (fused LM head at the masked positions only), attention as
               `model.attn_implementation: auto` picks it: tokens/s, MFU, peak memory, and
               `dlm-sft plan`'s estimate for the same shape
baseline       the same rows through a plain AR SFT step of the same model (causal, every logit,
               transformers' loss: what TRL users run): tokens/s, MFU, peak memory, and the
               diffusion/AR tokens/s ratio
block          block diffusion (`diffusion.block_size`, packed rows of 1,024 tokens, B = 16, the probe
               model): the trainer's loss and gradients through flex-attention's BlockMask (what
               `auto` takes on CUDA) against SDPA's dense (2L)² mask, and a step's time under each;
               under --smoke the loss only (flex-attention has no backward pass on the CPU)
e2e            `dlm-sft train --accelerate ddp` (1 process on a GPU; 2 gloo processes on --smoke) of a
               tiny Dream-layout checkpoint with packed rows, then `dlm-sft export` and `dlm-sft generate`

Model FLOPs per optimizer step (N: non-embedding parameters, T: tokens, M: masked tokens, d: hidden
size, V: vocabulary, n: layers; attention costs 4·d·len² per layer forward, ×3 with the backward,
half of it when causal):
    diffusion  6·N·T + 6·d·V·M + 12·n·d·Σ_documents len²
    AR         6·N·T + 6·d·V·T + 6·n·d·Σ_documents len²
MFU divides by the GPU's dense bf16 peak. The process exits 1 when a check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `sft` without `pip install`

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import sft.families.attention  # noqa: E402
from sft.config import DataSettings, DiffusionSFTConfig, ModelSettings, RunConfig  # noqa: E402
from sft.data.collate import DiffusionCollator, pack_examples  # noqa: E402
from sft.families.attention import TORCH_VARLEN, attention_inputs, resolve_attn_implementation  # noqa: E402
from sft.planning.memory import estimate_memory  # noqa: E402
from sft.planning.shapes import shape_from_config  # noqa: E402
from sft.tasks.sort_digits import make_rows  # noqa: E402
from sft.training.trainer import DiffusionSFTTrainer  # noqa: E402

QUICKSTART_MODEL = ROOT / "recipes" / "quickstart" / "model"
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0}
HIDDEN_TOLERANCE = 2e-2  # relative L2 error of bf16 hidden states, packed vs alone (a leak: >= 1e-1)
GRAD_TOLERANCE = 5e-2  # the same for layer 0's gradients
MOVES = 1e-3  # a first token "moves": its hidden state changes by at least this much, relatively
STILL = 1e-4  # another document "does not move": its largest relative change is at most this


@dataclass
class Sizes:
    probe: dict  # the probe model's shape
    documents: list[list[int]]  # probe: document lengths per packed row
    body: dict  # the throughput model's shape
    heads: int
    rows: int  # packed rows per step
    max_length: int
    steps: int
    warmup: int
    e2e_processes: int


QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24)
FULL = Sizes(
    probe=dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=4),
    documents=[[300, 77, 129], [512, 41, 200, 9]],
    body=QWEN25_05B,
    heads=14,
    rows=4,
    max_length=4096,
    steps=10,
    warmup=2,
    e2e_processes=1,
)
SMOKE = Sizes(
    probe=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2),
    documents=[[19, 7, 12], [24, 5, 9]],
    body=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2),
    heads=4,
    rows=2,
    max_length=256,
    steps=2,
    warmup=1,
    e2e_processes=2,
)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def qwen2(shape: dict, heads: int, attn: str, device: str, causal: bool = False) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        **shape,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        is_causal=causal,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device, torch.bfloat16)


def cpu_varlen_attn(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
) -> torch.Tensor:
    """--smoke's stand-in for torch 2.11's `varlen_attn` (CUDA only): (T, H, D), SDPA per segment."""
    bounds = cu_seq_q.tolist()
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                *(s[a:b].transpose(0, 1) for s in (query, key, value)),
                scale=scale,
                is_causal=window_size == (-1, 0),
            ).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
    )


# ------------------------------------------------------------------------- probe and control
@dataclass
class Packed:
    batch: dict[str, torch.Tensor]
    spans: list[tuple[int, int, int]]  # (row, start, length) of each document


def packed_documents(lengths: list[list[int]], vocab: int, device: str) -> Packed:
    """Random-token documents packed into rows as listed, each row ending in 3 padding tokens."""
    width = max(sum(row) for row in lengths) + 3
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (len(lengths), width), generator=generator)
    doc_ids = torch.full((len(lengths), width), -1)
    positions = torch.zeros((len(lengths), width), dtype=torch.long)
    spans = []
    for row, row_lengths in enumerate(lengths):
        start = 0
        for length in row_lengths:
            doc_ids[row, start : start + length] = len(spans)
            positions[row, start : start + length] = torch.arange(length)
            spans.append((row, start, length))
            start += length
    batch = {
        "input_ids": input_ids,
        "doc_ids": doc_ids,
        "positions": positions,
        "example_ids": torch.arange(len(spans)),
        "attention_mask": (doc_ids >= 0).long(),
    }
    return Packed({k: v.to(device) for k, v in batch.items()}, spans)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def probe(model: Qwen2ForCausalLM, attn: str, packed: Packed) -> tuple[float, float, float, float]:
    """(hidden error, layer-0 gradient error, smallest first-token move, largest other-document
    move) of the packed rows under `attn` against each document alone under SDPA."""
    decoder, spans, batch = model.get_decoder(), packed.spans, packed.batch
    layer0 = list(decoder.layers[0].parameters())
    projection = torch.randn(max(n for _, _, n in spans), model.config.hidden_size, device=model.device)

    def packed_hidden(input_ids: torch.Tensor) -> torch.Tensor:
        model.config._attn_implementation = attn
        return decoder(input_ids=input_ids, **attention_inputs(batch, attn, torch.bfloat16)).last_hidden_state

    def documents(hidden: torch.Tensor) -> list[torch.Tensor]:
        return [hidden[row, start : start + n] for row, start, n in spans]

    def objective(hiddens: list[torch.Tensor]) -> torch.Tensor:
        return sum((h.float() * projection[: h.shape[0]]).sum() for h in hiddens)

    together = documents(packed_hidden(batch["input_ids"]))
    grads_together = torch.autograd.grad(objective(together), layer0)
    model.config._attn_implementation = "sdpa"
    alone = [
        decoder(
            input_ids=batch["input_ids"][row, start : start + n][None],
            position_ids=torch.arange(n, device=model.device)[None],
        ).last_hidden_state[0]
        for row, start, n in spans
    ]
    grads_alone = torch.autograd.grad(objective(alone), layer0)
    hidden_error = max(relative(t, a) for t, a in zip(together, alone))
    grad_error = relative(
        torch.cat([g.flatten() for g in grads_together]), torch.cat([g.flatten() for g in grads_alone])
    )

    first_moves, other_moves = [], []
    with torch.no_grad():
        reference = documents(packed_hidden(batch["input_ids"]))
        for changed, (row, start, n) in enumerate(spans):
            input_ids = batch["input_ids"].clone()
            input_ids[row, start + n - 1] = (input_ids[row, start + n - 1] + 1) % model.config.vocab_size
            moved = documents(packed_hidden(input_ids))
            first_moves.append(relative(moved[changed][0], reference[changed][0]))
            other_moves += [relative(m, r) for k, (m, r) in enumerate(zip(moved, reference)) if k != changed]
    return hidden_error, grad_error, min(first_moves), max(other_moves, default=0.0)


def check_probes(sizes: Sizes, attns: list[str], device: str) -> Iterator[tuple[str, bool]]:
    packed = packed_documents(sizes.documents, sizes.probe["vocab_size"], device)
    docs = f"docs={len(packed.spans)} rows={len(sizes.documents)}"
    for causal in (False, True):
        model = qwen2(sizes.probe, 4, "sdpa", device, causal=causal)
        for attn in attns:
            hidden, grad, first, others = probe(model, attn, packed)
            numbers = (
                f"hidden_err={hidden:.1e} grad_err={grad:.1e} "
                f"first_moved>={first:.1e} others_moved<={others:.1e}"
            )
            no_leak = hidden <= HIDDEN_TOLERANCE and grad <= GRAD_TOLERANCE and others <= STILL
            bidirectional = first >= MOVES
            if not causal:
                yield f"probe attn={attn} {docs} {numbers}", no_leak and bidirectional
            else:  # the positive control: the probe must see that a causal model is not bidirectional
                yield f"control causal_model attn={attn} {numbers} probe=FAIL(expected)", not bidirectional


# --------------------------------------------------------------------- throughput and baseline
def random_documents(rng: np.random.Generator, tokens: int, max_length: int, vocab: int):
    """Random-token documents with lognormal prompt and response lengths (medians max_length/32 and
    max_length/12: ~128 and ~340 tokens at 4096, several documents per packed row at any size)."""
    import datasets

    docs, total = [], 0
    while total < tokens:
        prompt = int(np.clip(rng.lognormal(math.log(max_length / 32), 1.0), 4, max_length // 2))
        response = int(np.clip(rng.lognormal(math.log(max_length / 12), 0.9), 4, max_length - prompt - 16))
        ids = rng.integers(0, vocab - 16, prompt + response).tolist()
        docs.append({"input_ids": ids, "prompt_length": prompt, "truncated": False, "example_id": len(docs)})
        total += prompt + response
    return datasets.Dataset.from_list(docs)


@dataclass
class Timed:
    tokens_per_s: float
    tflops: float
    peak_gib: float
    losses_finite: bool


def timed(
    step: Callable[[dict], tuple[torch.Tensor, float]], model, batches, sizes: Sizes, device: str
) -> Timed:
    """`warmup` untimed, then `steps` timed AdamW steps; `step(batch)` returns (loss, model FLOPs)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    tokens, flops, finite, start = 0, 0.0, True, 0.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for index, batch in zip(range(sizes.warmup + sizes.steps), batches):
        if index == sizes.warmup:
            synchronize(device)
            start, tokens, flops = time.perf_counter(), 0, 0.0
        loss, step_flops = step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        finite &= bool(torch.isfinite(loss.detach()))
        tokens += int(batch["attention_mask"].sum())
        flops += step_flops
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del optimizer
    return Timed(tokens / seconds, flops / seconds / 1e12, peak, finite)


def attention_flops(model, batch: dict, causal: bool) -> float:
    lengths = torch.bincount(batch["doc_ids"][batch["doc_ids"] >= 0]).double()
    config = model.config
    return (6 if causal else 12) * config.num_hidden_layers * config.hidden_size * float((lengths**2).sum())


def mfu(tflops: float, gpu: str) -> str:
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    return f"mfu={tflops / peak:.3f}" if peak else "mfu=n/a(no bf16 peak known for this device)"


def memory(peak_gib: float) -> str:
    return "peak=n/a(cpu)" if math.isnan(peak_gib) else f"peak={peak_gib:.2f}GiB"


def check_throughput(sizes: Sizes, device: str, gpu: str, workdir: Path) -> Iterator[tuple[str, bool]]:
    attn = resolve_attn_implementation("auto")
    model = qwen2(sizes.body, sizes.heads, attn, device)
    args = DiffusionSFTConfig(
        output_dir=str(workdir / "throughput"),
        report_to=[],
        bf16=True,
        use_cpu=device == "cpu",
        eos_tail="first_n",
        eos_tail_n=16,
        mask_token_id=model.config.vocab_size - 2,
        activation_checkpointing=False,
        per_device_train_batch_size=sizes.rows,
        max_length=sizes.max_length,
    )
    eos = model.config.vocab_size - 1
    tokens = (sizes.steps + sizes.warmup) * sizes.rows * sizes.max_length
    docs = random_documents(np.random.default_rng(0), tokens, sizes.max_length, eos)
    collator = DiffusionCollator.from_args(args, eos, sizes.max_length, docs)
    rows = pack_examples(docs, collator)
    model.config.mask_token_id = args.mask_token_id  # the family reads the mask token from the config
    trainer = DiffusionSFTTrainer(
        model,
        args,
        data_collator=collator,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(QUICKSTART_MODEL),  # saved with checkpoints only
    )
    batches = [
        {k: v.to(device) for k, v in collator([rows[i] for i in range(s, s + sizes.rows)]).items()}
        for s in range(0, (sizes.steps + sizes.warmup) * sizes.rows, sizes.rows)
    ]
    body = sum(
        p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    hidden, vocab = model.config.hidden_size, model.config.vocab_size

    def diffusion_step(batch: dict) -> tuple[torch.Tensor, float]:
        trainer.state.global_step += 1
        trainer._noise_sums.clear()
        loss = trainer.compute_loss(model, batch)
        masked = float(trainer._noise_sums.pop("train")[0])
        tokens = int(batch["attention_mask"].sum())
        return loss, 6 * body * tokens + 6 * hidden * vocab * masked + attention_flops(model, batch, False)

    def ar_step(batch: dict) -> tuple[torch.Tensor, float]:
        labels = batch["input_ids"].masked_fill((batch["doc_ids"] < 0) | (batch["positions"] == 0), -100)
        loss = model(
            input_ids=batch["input_ids"],
            labels=labels,
            **attention_inputs(batch, attn, torch.bfloat16),
        ).loss
        tokens = int(batch["attention_mask"].sum())
        return loss, 6 * body * tokens + 6 * hidden * vocab * tokens + attention_flops(model, batch, True)

    diffusion = timed(diffusion_step, model, batches, sizes, device)
    estimate = plan_estimate_gib(model, args, sizes, attn)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    shape = f"params={params:.2f}B vocab={vocab} rows={sizes.rows}x{sizes.max_length}"
    yield (
        f"throughput diffusion attn={attn} {shape} bf16 fused_head tok_s={diffusion.tokens_per_s:.0f} "
        f"model_tflops={diffusion.tflops:.1f} {mfu(diffusion.tflops, gpu)} {memory(diffusion.peak_gib)} "
        f"plan={estimate:.2f}GiB",
        diffusion.losses_finite,
    )
    model.config.is_causal = True
    ar = timed(ar_step, model, batches, sizes, device)
    model.config.is_causal = False
    yield (
        f"baseline ar_full_logits attn={attn} same rows tok_s={ar.tokens_per_s:.0f} "
        f"model_tflops={ar.tflops:.1f} {mfu(ar.tflops, gpu)} {memory(ar.peak_gib)} "
        f"diffusion/ar_tok_s={diffusion.tokens_per_s / ar.tokens_per_s:.2f}",
        ar.losses_finite,
    )


def plan_estimate_gib(model, args: DiffusionSFTConfig, sizes: Sizes, attn: str) -> float:
    """`dlm-sft plan`'s per-GPU total for this shape and batch (one process, no sharding)."""
    run = RunConfig(
        model=ModelSettings(name_or_path="qwen2.5-0.5b-shape", dtype="bfloat16", attn_implementation=attn),
        data=DataSettings(max_length=sizes.max_length, batching="pack"),
        training=args,
    )
    return estimate_memory(run, shape_from_config(model.config.to_dict()), "ddp", 1).total / 2**30


# ------------------------------------------------------------------------------ block diffusion
def check_block(sizes: Sizes, device: str, workdir: Path) -> tuple[str, bool]:
    """Block diffusion's [x_t ; x_0] rows (packed): the trainer's loss and gradients with
    flex-attention's BlockMask (what `auto` takes on CUDA) against SDPA's dense mask, and the time of
    a forward + backward under each (the second call: the first compiles flex-attention). Under
    --smoke the loss only: flex-attention has no backward pass on the CPU."""
    model = qwen2(sizes.probe, 4, "sdpa", device)
    vocab, max_length, block = model.config.vocab_size, sizes.max_length // 4, max(sizes.max_length // 256, 4)
    args = DiffusionSFTConfig(
        output_dir=str(workdir / "block"),
        report_to=[],
        bf16=True,
        use_cpu=device == "cpu",
        eos_tail="first_n",
        eos_tail_n=4,
        block_size=block,
        mask_token_id=vocab - 2,
        activation_checkpointing=False,
        per_device_train_batch_size=2,
        max_length=max_length,
    )
    docs = random_documents(np.random.default_rng(1), 4 * max_length, max_length, vocab - 1)
    collator = DiffusionCollator.from_args(args, vocab - 1, max_length, docs)
    rows = pack_examples(docs, collator)
    model.config.mask_token_id = args.mask_token_id
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    trainer = DiffusionSFTTrainer(
        model, args, data_collator=collator, train_dataset=rows, processing_class=tokenizer
    )
    batch = {k: v.to(device) for k, v in collator([rows[0], rows[1]]).items()}
    model.train()
    runs = {}
    for attn in ("sdpa", "flex_attention"):
        model.set_attn_implementation(attn)
        with torch.set_grad_enabled(device == "cuda"):
            for _ in range(2):
                model.zero_grad(set_to_none=True)
                synchronize(device)
                start = time.perf_counter()
                loss = trainer.compute_loss(model, batch)
                if loss.requires_grad:
                    loss.backward()
                synchronize(device)
                milliseconds = 1000 * (time.perf_counter() - start)
        grads = [p.grad.flatten().float() for p in model.parameters() if p.grad is not None]
        runs[attn] = (loss.detach().float(), torch.cat(grads) if grads else None, milliseconds)
    (loss_dense, grad_dense, ms_dense), (loss_flex, grad_flex, ms_flex) = runs.values()
    loss_error = relative(loss_flex, loss_dense)
    grad_error = relative(grad_flex, grad_dense) if grad_dense is not None else float("nan")
    ok = loss_error <= HIDDEN_TOLERANCE and (grad_dense is None or grad_error <= GRAD_TOLERANCE)
    return (
        f"block flex_attention_vs_sdpa block_size={block} rows=2x{batch['input_ids'].shape[1]}x2 "
        f"loss_err={loss_error:.1e} grad_err={grad_error:.1e} "
        f"step_ms flex={ms_flex:.0f} sdpa_dense={ms_dense:.0f}",
        ok,
    )


# ----------------------------------------------------------------------------------- e2e
def dream_layout_checkpoint(directory: Path) -> Path:
    """A tiny Dream release-layout checkpoint: a bidirectional Qwen2 body under Dream's config keys."""
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    raw = json.loads((directory / "config.json").read_text())
    raw.pop("is_causal", None)
    raw.update(
        model_type="Dream",
        architectures=["DreamModel"],
        mask_token_id=tokenizer.convert_tokens_to_ids("<|mask|>"),
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    )
    (directory / "config.json").write_text(json.dumps(raw))
    return directory


def dlm_sft(*args: str) -> subprocess.CompletedProcess:
    """`dlm-sft ARGS` as `python -m sft.cli` from the checkout (with `accelerate` found beside python)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [sys.executable, "-m", "sft.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def check_e2e(sizes: Sizes, device: str, workdir: Path) -> tuple[str, bool]:
    model_dir = dream_layout_checkpoint(workdir / "dream")
    data = workdir / "sort.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in make_rows(64, seed=0)))
    run = workdir / "run"
    recipe = {
        "model": {"name_or_path": str(model_dir), "attn_implementation": "auto"},
        "data": {
            "train": str(data),
            "max_length": 64,
            "batching": "pack",
            "cache_dir": str(workdir / "cache"),
        },
        "diffusion": {"eos_tail": "first_n", "eos_tail_n": 4},
        "training": {
            "output_dir": str(run),
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-4,
            "bf16": device == "cuda",
            "activation_checkpointing": True,
            "report_to": [],
            "save_strategy": "no",
            "logging_steps": 1,
            "disable_tqdm": True,
        },
    }
    recipe_file = workdir / "dream.yaml"
    recipe_file.write_text(json.dumps(recipe))  # JSON is YAML
    processes = str(sizes.e2e_processes)
    steps = [
        ("train", ["train", str(recipe_file), "--accelerate", "ddp", "--num-processes", processes]),
        ("export", ["export", str(run), "--output", str(workdir / "export")]),
        (
            "generate",
            ["generate", str(workdir / "export"), "--prompt", "sort: 3 1 2", "--max-new-tokens", "8"],
        ),
    ]
    for name, args in steps:
        result = dlm_sft(*args)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            return f"e2e dream_tiny {name} failed (exit {result.returncode}): {tail[0][:300]}", False
    record = json.loads((run / "dlm_run.json").read_text())
    loss, steps_done = record["final_train_loss"], record["global_step"]
    ok = steps_done == 2 and loss is not None and math.isfinite(loss) and bool(result.stdout.strip())
    return (
        f"e2e dream_tiny accelerate_processes={processes} packed train steps={steps_done} loss={loss:.3f} "
        f"export generate={json.dumps(result.stdout.strip()[-40:])}",
        ok,
    )


# ----------------------------------------------------------------------------------- main
def attention_paths(device: str) -> list[str]:
    paths = ["sdpa"]
    if device == "cpu" or sft.families.attention.varlen_attn is not None:
        paths.append(TORCH_VARLEN)
    from transformers.utils import is_flash_attn_2_available

    if device == "cuda" and is_flash_attn_2_available():
        paths.append("flash_attention_2")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: the code path only")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU (or --smoke for the CPU code path)", file=sys.stderr)
        return 2
    device, sizes = ("cpu", SMOKE) if args.smoke else ("cuda", FULL)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    if device == "cpu":
        sft.families.attention.varlen_attn = cpu_varlen_attn  # the CUDA kernel's stand-in
    attns = attention_paths(device)
    print(
        f"# device={gpu} torch={torch.__version__} transformers={transformers.__version__} "
        f"attention_paths={','.join(attns)}",
        flush=True,
    )
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        checks = (
            lambda: check_probes(sizes, attns, device),
            lambda: check_throughput(sizes, device, gpu, Path(tmp)),
            lambda: [check_block(sizes, device, Path(tmp))],
            lambda: [check_e2e(sizes, device, Path(tmp))],
        )
        for check in checks:
            for line, ok in check():
                print(f"{line} {verdict(ok)}", flush=True)
                results.append(ok)
    failed = results.count(False)
    print(
        f"summary device={gpu} checks={len(results)} passed={len(results) - failed} failed={failed} "
        f"seconds={time.perf_counter() - start:.0f} {verdict(failed == 0)}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
