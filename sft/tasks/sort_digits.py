"""The quickstart task: sort a string of digits. Prompts and answers in the Tulu 3 chat schema.

    user:      "Sort 73914"
    assistant: "13479"

Every output digit depends on the whole input (its rank among all digits), so the answer has to
be planned as a whole rather than read off left to right; a tiny diffusion LM learns it on a CPU
in a few minutes. Problems are drawn from a seeded generator; `score` is exact match.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SOURCE = "dlm-sft/sort_digits"


def make_problem(rng: random.Random, min_digits: int, max_digits: int) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_digits, max_digits)))
    return f"Sort {digits}", "".join(sorted(digits))


def make_rows(
    count: int, seed: int, min_digits: int = 4, max_digits: int = 8, exclude: set[str] | None = None
) -> list[dict]:
    """`count` distinct problems as Tulu-3-schema rows (id, source, messages)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows = []
    while len(rows) < count:
        prompt, answer = make_problem(rng, min_digits, max_digits)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(
            {
                "id": hashlib.sha1(prompt.encode()).hexdigest()[:16],
                "source": SOURCE,
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            }
        )
    return rows


def write_split_files(
    directory: str | Path, train_rows: int = 20000, eval_rows: int = 256, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.parquet` and held-out `eval.parquet` (no prompt in both)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    held_out = make_rows(eval_rows, seed + 1)
    train = make_rows(train_rows, seed, exclude={r["messages"][0]["content"] for r in held_out})
    paths = directory / "train.parquet", directory / "eval.parquet"
    for path, rows in zip(paths, (train, held_out)):
        pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
    return paths


def score(prompt: str, completion: str) -> bool:
    """Exact match of the completion (stripped) with the sorted digits of the prompt."""
    digits = prompt.split()[-1]
    return completion.strip() == "".join(sorted(digits))
