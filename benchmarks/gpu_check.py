"""The GPU path in one run on one GPU: five checks, one line each (about 8 minutes on an H100/H200).

Needs only torch, transformers and this package (flash-attn when importable, SDPA otherwise) and
downloads nothing: the models are built from configs, the tokenizer is the quickstart's.

    python benchmarks/gpu_check.py           # on a CUDA GPU; paste the lines into benchmarks/RESULTS.md
    python benchmarks/gpu_check.py --smoke   # every check's code path on the CPU at toy size (the suite)

a  packed parity: 4 packed rows per device batch under each attention implementation against the
   same documents padded one per row under SDPA: loss and hidden states (documents must not leak)
b  pad vs pack: real (non-padding) tokens/s training on the same documents, one per row vs packed
c  MFU of a Qwen2.5-0.5B-shaped diffusion LM (hidden 896, 24 layers, vocab 151,936), bf16, packed,
   AdamW, this toolkit's `compute_loss` (logits only at masked positions); target >= 40%
d  peak GPU memory of (c) against `dlm-sft plan`'s estimate (`sft/planning/memory.py`) for the same
   shape, batch and settings
e  two optimizer steps each of LoRA and of full fine-tuning of a tiny Dream-layout checkpoint through
   `dlm-sft train`'s code (`sft.training.run.train`), bf16, activation checkpointing on

Model FLOPs per step (c) = 6·(non-embedding parameters)·tokens + 6·hidden·vocab·(masked tokens)
+ 12·layers·hidden·Σ_documents length² (bidirectional attention within each document).
The process exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import is_flash_attn_2_available

from sft.config import DataSettings, DiffusionSFTConfig, ModelSettings, RunConfig
from sft.data.collate import DiffusionCollator, pack_examples
from sft.planning.memory import estimate_memory
from sft.planning.shapes import shape_from_config
from sft.recipe import build_run_config
from sft.tasks.sort_digits import make_rows
from sft.training.attention import attention_inputs
from sft.training.run import train
from sft.training.trainer import DiffusionSFTTrainer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_MODEL = ROOT / "recipes" / "quickstart" / "model"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
MFU_TARGET = 0.40
PARITY_TOLERANCE = 2e-2  # relative L2 error of the hidden states, bf16 (a leak: >= 1e-1)
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24)
TOY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2)


@dataclass
class Sizes:
    shape: dict
    heads: int
    rows: int  # packed rows per device batch in (b)-(d)
    max_length: int
    steps: int
    warmup: int


FULL = Sizes(QWEN25_05B, heads=14, rows=8, max_length=4096, steps=20, warmup=3)
SMOKE = Sizes(TOY, heads=2, rows=2, max_length=256, steps=2, warmup=1)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def documents(rng: np.random.Generator, tokens: int, max_length: int, vocab: int) -> datasets.Dataset:
    """Random-token documents with lognormal prompt and response lengths (medians max_length/32 and
    max_length/12: ~128 and ~340 tokens at 4096, several documents per packed row at any size)."""
    docs, total = [], 0
    while total < tokens:
        prompt = int(np.clip(rng.lognormal(math.log(max_length / 32), 1.0), 4, max_length // 2))
        response = int(np.clip(rng.lognormal(math.log(max_length / 12), 0.9), 4, max_length - prompt - 16))
        ids = rng.integers(0, vocab - 16, prompt + response).tolist()
        docs.append({"input_ids": ids, "prompt_length": prompt, "truncated": False, "example_id": len(docs)})
        total += prompt + response
    return datasets.Dataset.from_list(docs)


def qwen2_model(sizes: Sizes, device: str, attn: str) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        **sizes.shape,
        num_attention_heads=sizes.heads,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        is_causal=False,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device, torch.bfloat16)


def make_trainer(model, args: DiffusionSFTConfig, collator: DiffusionCollator, rows) -> DiffusionSFTTrainer:
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)  # saved with checkpoints, never used here
    return DiffusionSFTTrainer(
        model,
        args,
        data_collator=collator,
        train_dataset=rows,
        processing_class=tokenizer,
    )


def batches(collator: DiffusionCollator, rows, per_batch: int, device: str):
    for start in range(0, len(rows) - per_batch + 1, per_batch):
        batch = collator([rows[i] for i in range(start, start + per_batch)])
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------- (a)
def check_parity(
    trainer: DiffusionSFTTrainer, pack: DiffusionCollator, rows, attns: list[str], device: str
) -> str:
    """4 packed rows under each implementation vs the same documents padded one per row under SDPA:
    the loss (evaluation noise, so the same masks) and the backbone's output at every document
    token. The loss of a random-weight model hardly depends on context, so the verdict is on the
    hidden states, which a leak across documents moves by ~10% even at 2 layers."""
    model, docs = trainer.model, pack.examples
    packed = pack([rows[i] for i in range(4)])
    padded = DiffusionCollator(pack.eos_token_id, pack.max_length, pack.eos_tail, pack.eos_tail_n)(
        [docs[i] for i in packed["example_ids"].tolist()]  # example ids are indices into `docs`
    )

    def run(batch: dict, attn: str) -> tuple[float, torch.Tensor]:
        """(loss, hidden states at document tokens ordered by (example id, position))."""
        model.config._attn_implementation = attn
        batch = {k: v.to(device) for k, v in batch.items()}
        rows, cols = (batch["doc_ids"] >= 0).nonzero(as_tuple=True)
        order = torch.argsort(
            batch["example_ids"][batch["doc_ids"][rows, cols]] * 2**20 + batch["positions"][rows, cols]
        )
        with torch.no_grad():
            loss = float(trainer.compute_loss(model, batch))
            inputs = attention_inputs(batch, attn, torch.bfloat16)
            hidden = model.get_decoder()(input_ids=batch["input_ids"], **inputs).last_hidden_state
        return loss, hidden[rows, cols][order].float()

    model.eval()
    loss_ref, hidden_ref = run(padded, "sdpa")
    parts, ok = [], True
    for attn in attns:
        loss, hidden = run(packed, attn)
        error = float((hidden - hidden_ref).norm() / hidden_ref.norm())
        parts.append(
            f"{attn}: loss_rel_diff={abs(loss - loss_ref) / loss_ref:.1e} hidden_rel_err={error:.1e}"
        )
        ok &= error <= PARITY_TOLERANCE
    model.train()
    model.config._attn_implementation = attns[0]
    docs_in_rows = len(packed["example_ids"])
    return (
        f"a packed_parity_vs_sdpa_padded batch=4 docs={docs_in_rows} {' '.join(parts)} "
        f"tol={PARITY_TOLERANCE:g} {verdict(ok)}"
    )


# --------------------------------------------------------------------------- (b)-(d)
@dataclass
class Timed:
    seconds: float
    tokens: int
    flops: float


def timed_training(trainer, batch_stream, sizes: Sizes, device: str) -> Timed:
    """`warmup` untimed steps, then `steps` timed AdamW steps; model FLOPs as in the docstring."""
    model, config = trainer.model, trainer.model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    body = sum(
        p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    tokens, attention_flops, start = 0, 0.0, 0.0
    for step, batch in zip(range(sizes.warmup + sizes.steps), batch_stream):
        if step == sizes.warmup:
            synchronize(device)
            trainer._noise_sums.clear()  # masked tokens are counted from here
            start, tokens, attention_flops = time.perf_counter(), 0, 0.0
        trainer.state.global_step = step
        trainer.compute_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        lengths = torch.bincount(batch["doc_ids"][batch["doc_ids"] >= 0]).double()
        attention_flops += 12 * config.num_hidden_layers * config.hidden_size * float((lengths**2).sum())
    synchronize(device)
    seconds = time.perf_counter() - start
    masked = float(trainer._noise_sums.pop("train")[0])
    flops = 6 * body * tokens + 6 * config.hidden_size * config.vocab_size * masked + attention_flops
    return Timed(seconds, tokens, flops)


def plan_estimate_gib(model, args: DiffusionSFTConfig, sizes: Sizes, attn: str) -> float:
    """`dlm-sft plan`'s per-GPU total for this shape and batch (one process, no sharding)."""
    run = RunConfig(
        model=ModelSettings(name_or_path="qwen2.5-0.5b-shape", dtype="bfloat16", attn_implementation=attn),
        data=DataSettings(max_length=sizes.max_length, batching="pack"),
        training=args,
    )
    return estimate_memory(run, shape_from_config(model.config.to_dict()), "ddp", 1).total / 2**30


def check_throughput(sizes: Sizes, device: str, attn: str, gpu: str, workdir: Path) -> Iterator[str]:
    model = qwen2_model(sizes, device, attn)
    model.config.mask_token_id = model.config.vocab_size - 2
    args = DiffusionSFTConfig(
        output_dir=str(workdir / "throughput"),
        report_to=[],
        bf16=True,
        use_cpu=device == "cpu",
        eos_tail="first_n",
        eos_tail_n=16,
        activation_checkpointing=False,
        per_device_train_batch_size=sizes.rows,
    )
    eos = model.config.vocab_size - 1
    rng = np.random.default_rng(0)
    docs = documents(rng, (sizes.steps + sizes.warmup) * sizes.rows * sizes.max_length, sizes.max_length, eos)
    pack = DiffusionCollator.from_args(args, eos, sizes.max_length, docs)
    packed_rows = pack_examples(docs, pack)
    trainer = make_trainer(model, args, pack, packed_rows)
    yield check_parity(trainer, pack, packed_rows, [attn, "sdpa"] if attn != "sdpa" else ["sdpa"], device)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    packed = timed_training(trainer, batches(pack, packed_rows, sizes.rows, device), sizes, device)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    pad = DiffusionCollator.from_args(args, eos, sizes.max_length)  # as many rows, one document each
    padded = timed_training(trainer, batches(pad, docs, sizes.rows, device), sizes, device)

    pack_rate, pad_rate = packed.tokens / packed.seconds, padded.tokens / padded.seconds
    yield (
        f"b pad_vs_pack attn={attn} rows={sizes.rows} max_length={sizes.max_length} "
        f"pack_tok_s={pack_rate:.0f} pad_tok_s={pad_rate:.0f} pack/pad={pack_rate / pad_rate:.2f}"
    )
    tflops = packed.flops / packed.seconds / 1e12
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    mfu = "mfu=n/a (no bf16 peak known for this device)"
    if peak:
        mfu = f"mfu={tflops / peak:.3f} target>={MFU_TARGET} {verdict(tflops / peak >= MFU_TARGET)}"
    params = sum(p.numel() for p in model.parameters()) / 1e9
    yield f"c mfu params={params:.2f}B bf16 packed attn={attn} model_tflops={tflops:.2f} {mfu}"
    estimate = plan_estimate_gib(model, args, sizes, attn)
    measured = "n/a (cpu)" if math.isnan(peak_gib) else f"{peak_gib:.2f}GiB"
    ratio = "" if math.isnan(peak_gib) else f" measured/plan={peak_gib / estimate:.2f}"
    yield f"d peak_memory measured={measured} plan={estimate:.2f}GiB{ratio}"


# --------------------------------------------------------------------------- (e)
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


def check_dream_runs(device: str, attn: str, workdir: Path) -> str:
    model_dir = dream_layout_checkpoint(workdir / "dream")
    data = workdir / "sort.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in make_rows(32, seed=0)))
    results = []
    for method, lora in (("lora", {"r": 8, "alpha": 16}), ("full", None)):
        raw = {
            "model": {"name_or_path": str(model_dir), "attn_implementation": attn},
            "data": {"train": str(data), "max_length": 64, "cache_dir": str(workdir / "tokenized")},
            "diffusion": {"eos_tail": "first_n", "eos_tail_n": 4},
            "training": {
                "output_dir": str(workdir / method),
                "max_steps": 2,
                "per_device_train_batch_size": 4,
                "learning_rate": 1e-4,
                "bf16": True,
                "activation_checkpointing": True,
                "use_cpu": device == "cpu",
                "report_to": [],
                "save_strategy": "no",
                "logging_steps": 1,
                "disable_tqdm": True,
            },
        }
        if lora:
            raw["lora"] = lora
        trainer = train(build_run_config(raw))
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        ok = trainer.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
        ok = ok and trainer.model.is_activation_checkpointing and trainer.args.shift
        results.append((method, ok, losses))
    parts = " ".join(f"{m}_losses={','.join(f'{x:.3f}' for x in losses)}" for m, _, losses in results)
    return f"e dream_tiny bf16 activation_checkpointing {parts} {verdict(all(ok for _, ok, _ in results))}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(line: str) -> bool:
    """Print a check's line; whether it failed."""
    print(line, flush=True)
    return line.endswith("FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: the code path only")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU (or --smoke for the CPU code path)", file=sys.stderr)
        return 2
    device, sizes = ("cpu", SMOKE) if args.smoke else ("cuda", FULL)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    attn = "flash_attention_2" if device == "cuda" and is_flash_attn_2_available() else "sdpa"
    print(f"# device={gpu} torch={torch.__version__} transformers={transformers.__version__} attn={attn}")
    start, failed = time.perf_counter(), False
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for line in check_throughput(sizes, device, attn, gpu, Path(tmp)):
            failed |= report(line)
        failed |= report(check_dream_runs(device, attn, Path(tmp)))
    print(f"# {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
