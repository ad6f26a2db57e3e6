"""Batched encoding of rendered chats with their prompt boundaries.

`PromptEncoder.encode(texts, prompts)` returns, for each text, its token ids and the number of its
tokens that start before the end of its prompt (a prefix of the text): a token that straddles the
boundary belongs to the prompt. That rule is defined on the tokenizer's character offsets, but
tracking offsets halves a fast tokenizer's speed. For a byte-level BPE (GPT-2, Qwen, Llama 3: every
token is a fixed byte string and a text's tokens concatenate to its UTF-8 bytes) the offsets follow
from the tokens' byte lengths, so such tokenizers encode without offsets and each boundary is one
search in a cumulative sum. A text for which that equivalence is not certain (the normalizer would
change it, or its tokens' bytes do not add up to its own) is encoded again with offsets, as is every
text of any other kind of tokenizer, so the result is always the offsets rule's.
"""

from __future__ import annotations

import itertools
import json
import unicodedata

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sft.errors import UserError

UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


class PromptEncoder:
    """A copy of a fast tokenizer's backend (no truncation, no padding) that encodes in batches."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not tokenizer.is_fast:
            raise UserError(
                "a slow (Python) tokenizer cannot report token offsets",
                file=str(tokenizer.name_or_path),
                expected="a fast tokenizer (tokenizer.json)",
            )
        self.backend = tokenizer.backend_tokenizer
        if self.backend.truncation is not None or self.backend.padding is not None:
            self.backend = Tokenizer.from_str(self.backend.to_str())
            self.backend.no_truncation()
            self.backend.no_padding()
        self.byte_lengths = byte_level_lengths(self.backend)
        normal_form = (_layout(self.backend.normalizer) or {}).get("type")
        self.normal_form = normal_form if normal_form in UNICODE_FORMS else None

    def encode(self, texts: list[str], prompts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each text and the count of its tokens that start inside `prompts[i]`."""
        if self.byte_lengths is None or not texts:
            return self._encode_with_offsets(texts, prompts)
        ids = [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        counts = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(counts.sum()))
        ends = np.concatenate(([0], np.cumsum(self.byte_lengths[flat])))  # byte where token i ends
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))  # index of each text's first token
        text_bytes = np.fromiter((len(t.encode()) for t in texts), np.int64, len(texts))
        prompt_bytes = np.fromiter((len(p.encode()) for p in prompts), np.int64, len(prompts))
        boundary = ends[first] + prompt_bytes
        prompt_lengths = np.searchsorted(ends[:-1], boundary, side="left") - first
        exact = (ends[first + counts] - ends[first] == text_bytes) & np.fromiter(
            map(self._unchanged_by_normalizer, texts), bool, len(texts)
        )
        prompt_lengths = prompt_lengths.tolist()
        redo = np.flatnonzero(~exact).tolist()
        if redo:
            again = self._encode_with_offsets([texts[i] for i in redo], [prompts[i] for i in redo])
            for i, redone_ids, redone_length in zip(redo, *again, strict=True):
                ids[i], prompt_lengths[i] = redone_ids, redone_length
        return ids, prompt_lengths

    def _unchanged_by_normalizer(self, text: str) -> bool:
        if self.normal_form is not None:
            return unicodedata.is_normalized(self.normal_form, text)
        return self.backend.normalizer is None or self.backend.normalizer.normalize_str(text) == text

    def _encode_with_offsets(self, texts: list[str], prompts: list[str]) -> tuple[list[list[int]], list[int]]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        lengths = [
            sum(1 for start, _ in e.offsets if start < len(prompt))
            for e, prompt in zip(encodings, prompts, strict=True)
        ]
        return [e.ids for e in encodings], lengths


def byte_level_lengths(backend: Tokenizer) -> np.ndarray | None:
    """Byte length of every token id, for a byte-level BPE whose offsets are untrimmed; else None."""
    if not _has_step(_layout(backend.pre_tokenizer), "ByteLevel") or _trims_offsets(
        _layout(backend.post_processor)
    ):
        return None
    vocab = backend.get_vocab(with_added_tokens=False)
    alphabet = set(bytes_to_unicode().values())  # one character per byte
    if not alphabet.issuperset("".join(vocab)):
        return None
    added = {index: token.content for index, token in backend.get_added_tokens_decoder().items()}
    lengths = np.zeros(max([*vocab.values(), *added, -1]) + 1, np.int64)
    for token, index in vocab.items():
        lengths[index] = len(token)
    for index, content in added.items():  # matched on the raw text, so their own UTF-8 bytes
        lengths[index] = len(content.encode())
    unknown = backend.token_to_id(getattr(backend.model, "unk_token", None) or "")
    if unknown is not None:  # stands for any number of bytes: texts holding it take the offsets path
        lengths[unknown] = -(2**40)
    return lengths


def _layout(component: object | None) -> dict | None:
    """A tokenizer component's settings, as its tokenizer.json entry has them."""
    return None if component is None else json.loads(component.__getstate__())


def _has_step(component: dict | None, kind: str) -> bool:
    if component is None:
        return False
    steps = component.get("pretokenizers") or component.get("processors") or [component]
    return any(step.get("type") == kind for step in steps)


def _trims_offsets(post_processor: dict | None) -> bool:
    if post_processor is None:
        return False
    steps = post_processor.get("processors") or [post_processor]
    return any(step.get("trim_offsets", False) for step in steps)
