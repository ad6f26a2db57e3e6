"""Standard errors of the two ELBO estimators (`count`, `bernoulli`) against the exact ELBO.

    dlm-sft quickstart training.output_dir=runs/quickstart      # a trained model (about a minute)
    python benchmarks/elbo_estimators.py [--checkpoint runs/quickstart] [--rows 6] [--samples 128]

For a few held-out sort-digits prompts (chat-rendered) it scores two continuations each — the
reference answer and a wrong one (its digits reversed) — with both estimators at `--samples`
samples and prints, per continuation, the exact ELBO (every mask enumerated: 2^L forwards, so only
for continuations of at most 10 tokens), each estimator's mean and its standard error as a share
of |exact ELBO|, as a markdown table (docs/evaluation.md quotes one).
"""

from __future__ import annotations

import argparse
import itertools
import math

import pyarrow.parquet as pq
import torch

from sft.evaluation.likelihood import LikelihoodSettings, elbo_samples, summarize
from sft.sampling.loading import load_for_sampling


@torch.no_grad()
def exact_elbo(model, context: list[int], continuation: list[int], mask_id: int, shift: bool) -> float:
    """Σ over non-empty masked sets S of g(S)·(|S|-1)!(L-|S|)!/L! (the t-integral done exactly)."""
    length = len(continuation)
    subsets = [s for size in range(1, length + 1) for s in itertools.combinations(range(length), size)]
    total = 0.0
    for start in range(0, len(subsets), 256):
        chunk = subsets[start : start + 256]
        rows = [context + [mask_id if i in s else x for i, x in enumerate(continuation)] for s in chunk]
        log_probs = model(input_ids=torch.tensor(rows)).logits.double().log_softmax(-1)
        for r, subset in enumerate(chunk):
            g = sum(float(log_probs[r, len(context) + i - shift, continuation[i]]) for i in subset)
            size = len(subset)
            total += g * math.factorial(size - 1) * math.factorial(length - size) / math.factorial(length)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="runs/quickstart")
    parser.add_argument("--data", default="recipes/quickstart/data/eval.parquet")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_for_sampling(args.checkpoint, device="cpu")
    tokenizer, model = loaded.tokenizer, loaded.model.eval()
    shift = loaded.family.shift
    rows = pq.read_table(args.data).to_pylist()[: args.rows]
    requests = []
    for row in rows:
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]
        context = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
        context = list(context["input_ids"] if hasattr(context, "keys") else context)
        answer = row["messages"][-1]["content"]
        for label, text in (
            ("right", answer),
            ("wrong", answer[::-1] if answer[::-1] != answer else answer + "1"),
        ):
            continuation = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
            requests.append((f"{prompt[-1]['content']} → {text} ({label})", context, continuation))
    contexts = [c for _, c, _ in requests]
    continuations = [x for _, _, x in requests]
    results = {}
    for estimator in ("count", "bernoulli"):
        settings = LikelihoodSettings(mc_samples=args.samples, seed=args.seed, estimator=estimator)
        samples = elbo_samples(
            model,
            contexts,
            continuations,
            settings,
            mask_token_id=loaded.mask_token_id,
            pad_token_id=tokenizer.pad_token_id,
            shift=shift,
            batch_size=256,
        )
        results[estimator] = summarize(samples)
    print(f"{args.samples} samples per estimate, seed {args.seed}, checkpoint {args.checkpoint}\n")
    print("| continuation | L | exact ELBO | count mean | count SE | bernoulli mean | bernoulli SE |")
    print("|---|---|---|---|---|---|---|")
    shares: dict[str, list[float]] = {"count": [], "bernoulli": []}
    for i, (label, context, continuation) in enumerate(requests):
        exact = (
            exact_elbo(model, context, continuation, loaded.mask_token_id, shift)
            if len(continuation) <= 10
            else None
        )
        scale = abs(exact) if exact else abs(results["count"][i].mean)
        cells = []
        for estimator in ("count", "bernoulli"):
            estimate = results[estimator][i]
            share = estimate.standard_error / scale
            shares[estimator].append(share)
            cells += [f"{estimate.mean:.3f}", f"{estimate.standard_error:.3f} ({100 * share:.1f}%)"]
        exact_cell = f"{exact:.3f}" if exact is not None else "—"
        print(f"| {label} | {len(continuation)} | {exact_cell} | " + " | ".join(cells) + " |")
    for estimator, values in shares.items():
        print(f"\n{estimator}: SE / |ELBO| from {100 * min(values):.1f}% to {100 * max(values):.1f}%", end="")
    print()


if __name__ == "__main__":
    main()
