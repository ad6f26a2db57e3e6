"""The quality–speed curve of the sampler on the quickstart model and task.

    dlm-sft quickstart                                # trains runs/quickstart (a few minutes on a CPU)
    python benchmarks/sampling_curve.py [--checkpoint runs/quickstart] [--limit 256]

Sweeps `steps` (Dream's schedule, maskgit_plus), the confidence threshold (Fast-dLLM parallel
decoding, steps = max_new_tokens as the cap), the other `alg`s and LLaDA-style blocks; for each
setting it measures exact-match accuracy on the held-out set, forward passes per batch and
generated tokens per second (canvas tokens / wall time). Writes the table between markers in the
"## Sampling" section of benchmarks/RESULTS.md (nothing else in the file changes) and a PNG plot.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from sft.evaluation.bundled import exact_match
from sft.sampling.loading import load_for_sampling
from sft.sampling.settings import SamplerSettings
from sft.tasks import sort_digits

HERE = Path(__file__).resolve().parent
SECTION = "## Sampling"
START, END = "<!-- sampling-curve:start -->", "<!-- sampling-curve:end -->"
TOKENS = 12  # the quickstart's canvas: the longest answer (8 digits) + end-of-turn, newline, EOS


@dataclass
class Point:
    label: str
    family: str  # which sweep the point belongs to (one line in the plot)
    settings: SamplerSettings
    accuracy: float = 0.0
    seconds: float = 0.0
    forwards: float = 0.0  # forward passes per batch

    def tokens_per_second(self, rows: int) -> float:
        return rows * self.settings.max_new_tokens / self.seconds


def settings_grid() -> list[Point]:
    points = [
        Point(f"steps={s}", "steps (maskgit_plus)", SamplerSettings(max_new_tokens=TOKENS, steps=s))
        for s in (12, 6, 4, 3, 2, 1)
    ]
    points += [
        Point(
            f"threshold={t}",
            "threshold (Fast-dLLM)",
            SamplerSettings(max_new_tokens=TOKENS, steps=TOKENS, threshold=t),
        )
        for t in (0.99, 0.95, 0.9, 0.8, 0.7, 0.5)
    ]
    points += [
        Point(f"alg={a}", "alg, steps=12", SamplerSettings(max_new_tokens=TOKENS, steps=TOKENS, alg=a))
        for a in ("origin", "topk_margin", "entropy")
    ]
    points.append(
        Point(
            "blocks of 4",
            "alg, steps=12",
            SamplerSettings(max_new_tokens=TOKENS, steps=TOKENS, block_length=4),
        )
    )
    return points


def measure(checkpoint: str, rows: list[dict], points: list[Point], batch_size: int) -> None:
    loaded = load_for_sampling(checkpoint, device="cpu")
    calls = [0]
    loaded.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    batches = -(-len(rows) // batch_size)
    common = dict(mask_token_id=loaded.mask_token_id, shift=loaded.family.shift, batch_size=batch_size)
    exact_match(loaded.model, loaded.tokenizer, rows[:batch_size], sort_digits.score, **common)  # warm-up
    for point in points:
        calls[0] = 0
        start = time.perf_counter()
        point.accuracy = exact_match(
            loaded.model, loaded.tokenizer, rows, sort_digits.score, **common, **point.settings.kwargs()
        )
        point.seconds = time.perf_counter() - start
        point.forwards = calls[0] / batches
        print(
            f"{point.label:>16}: accuracy {point.accuracy:.3f}  {point.forwards:5.2f} forwards/batch  "
            f"{point.tokens_per_second(len(rows)):8.0f} tokens/s",
            flush=True,
        )


def table(points: list[Point], rows: int, command: str) -> str:
    lines = [
        START,
        f"Command: `{command}` ({rows} held-out problems, batch 64, canvas {TOKENS} tokens, "
        f"temperature 0, {torch.get_num_threads()} CPU threads; tokens/s = canvas tokens / wall time).",
        "",
        "| setting | accuracy | forwards / batch | tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.label} | {p.accuracy:.3f} | {p.forwards:.2f} | {p.tokens_per_second(rows):,.0f} |"
        )
    lines += ["", "![sampling curve](sampling_curve.png)", END]
    return "\n".join(lines)


def write_results(path: Path, block: str) -> None:
    """Put `block` between the markers of the Sampling section (created at the end if missing)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    elif SECTION in text:
        head, tail = text.split(SECTION, 1)
        text = head + SECTION + "\n\n" + block + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


def plot(points: list[Point], rows: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family in dict.fromkeys(p.family for p in points):
        group = [p for p in points if p.family == family]
        xs = [p.tokens_per_second(rows) for p in group]
        style = "o-" if family.startswith(("steps", "threshold")) else "s"
        ax.plot(xs, [p.accuracy for p in group], style, label=family)
        for p, x in zip(group, xs):
            ax.annotate(
                p.label.split("=")[-1], (x, p.accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, min(p.accuracy for p in points) - 0.1), 1.02)
    ax.set_xlabel("generated tokens / s (CPU)")
    ax.set_ylabel("exact match (sort digits)")
    ax.set_title("Quickstart model: accuracy vs decoding speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/quickstart")
    parser.add_argument("--data", default="recipes/quickstart/data/eval.parquet")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--plot", default=str(HERE / "sampling_curve.png"))
    args = parser.parse_args()
    if not Path(args.checkpoint, "config.json").is_file():
        parser.error(f"no checkpoint at {args.checkpoint}: run `dlm-sft quickstart` first")
    rows = pq.read_table(args.data).to_pylist()[: args.limit]
    points = settings_grid()
    measure(args.checkpoint, rows, points, args.batch_size)
    command = f"python benchmarks/sampling_curve.py --checkpoint {args.checkpoint} --limit {args.limit}"
    write_results(Path(args.results), table(points, len(rows), command))
    plot(points, len(rows), Path(args.plot))
    print(f"wrote {args.results} and {args.plot}")


if __name__ == "__main__":
    main()
