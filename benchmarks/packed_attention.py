"""What attention over packed rows costs: the model body's forward + backward, pad vs pack.

The same examples and EOS policy as `train_throughput.py` (its fixture: Qwen2 with Qwen2.5's
vocabulary; EOS tail `first_n` 16, batch 4), timed through the model body only (embeddings,
layers, final norm; the loss head is the same work in every mode and is left out):

- pad:        one example per row, rows padded to the batch's longest, 2-D mask;
- pack:       best-fit-decreasing rows, SDPA run per document (`sft.families.attention`);
- pack-dense: the same rows with the block-diagonal mask as one dense L×L SDPA call (what packed
              rows cost before; the mask eager gets).

Time is this process's CPU time (run it with OMP_NUM_THREADS=1): on a shared machine the wall
clock mostly measures the other tenants. Each batch is timed `--repeats` times, modes
interleaved, and its least time kept. Reported: positions/s of each mode and the supervised
(response) tokens/s, on which pad and pack do the same work.

    OMP_NUM_THREADS=1 python benchmarks/packed_attention.py [--hidden 512 --layers 4]

Last line: `pack/pad supervised_tokens_per_s=R pack/pack-dense=R`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_throughput import make_fixture  # noqa: E402

from sft.config import DataSettings, ModelSettings  # noqa: E402
from sft.data.collate import DiffusionCollator, pack_examples  # noqa: E402
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_dataset  # noqa: E402
from sft.families.attention import attention_inputs  # noqa: E402
from sft.families.loader import load_model  # noqa: E402


def body_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], inputs: dict) -> float:
    """CPU seconds for one forward + backward of the model body on `batch`."""
    start = time.process_time()
    hidden = model.get_decoder()(input_ids=batch["input_ids"], use_cache=False, **inputs).last_hidden_state
    hidden[batch["doc_ids"] >= 0].square().mean().backward()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--workdir", default="/tmp/dlm-sft-bench")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--max-length", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.max_length, args.hidden, args.repeats = 8, 256, 64, 1
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, data_file = make_fixture(workdir, max(args.examples * 2, 64), args.hidden, args.layers)
    loaded = load_model(ModelSettings(name_or_path=str(model_dir), attn_implementation="sdpa"))
    model = loaded.model.train()
    settings = DataSettings(
        train=str(data_file), max_length=args.max_length, cache_dir=str(workdir / "cache")
    )
    examples = tokenize_dataset(
        load_chat_rows(str(data_file)), loaded.tokenizer, settings, loaded.eos_token_id
    )
    examples = examples.dataset.select(range(min(args.examples, len(examples.dataset))))
    collator = DiffusionCollator(
        loaded.eos_token_id, args.max_length, eos_tail="first_n", eos_tail_n=16, examples=examples
    )

    def batches_of(rows) -> list[dict]:
        items = [rows[i] for i in range(len(rows))]
        return [collator(items[i : i + args.batch_size]) for i in range(0, len(items), args.batch_size)]

    dtype = next(model.parameters()).dtype
    modes = {
        "pad": [(b, attention_inputs(b, "sdpa", dtype)) for b in batches_of(examples)],
        "pack": [
            (b, attention_inputs(b, "sdpa", dtype)) for b in batches_of(pack_examples(examples, collator))
        ],
    }
    modes["pack-dense"] = [(b, attention_inputs(b, "eager", dtype)) for b, _ in modes["pack"]]
    best = {name: [float("inf")] * len(batches) for name, batches in modes.items()}
    for batches in modes.values():  # warm-up
        body_step(model, *batches[0])
    for _ in range(args.repeats):
        for name, batches in modes.items():
            for i, (batch, inputs) in enumerate(batches):
                best[name][i] = min(best[name][i], body_step(model, batch, inputs))
                model.zero_grad(set_to_none=True)
    supervised = sum(float((b["maskable"] & ~b["tail"]).sum()) for b, _ in modes["pad"])
    print(
        f"examples={len(examples)} max_length={args.max_length} batch={args.batch_size} "
        f"model=Qwen2(h{args.hidden}, {args.layers} layers) body forward+backward, "
        f"CPU time, best of {args.repeats}"
    )
    print("| mode | rows | seconds | positions/s | supervised tok/s |")
    print("|---|---:|---:|---:|---:|")
    speed = {}
    for name, batches in modes.items():
        seconds = sum(best[name])
        positions = sum(b["input_ids"].numel() for b, _ in batches)
        rows = sum(b["input_ids"].shape[0] for b, _ in batches)
        speed[name] = supervised / seconds
        print(f"| {name} | {rows} | {seconds:.2f} | {positions / seconds:.0f} | {speed[name]:.0f} |")
    print(
        f"pack/pad supervised_tokens_per_s={speed['pack'] / speed['pad']:.2f} "
        f"pack/pack-dense={speed['pack'] / speed['pack-dense']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
