"""Tokenized examples → padded batches with the masks the objective needs.

Each row is `prompt + response (ending in EOS) + EOS tail`, then padding (EOS ids, attention 0) to
the batch's longest row. The tail's length depends only on the example and the policy (see
`DiffusionSFTConfig.eos_tail`), never on the other rows, so an example trains the same way however
its global batch is split.

Batch keys: `input_ids`, `attention_mask` (B, L); `maskable` (response + tail), `tail` (B, L)
bool; `example_ids` (B,) for the counter-based noise; `supervised` (B,) float, the row's supervised
token count (the tail counts as one token under policy `one`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DiffusionCollator:
    eos_token_id: int
    max_length: int
    eos_tail: str = "all"
    eos_tail_n: int = 16
    pad_to_multiple_of: int | None = None

    def tail_length(self, content_length: int, truncated: bool) -> int:
        room = max(self.max_length - content_length, 0)
        if truncated or self.eos_tail == "none":
            return 0
        if self.eos_tail == "first_n":
            return min(self.eos_tail_n, room)
        return room  # "all" and "one": fill the row up to max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        content = [len(e["input_ids"]) for e in examples]
        tails = [self.tail_length(n, bool(e.get("truncated", False))) for n, e in zip(content, examples)]
        length = max(n + t for n, t in zip(content, tails))
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(examples)
        input_ids = torch.full((batch, length), self.eos_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        maskable = torch.zeros((batch, length), dtype=torch.bool)
        tail = torch.zeros((batch, length), dtype=torch.bool)
        supervised = torch.zeros(batch, dtype=torch.float32)
        for row, (example, n, t) in enumerate(zip(examples, content, tails)):
            prompt = int(example["prompt_length"])
            input_ids[row, :n] = torch.as_tensor(example["input_ids"], dtype=torch.long)
            attention_mask[row, : n + t] = 1
            maskable[row, prompt : n + t] = True
            tail[row, n : n + t] = True
            tail_units = min(t, 1) if self.eos_tail == "one" else t
            supervised[row] = (n - prompt) + tail_units
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "maskable": maskable,
            "tail": tail,
            "example_ids": torch.as_tensor([int(e["example_id"]) for e in examples], dtype=torch.long),
            "supervised": supervised,
        }
