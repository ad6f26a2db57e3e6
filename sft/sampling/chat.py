"""Chat with a diffusion LM: render conversations with the chat template, sample replies, decode.

`generate_replies` answers a batch of conversations (left-padded into one canvas per batch);
`chat_loop` is the `dlm-sft generate --interactive` loop. Replies end at the first stop token
(EOS, pad or ChatML's `<|im_end|>`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.errors import UserError
from sft.sampling.sampler import cut_at_stop, diffusion_generate, left_pad
from sft.sampling.settings import SamplerSettings


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """EOS, pad and ChatML's end-of-turn: the answer ends at the first of them."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, str]], chat_template: bool = True
) -> list[int]:
    """Token ids of a conversation ending in a user turn, with the assistant turn opened.

    Without `chat_template` the messages' contents are joined as raw text (base models)."""
    if not chat_template:
        return tokenizer("".join(m["content"] for m in conversation), add_special_tokens=False)["input_ids"]
    if not tokenizer.chat_template:
        raise UserError(
            "the tokenizer has no chat template",
            key="--raw",
            expected="a chat model, or --raw for plain text",
        )
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    *,
    mask_token_id: int,
    shift: bool,
    batch_size: int = 64,
    chat_template: bool = True,
    generator: torch.Generator | None = None,
    **sampling: object,
) -> list[str]:
    """One reply per conversation (decoded, cut at the first stop token, special tokens dropped)."""
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    replies = []
    for start in range(0, len(conversations), batch_size):
        encoded = [
            encode_prompt(tokenizer, c, chat_template) for c in conversations[start : start + batch_size]
        ]
        ids, attention = left_pad(encoded, tokenizer.pad_token_id)
        sequences = diffusion_generate(
            model,
            ids.to(device),
            attention.to(device),
            mask_token_id=mask_token_id,
            shift=shift,
            generator=generator,
            return_dict_in_generate=False,
            stop_token_ids=stops,
            **sampling,
        )
        for row in sequences[:, ids.shape[1] :].tolist():
            replies.append(tokenizer.decode(cut_at_stop(row, stops), skip_special_tokens=True))
    return replies


def chat_loop(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: SamplerSettings,
    *,
    mask_token_id: int,
    shift: bool,
    system: str | None = None,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    generator: torch.Generator | None = None,
) -> list[dict[str, str]]:
    """Read user turns until EOF, an empty line or `/exit`; `/reset` forgets the conversation.
    Returns the final conversation."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    write("chat: empty line or /exit to quit, /reset to start over")
    while True:
        try:
            text = read("user> ").strip()
        except EOFError:
            break
        if text in ("", "/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(start)
            continue
        messages.append({"role": "user", "content": text})
        (reply,) = generate_replies(
            model,
            tokenizer,
            [messages],
            mask_token_id=mask_token_id,
            shift=shift,
            generator=generator,
            **settings.kwargs(),
        )
        messages.append({"role": "assistant", "content": reply})
        write(f"assistant> {reply}")
    return messages
