"""GPU training throughput and model FLOPs utilisation (MFU) of a ~0.5B Qwen2-shaped diffusion LM.

Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocab
151,936), bf16, FlashAttention-2 when installed (SDPA otherwise), packed rows of documents with a
long-tailed length mix, AdamW; the step is this toolkit's `DiffusionSFTTrainer.compute_loss`
(logits only at masked positions). Needs a CUDA GPU; target: >= 40% MFU on an H100/H200.

    python benchmarks/gpu_mfu.py [--steps 30] [--rows 8] [--max-length 4096] [--peak-tflops 989]

Model FLOPs per step = 6·(non-embedding parameters)·tokens + 6·hidden·vocab·(masked tokens)
+ 12·layers·hidden·Σ_documents length² (bidirectional attention within each document).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(name: str) -> float | None:
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def documents(rng: np.random.Generator, count_tokens: int, max_length: int, vocab: int) -> list[dict]:
    """Random-token documents with lognormal prompt and response lengths, as tokenized examples."""
    docs: list[dict] = []
    total = 0
    while total < count_tokens:
        prompt = int(np.clip(rng.lognormal(5.0, 1.0), 8, max_length // 2))
        response = int(np.clip(rng.lognormal(5.8, 0.9), 8, max_length - prompt - 16))
        docs.append(
            {
                "input_ids": rng.integers(0, vocab - 16, prompt + response).tolist(),
                "prompt_length": prompt,
                "truncated": False,
                "example_id": len(docs),
            }
        )
        total += prompt + response
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny model on the CPU: checks the code path only"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.rows, args.max_length = 2, 1, 2, 256
    elif not torch.cuda.is_available():
        print("gpu_mfu.py needs a CUDA GPU (or --smoke for a CPU check of the code path)", file=sys.stderr)
        return 2
    device = "cpu" if args.smoke else "cuda"
    import datasets
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from sft.collate import DiffusionCollator, pack_examples
    from sft.config import DiffusionSFTConfig
    from sft.families.base import resolve_attn_implementation
    from sft.trainer import DiffusionSFTTrainer

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    peak = args.peak_tflops or peak_tflops(name)
    attn = resolve_attn_implementation("flash_attention_2")
    shape = dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
    )
    if args.smoke:
        shape = dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2
        )
    config = Qwen2Config(
        **shape,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        is_causal=False,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device, torch.bfloat16)
    mask_id, eos_id = config.vocab_size - 2, config.vocab_size - 1

    rng = np.random.default_rng(0)
    tokens_needed = (args.steps + args.warmup) * args.rows * args.max_length
    examples = datasets.Dataset.from_list(documents(rng, tokens_needed, args.max_length, config.vocab_size))
    training = DiffusionSFTConfig(
        output_dir="/tmp/gpu-mfu",
        report_to=[],
        bf16=True,
        use_cpu=device == "cpu",
        eos_tail="first_n",
        eos_tail_n=16,
        mask_token_id=mask_id,
        activation_checkpointing=args.activation_checkpointing,
    )
    collator = DiffusionCollator.from_args(training, eos_id, args.max_length, examples)
    rows = pack_examples(examples, collator)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "recipes" / "quickstart" / "model")  # saved, never used
    trainer = DiffusionSFTTrainer(
        model,
        training,
        eos_token_id=eos_id,
        max_length=args.max_length,
        data_collator=collator,
        train_dataset=rows,
        processing_class=tokenizer,
    )
    model = trainer.model
    model.train()
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    body = sum(
        p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )

    flops = 0.0
    tokens = 0
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            start, flops, tokens = time.perf_counter(), 0.0, 0
        batch = collator([rows[i] for i in range(step * args.rows, (step + 1) * args.rows)])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        trainer.state.global_step = step
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real = int(batch["attention_mask"].sum())
        masked = float(trainer._metrics["train"]["masked_tokens"][-1])
        doc_lengths = torch.bincount(batch["doc_ids"][batch["doc_ids"] >= 0]).double()
        flops += (
            6 * body * real
            + 6 * config.hidden_size * config.vocab_size * masked
            + 12 * config.num_hidden_layers * config.hidden_size * float((doc_lengths**2).sum())
        )
        tokens += real
    synchronize(device)
    seconds = time.perf_counter() - start
    achieved = flops / seconds / 1e12
    print(
        f"gpu: {name}; attention: {attn}; rows {args.rows} x {args.max_length} packed; bf16; "
        f"activation checkpointing {args.activation_checkpointing}"
    )
    print(
        f"tokens/s: {tokens / seconds:.0f}  model TFLOP/s: {achieved:.1f}  peak memory: "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )
    if peak:
        print(f"mfu={achieved / peak:.3f} (peak {peak:.0f} TFLOP/s bf16)")
    else:
        print("mfu unknown: pass --peak-tflops for this GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
