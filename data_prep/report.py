"""report.md with PNG plots (token lengths per source, drops by reason) for a person to read."""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any


def _percentiles(values: array) -> dict[str, int]:
    import numpy as np

    if not len(values):
        return {}
    data = np.frombuffer(values, dtype=np.int64) if values.itemsize == 8 else np.asarray(values)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {
        "mean": int(data.mean()),
        "p50": int(p50),
        "p90": int(p90),
        "p99": int(p99),
        "max": int(data.max()),
    }


def _plots(
    directory: Path, stats: dict[str, Any], lengths: dict[str, array], max_tokens: int | None, unit: str
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in lengths.items():
        if len(values):
            data = np.asarray(values, dtype=np.int64)
            low, high = np.log10(max(1, data.min())), np.log10(max(2, data.max()) + 1)
            bins = np.logspace(low, max(high, low + 0.1), 60)
            ax.hist(data, bins=bins, histtype="step", label=f"{name} (n={len(data):,})")
    if max_tokens:
        ax.axvline(max_tokens, color="red", linestyle="--", label=f"max_tokens={max_tokens}")
    ax.set_xscale("log")
    ax.set_xlabel(f"{unit} per conversation (log scale)")
    ax.set_ylabel("conversations")
    ax.set_title(f"{unit.capitalize()} per conversation, by source (rows reaching the length check)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "lengths.png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    names.append("lengths.png")

    reasons = [(r, c) for r, c in stats["dropped"].items()]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sources = list(stats["per_source"])
    bottom = np.zeros(len(reasons))
    for source in sources:
        counts = np.array([stats["per_source"][source]["dropped"].get(r, 0) for r, _ in reasons])
        ax.barh([r for r, _ in reasons], counts, left=bottom, label=source)
        bottom += counts
    ax.set_xlabel("dropped rows")
    ax.set_title("Drops by reason and source")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "drops.png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    names.append("drops.png")
    return names


def write_prep_report(
    output: Path, stats: dict[str, Any], lengths: dict[str, array], max_tokens: int | None
) -> None:
    """Write report.md and plots/ (lengths.png, drops.png) into `output`."""
    unit = "tokens" if stats.get("token_counter") else "characters"
    plots = _plots(output / "plots", stats, lengths, max_tokens, unit)
    lines = [
        "# Data prep report",
        "",
        f"- input rows: **{stats['input_rows']:,}**",
        f"- kept rows: **{stats['kept_rows']:,}** (train {stats['train_rows']:,}, "
        f"eval {stats['eval_rows']:,})",
        f"- dropped rows: **{sum(stats['dropped'].values()):,}**",
        "",
        "## Drops by reason",
        "",
        "| reason | rows | share of input |",
        "|---|---:|---:|",
    ]
    total = max(1, stats["input_rows"])
    for reason, count in stats["dropped"].items():
        lines.append(f"| {reason} | {count:,} | {100 * count / total:.2f}% |")
    if stats["malformed_detail"]:
        lines += ["", "Malformed rows by kind:", "", "| kind | rows |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in stats["malformed_detail"].items()]
    lines += ["", f"![drops by reason]({'plots/' + plots[1]})", "", "## Per source", ""]
    reasons = list(stats["dropped"])
    lines.append("| source | input | kept | " + " | ".join(reasons) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(reasons))
    for name, part in stats["per_source"].items():
        cells = " | ".join(f"{part['dropped'].get(r, 0):,}" for r in reasons)
        lines.append(f"| {name} | {part['input_rows']:,} | {part['kept_rows']:,} | {cells} |")
    lines += ["", f"## Length ({unit} per conversation, rows that reached the length check)", ""]
    lines += ["| source | mean | p50 | p90 | p99 | max |", "|---|---:|---:|---:|---:|---:|"]
    for name, values in lengths.items():
        p = _percentiles(values)
        if p:
            lines.append(
                f"| {name} | {p['mean']:,} | {p['p50']:,} | {p['p90']:,} | {p['p99']:,} | {p['max']:,} |"
            )
    if max_tokens:
        lines.append(f"\nRows above `max_tokens` = {max_tokens} were dropped as `too_long`.")
    lines += ["", f"![lengths by source]({'plots/' + plots[0]})", ""]
    fields = stats.get("kept_by_source_field", {})
    if fields:
        lines += ["## Kept rows by `source` value (for licence filtering)", ""]
        lines += ["| source | kept |", "|---|---:|"]
        lines += [f"| `{k}` | {v:,} |" for k, v in sorted(fields.items(), key=lambda kv: -kv[1])]
        lines.append("")
    lines += [
        "Files: `train/`, `eval/` (parquet shards: id, source, messages), `stats.json`, "
        "`rejects.parquet` (every dropped row with its reason).",
        "",
    ]
    (output / "report.md").write_text("\n".join(lines), encoding="utf-8")
