"""Duplicate detection across all sources.

Exact: a 64-bit hash of the normalised conversation (roles kept, content lower-cased with
whitespace collapsed); only the hashes are held, so 2M rows cost ~100 MB. Near: MinHash LSH from
`datasketch` over word 5-gram shingles (optional; needs `pip install datasketch`). In both, the
first copy in stream order (source order, then row order) is kept, so the result is deterministic.
"""

from __future__ import annotations

import re

import xxhash

from data_prep.sources import Row
from sft.errors import UserError

_WORDS = re.compile(r"\w+")


def normalized_text(messages: list[dict[str, str]]) -> str:
    """The text that decides exact duplicates: roles plus case/whitespace-folded content."""
    return "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].split()).lower()}" for m in messages)


class ExactDeduper:
    """Remembers the hash of every kept conversation."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def check(self, row: Row) -> str | None:
        key = xxhash.xxh3_64_intdigest(normalized_text(row.messages).encode("utf-8", "replace"))
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None


class NearDeduper:
    """MinHash LSH near-duplicate detection; a row similar to an earlier kept row is dropped."""

    def __init__(self, threshold: float, num_perm: int, shingle: int = 5) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UserError(
                "filters.near_dedup needs the 'datasketch' package",
                key="filters.near_dedup",
                expected="pip install datasketch",
            ) from exc
        self._minhash = MinHash
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm = num_perm
        self.shingle = shingle
        self.count = 0

    def _signature(self, row: Row):
        words = _WORDS.findall(normalized_text(row.messages))
        n = self.shingle
        grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        minhash = self._minhash(num_perm=self.num_perm, seed=1)
        minhash.update_batch([g.encode("utf-8", "replace") for g in grams])
        return minhash

    def check(self, row: Row) -> str | None:
        signature = self._signature(row)
        if self.lsh.query(signature):
            return "near_duplicate"
        self.lsh.insert(str(self.count), signature)
        self.count += 1
        return None
