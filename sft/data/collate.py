"""Tokenized examples → batches of rows with the masks the objective needs.

Each example (a *document*) is `prompt + response (ending in EOS) + EOS tail`. In `pad` mode a
row holds one document; in `pack` mode a row holds several (see `sft.data.packing`), each keeping its
own positions, tail and noise. Rows are padded (EOS ids, attention 0) to the batch's longest row.
The tail's length depends only on the example and the policy (`DiffusionSFTConfig.eos_tail`),
never on the other rows, so an example trains the same way however its batch is formed.

Batch keys, (R, L) per token: `input_ids`, `attention_mask` (1 on documents, 0 on padding),
`doc_ids` (the token's document in this batch, -1 on padding), `positions` (within its document),
`maskable` (response + tail), `tail`; per document (D,): `example_ids` (for the counter-based
noise) and `supervised` (its supervised token count; the tail counts as one under policy `one`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import torch

from sft.data.packing import best_fit_decreasing

if TYPE_CHECKING:
    import datasets  # only `pack_examples` builds a Dataset: the collator itself needs no `datasets`


@dataclass
class DiffusionCollator:
    eos_token_id: int
    max_length: int
    eos_tail: str = "all"
    eos_tail_n: int = 16
    pad_to_multiple_of: int | None = None
    examples: datasets.Dataset | None = None  # pack mode: rows name their members in this dataset

    @classmethod
    def from_args(
        cls, args: Any, eos_token_id: int, max_length: int, examples: datasets.Dataset | None = None
    ) -> DiffusionCollator:
        """The collator a `DiffusionSFTConfig` asks for."""
        return cls(
            eos_token_id=eos_token_id,
            max_length=max_length,
            eos_tail=args.eos_tail,
            eos_tail_n=args.eos_tail_n,
            pad_to_multiple_of=args.pad_to_multiple_of,
            examples=examples,
        )

    def document_lengths(self, content: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        """Content + EOS tail of each example (vectorised): the tail depends only on the example."""
        room = np.maximum(self.max_length - content, 0)
        if self.eos_tail == "none":
            tail = np.zeros_like(room)
        elif self.eos_tail == "first_n":
            tail = np.minimum(self.eos_tail_n, room)
        else:  # "all" and "one": fill the row up to max_length
            tail = room
        return content + np.where(truncated, 0, tail)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "members" in rows[0]:
            assert self.examples is not None, "pack mode needs the examples dataset"
            docs_per_row = [[self.examples[int(i)] for i in row["members"]] for row in rows]
        else:
            docs_per_row = [[row] for row in rows]
        lengths = [
            self.document_lengths(
                np.array([len(d["input_ids"]) for d in docs]), np.array([bool(d["truncated"]) for d in docs])
            ).tolist()
            for docs in docs_per_row
        ]
        width = max(sum(row) for row in lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        shape = (len(rows), width)
        batch = {
            "input_ids": torch.full(shape, self.eos_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "doc_ids": torch.full(shape, -1, dtype=torch.long),
            "positions": torch.zeros(shape, dtype=torch.long),
            "maskable": torch.zeros(shape, dtype=torch.bool),
            "tail": torch.zeros(shape, dtype=torch.bool),
        }
        example_ids, supervised = [], []
        for r, (docs, doc_lengths) in enumerate(zip(docs_per_row, lengths)):
            start = 0
            for doc, length in zip(docs, doc_lengths):
                n, prompt = len(doc["input_ids"]), int(doc["prompt_length"])
                end = start + length
                batch["input_ids"][r, start : start + n] = torch.as_tensor(doc["input_ids"], dtype=torch.long)
                batch["attention_mask"][r, start:end] = 1
                batch["doc_ids"][r, start:end] = len(example_ids)
                batch["positions"][r, start:end] = torch.arange(length)
                batch["maskable"][r, start + prompt : end] = True
                batch["tail"][r, start + n : end] = True
                tail_units = min(length - n, 1) if self.eos_tail == "one" else length - n
                example_ids.append(int(doc["example_id"]))
                supervised.append((n - prompt) + tail_units)
                start = end
        batch["example_ids"] = torch.as_tensor(example_ids, dtype=torch.long)
        batch["supervised"] = torch.as_tensor(supervised, dtype=torch.float32)
        return batch


def pack_examples(examples: datasets.Dataset, collator: DiffusionCollator) -> datasets.Dataset:
    """Rows of `members` (indices into `examples`), packed best-fit-decreasing to max_length."""
    content, truncated = [], []
    for batch in examples.with_format("arrow").iter(batch_size=65536):
        content.append(pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False))
        truncated.append(batch["truncated"].to_numpy(zero_copy_only=False))
    sizes = collator.document_lengths(np.concatenate(content).astype(np.int64), np.concatenate(truncated))
    rows = best_fit_decreasing(sizes.tolist(), collator.max_length)
    import datasets

    return datasets.Dataset.from_dict({"members": rows})
