"""The row check shared by `dlm-sft prepare` and training: OpenAI-style content parts and tool turns."""

from __future__ import annotations

from transformers import AutoTokenizer

from data_prep.pipeline import prepare
from sft.config import DataSettings
from sft.data.sources import load_chat_rows
from sft.data.tokenization import tokenize_dataset
from tests.conftest import QUICKSTART_MODEL, write_chat_rows
from tests.data_prep_fixtures import read_kept, write_recipe

PARTS = {
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Sort 321"}, {"type": "text", "text": " now"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "123"}]},
    ]
}
IMAGE = {
    "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
        {"role": "assistant", "content": "a cat"},
    ]
}
TOOLS = {
    "messages": [
        {"role": "system", "content": "You may call sort(digits)."},
        {"role": "user", "content": "Sort 321"},
        {"role": "assistant", "content": '<tool_call>{"name": "sort", "arguments": "321"}</tool_call>'},
        {"role": "tool", "content": "123"},
        {"role": "assistant", "content": "The sorted digits are 123."},
    ]
}
USER_ASSISTANT_ONLY = (
    "{% for m in messages %}{% if m['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenized(tokenizer, path):
    settings = DataSettings(train=str(path), max_length=512)
    return tokenize_dataset(load_chat_rows(str(path)), tokenizer, settings, tokenizer.eos_token_id)


def test_training_joins_text_content_parts_and_counts_other_parts(tokenizer, tmp_path):
    data = tokenized(tokenizer, write_chat_rows(tmp_path / "rows.jsonl", [PARTS, IMAGE]))
    assert data.dropped == {"non_text_content": 1}
    [example] = data.dataset
    text = tokenizer.decode(example["input_ids"])
    assert "<|im_start|>user\nSort 321 now<|im_end|>" in text
    assert tokenizer.decode(example["input_ids"][example["prompt_length"] :]).startswith("123<|im_end|>")


def test_training_keeps_tool_turns_when_the_chat_template_renders_them(tokenizer, tmp_path):
    data = tokenized(tokenizer, write_chat_rows(tmp_path / "rows.jsonl", [TOOLS]))
    assert data.dropped == {}
    [example] = data.dataset
    prompt = tokenizer.decode(example["input_ids"][: example["prompt_length"]])
    assert "<|im_start|>tool\n123<|im_end|>" in prompt and "<tool_call>" in prompt
    assert tokenizer.decode(example["input_ids"][example["prompt_length"] :]).startswith("The sorted digits")


def test_tool_turns_are_a_counted_reason_when_the_chat_template_leaves_them_out(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    tokenizer.chat_template = USER_ASSISTANT_ONLY
    data = tokenized(tokenizer, write_chat_rows(tmp_path / "rows.jsonl", [TOOLS, PARTS]))
    assert data.dropped == {"tool_turns_not_in_template": 1} and len(data.dataset) == 1


def test_prepare_keeps_content_parts_as_text_and_tool_turns(tmp_path):
    write_chat_rows(tmp_path / "rows.jsonl", [PARTS, IMAGE, TOOLS])
    recipe = write_recipe(
        tmp_path / "data.yaml", [{"name": "mixed", "path": str(tmp_path / "rows.jsonl")}], tmp_path / "out"
    )
    stats = prepare(str(recipe), [], progress=False)
    assert stats["kept_rows"] == 2 and stats["malformed_detail"] == {"non_text_content": 1}
    kept = [row["messages"] for row in read_kept(tmp_path / "out")]
    assert [{"role": "user", "content": "Sort 321 now"}, {"role": "assistant", "content": "123"}] in kept
    assert TOOLS["messages"] in kept
