"""Exact-match accuracy of a diffusion LM on chat rows with a task scorer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.generate import cut_at_stop, diffusion_generate


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """EOS, pad and ChatML's end-of-turn: the answer ends at the first of them."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict]],
    *,
    mask_token_id: int,
    shift: bool,
    max_new_tokens: int,
    steps: int,
    alg: str = "maskgit_plus",
    batch_size: int = 64,
) -> list[str]:
    """Answer each conversation's prompt (its messages up to the last assistant turn)."""
    stops = stop_token_ids(tokenizer)
    model.eval()
    answers = []
    for start in range(0, len(conversations), batch_size):
        prompts = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations[start : start + batch_size]
        ]
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.as_tensor(e)
            attention[row, width - len(e) :] = 1
        device = next(model.parameters()).device
        out = diffusion_generate(
            model,
            ids.to(device),
            attention.to(device),
            mask_token_id=mask_token_id,
            shift=shift,
            max_new_tokens=max_new_tokens,
            steps=steps,
            alg=alg,
        )
        for row in out.sequences[:, width:].tolist():
            answers.append(tokenizer.decode(cut_at_stop(row, stops), skip_special_tokens=True))
    return answers


def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    score: Callable[[str, str], bool],
    **generation: object,
) -> float:
    """Fraction of rows whose generated answer the scorer accepts (prompt = first user turn)."""
    conversations = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]
    answers = generate_answers(model, tokenizer, conversations, **generation)
    hits = [score(c[-1]["content"], a) for c, a in zip(conversations, answers)]
    return sum(hits) / max(len(hits), 1)
