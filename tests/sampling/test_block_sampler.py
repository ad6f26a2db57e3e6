"""The block-diffusion sampler against a reference without a KV cache, batching, and its counters."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from transformers import Qwen2ForCausalLM

from sft.sampling.block_sampler import SamplerStats, cache_keyword
from sft.sampling.sampler import check_settings, diffusion_generate, left_pad
from tests.conftest import tiny_qwen2_config

MASK = 3


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, is_causal=False)).eval()
    with torch.no_grad():  # peaked predictions: confidences far apart, so no near-ties flip an order
        model.lm_head.weight.mul_(40)
    return model


@torch.no_grad()
def reference_block_greedy(model, prompt: list[int], new: int, block: int) -> list[int]:
    """One token per step, most confident first, recomputing everything every step: the row is
    prompt + finished blocks + the current noisy block under a hand-written mask — the prompt sees
    itself, each finished block the prompt, earlier blocks and itself, the noisy block everything."""
    text = list(prompt)
    group = [0] * len(prompt)  # 0: prompt, k: k-th block
    for b in range(-(-new // block)):
        width = min(block, new - b * block)
        current = [MASK] * width
        for _ in range(width):
            row = torch.tensor([text + current])
            groups = torch.tensor(group + [b + 1] * width)
            allowed = groups[None, :] <= groups[:, None]
            logits = model(input_ids=row, attention_mask=allowed[None, None]).logits[0]
            logits = torch.cat([logits[:1], logits[:-1]])[len(text) :]  # shift, the block's columns
            probs = logits.softmax(-1)
            confidence, tokens = probs.max(-1)
            masked = torch.tensor([c == MASK for c in current])
            confidence[~masked] = -1
            j = int(confidence.argmax())
            current[j] = int(tokens[j])
        text += current
        group += [b + 1] * width
    return text[len(prompt) :]


def sample(model, prompts, new, block, **options):
    """Greedy block sampling; steps = tokens and an unreachable threshold: exactly one token a step."""
    options.setdefault("threshold", 1.5)
    ids, attention = left_pad(prompts, 0)
    out = diffusion_generate(
        model,
        ids,
        attention,
        mask_token_id=MASK,
        max_new_tokens=new,
        steps=options.pop("steps", new),
        block_size=block,
        return_dict_in_generate=False,
        **options,
    )
    return out[:, ids.shape[1] :].tolist()


def test_block_sampling_with_the_cache_equals_recomputing_everything(model):
    prompt = [5, 6, 7, 8, 9]
    for new, block in ((8, 4), (9, 3), (5, 8)):
        assert sample(model, [prompt], new, block)[0] == reference_block_greedy(model, prompt, new, block)


def test_block_sampling_passes_the_cache_under_this_transformers_keyword_without_a_warning(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5.2x: `past_key_values` warns
        sample(model, [[5, 6, 7]], 4, 2)
    assert cache_keyword(Qwen2ForCausalLM) in inspect.signature(Qwen2ForCausalLM.forward).parameters


def test_padded_prompts_give_what_each_prompt_gives_alone(model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    batched = sample(model, prompts, 9, 3)
    for prompt, row in zip(prompts, batched):
        assert row == sample(model, [prompt], 9, 3)[0]


def test_forwards_are_counted_and_run_one_block_against_the_cache(model):
    stats = SamplerStats()
    sample(model, [[5, 6, 7, 8, 9]], 12, 4, stats=stats)
    # prefill + one forward per token (steps = tokens) + committing the first two blocks
    assert stats.forwards == 1 + 12 + 2 and stats.generated == 12
    assert stats.queries == 5 + 12 * 4 + 2 * 4
    assert stats.cache_share > 0.5
    fast = SamplerStats()
    sample(model, [[5, 6, 7, 8, 9]], 12, 4, steps=3, stats=fast)  # one step per block
    assert fast.forwards == 1 + 3 + 2 and fast.forwards_per_token == pytest.approx(0.5)
    full = SamplerStats()
    ids, attention = left_pad([[5, 6, 7, 8, 9]], 0)
    diffusion_generate(model, ids, attention, mask_token_id=MASK, max_new_tokens=12, steps=12, stats=full)
    assert full.forwards == 12 and full.cache_share == 0.0 and full.queries == 12 * 17


def test_generation_stops_once_every_row_has_a_stop_token(model):
    first = sample(model, [[5, 6, 7]], 8, 2)[0]
    stop = first[1]  # a token the model produces in its first block
    stats = SamplerStats()
    stopped = sample(model, [[5, 6, 7]], 8, 2, stop_token_ids=[stop], stats=stats)[0]
    assert stopped[:2] == first[:2] and stopped[2:] == [stop] * 6
    assert stats.forwards == 1 + 2  # prefill and the first block's two steps; nothing after


def test_block_settings_are_checked():
    base = dict(
        max_new_tokens=8,
        steps=8,
        temperature=0.0,
        top_p=None,
        top_k=None,
        alg="maskgit_plus",
        alg_temp=None,
        eps=1e-3,
    )
    with pytest.raises(ValueError, match="exclude each other"):
        check_settings(**base, block_length=4, threshold=None, block_size=4)
    with pytest.raises(ValueError, match=r"steps \(1\) must be >= the number of blocks \(2\)"):
        check_settings(**{**base, "steps": 1}, block_length=None, threshold=None, block_size=4)
