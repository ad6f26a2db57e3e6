"""The one check of a chat row, shared by `dlm-sft prepare` and `dlm-sft train`.

A raw row is whatever a file held: normally a mapping in one of the chat schemas (`messages` of
{role, content} as in Tulu 3 and SmolTalk, ShareGPT `conversations` of {from, value}, or
`prompt`/`completion` strings). A content may also be a list of OpenAI-style parts
(`[{"type": "text", "text": ...}]`): their texts are joined as chat templates join them (nothing
between); any other part (an image, audio) drops the row as `non_text_content`. `conversation`
returns its messages as `[{"role", "content"}]`, or raises `RowProblem` whose `reason` (a short
snake_case word that reports count) says why the row cannot be used. What passes holds only strings
of valid Unicode, has a bounded size and, with the shape check, an optional system turn and then
user and assistant turns alternating, none of them empty, ending with an assistant reply; an
assistant turn may be followed by `tool` turns (the results of the calls it wrote), then an
assistant turn again. So no row can fail later in a parquet writer, an Arrow cast or a chat template
because of its values. (Whether the chat template renders `tool` turns is checked at tokenization.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
FOLLOWERS = {"user": ("assistant",), "assistant": ("user", "tool"), "tool": ("tool", "assistant")}
"""The roles that may follow each role after the optional system turn."""
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "tool": "tool",
}
MAX_ROW_CHARS = 2**21
"""Characters of content above which a row is dropped as `row_too_large` (about 500k tokens)."""


class RowProblem(ValueError):
    """A row that cannot be used; `reason` is the name it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class BadRow:
    """A row that could not even be parsed (invalid JSON or UTF-8); `text` is what was read."""

    reason: str
    text: str


def is_valid_text(value: str) -> bool:
    """True when a string can be written as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _messages(items: Any, role_map: dict[str, str] | None) -> list[dict[str, str]]:
    if items is None:
        raise RowProblem("missing_messages")
    if not isinstance(items, list):
        raise RowProblem("messages_not_a_list")
    if not items:
        raise RowProblem("empty_messages")
    role_key, content_key = ("role", "content") if role_map is None else ("from", "value")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise RowProblem("message_not_an_object")
        role, content = item.get(role_key), item.get(content_key)
        if role is None:
            raise RowProblem("missing_role")
        if item.get("tool_calls"):
            raise RowProblem("structured_tool_calls")
        if content is None:
            raise RowProblem("missing_content")
        if not isinstance(role, str):
            raise RowProblem("role_not_a_string")
        content = _text(content)
        if not (is_valid_text(role) and is_valid_text(content)):
            raise RowProblem("invalid_unicode")
        if role_map is not None:
            role = role_map.get(role.lower(), role)
        out.append({"role": role, "content": content})
    return out


def _text(content: Any) -> str:
    """A message content as one string: itself, or the texts of its content parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise RowProblem("content_not_a_string")
    texts = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RowProblem("content_not_a_string")
        if part["type"] != "text":
            raise RowProblem("non_text_content")
        if not isinstance(part.get("text"), str):
            raise RowProblem("content_not_a_string")
        texts.append(part["text"])
    return "".join(texts)


def check_shape(messages: list[dict[str, str]]) -> None:
    """An optional system turn first, then user and assistant alternating (tool turns may follow an
    assistant turn, before the next assistant turn), starting with user and ending with assistant,
    no empty or whitespace-only content."""
    for message in messages:
        if message["role"] not in ROLES:
            raise RowProblem("unknown_role")
        if not message["content"].strip():
            raise RowProblem("empty_content")
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise RowProblem("no_user_turn")
    if roles[-1] != "assistant":
        raise RowProblem("not_ending_with_assistant")
    body = roles[1:] if roles[0] == "system" else roles
    if body[0] != "user" or any(role not in FOLLOWERS.get(previous, ()) for previous, role in pairwise(body)):
        raise RowProblem("roles_out_of_order")


def conversation(raw: Any, fmt: str = "auto", *, shape: bool = True) -> list[dict[str, str]]:
    """The checked messages of a raw row in format `fmt`: `sharegpt`, `prompt_completion`, `auto`
    (by the keys present: `messages`, else `conversations`, else `prompt`/`completion`) or any
    other name for the `messages` schema. `shape=False` skips only `check_shape`. Raises
    `RowProblem`."""
    if isinstance(raw, BadRow):
        raise RowProblem(raw.reason)
    if not isinstance(raw, dict):
        raise RowProblem("row_not_an_object")
    has_messages = raw.get("messages") is not None
    if fmt == "sharegpt" or (fmt == "auto" and not has_messages and raw.get("conversations") is not None):
        messages = _messages(raw.get("conversations"), SHAREGPT_ROLES)
    elif fmt == "prompt_completion" or (
        fmt == "auto" and not has_messages and ("prompt" in raw or "completion" in raw)
    ):
        pair = [
            {"role": "user", "content": raw.get("prompt")},
            {"role": "assistant", "content": raw.get("completion")},
        ]
        messages = _messages(pair, None)
    else:
        messages = _messages(raw.get("messages"), None)
    if sum(len(m["content"]) for m in messages) > MAX_ROW_CHARS:
        raise RowProblem("row_too_large")
    if shape:
        check_shape(messages)
    return messages


def to_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A row's checked conversation as a list of {role, content}; raises `RowProblem` for a row
    that cannot be trained on (the reason it is counted under)."""
    if row.get("problem"):
        raise RowProblem(row["problem"])
    return conversation(row)


def usable_rows(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], list[dict[str, str]]]]:
    """(row, its checked conversation) for each row that passes the row check; the others are
    left out, as training leaves them out."""
    for row in rows:
        try:
            yield row, to_messages(row)
        except RowProblem:
            continue
