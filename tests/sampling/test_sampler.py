"""The diffusion sampler: determinism, reveal schedules, frozen prompts, left padding, blocks,
confidence thresholds and infilling."""

from __future__ import annotations

import pytest
import torch

from sft.config import ModelSettings
from sft.families.loader import load_model
from sft.sampling.sampler import (
    GenerationOutput,
    diffusion_generate,
    infill,
    trim_after_eos,
)
from sft.sampling.settings import SamplerSettings, block_schedule

MASK = 3
PROMPT = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])


@pytest.fixture(scope="module")
def model(qwen2_dir):
    return load_model(ModelSettings(name_or_path=str(qwen2_dir))).model.eval()


def generate(model, prompt, attention=None, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return diffusion_generate(model, prompt, attention, mask_token_id=MASK, **kwargs)


def steps_of(history):
    return list(zip(history, history[1:]))


def test_temperature_zero_is_deterministic(model):
    prompt = torch.tensor([[5, 6, 7, 8]])
    a = diffusion_generate(model, prompt, mask_token_id=MASK, max_new_tokens=6, steps=6).sequences
    b = diffusion_generate(model, prompt, mask_token_id=MASK, max_new_tokens=6, steps=6).sequences
    assert torch.equal(a, b)
    assert not (a == MASK).any()


def test_return_dict_false_returns_only_the_sequences(model):
    out = generate(model, PROMPT, max_new_tokens=4, steps=2, return_dict_in_generate=False)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 8)
    assert isinstance(generate(model, PROMPT, max_new_tokens=4, steps=2), GenerationOutput)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("alg_temp", [None, 0.5])
def test_confidence_algorithms_reveal_the_scheduled_number_and_never_change_revealed(model, alg, alg_temp):
    steps, new = 4, 8
    out = generate(
        model, PROMPT, max_new_tokens=new, steps=steps, alg=alg, alg_temp=alg_temp, output_history=True
    )
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    assert len(out.history) == steps + 1
    for i, (before, after) in enumerate(steps_of(out.history)):
        assert torch.equal(after[:, :4], PROMPT)
        revealed_before = before != MASK
        assert torch.equal(after[revealed_before], before[revealed_before])
        n_masked = (before == MASK).sum(1)
        fraction = 1 - timesteps[i + 1] / timesteps[i]
        expected = n_masked if i == steps - 1 else (n_masked.float() * fraction).long()
        assert torch.equal((before == MASK).sum(1) - (after == MASK).sum(1), expected)
    assert not (out.sequences == MASK).any()


def test_origin_reveals_everything_and_keeps_the_prompt(model):
    out = generate(model, PROMPT[:1], max_new_tokens=8, steps=5, alg="origin", output_history=True)
    for before, after in steps_of(out.history):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
    assert not (out.sequences == MASK).any()


@pytest.mark.parametrize(
    "options",
    [{}, {"block_length": 2, "steps": 6}, {"threshold": 0.2}, {"alg": "topk_margin", "block_length": 3}],
)
def test_left_padded_batch_matches_each_prompt_alone(model, options):
    options = {"max_new_tokens": 5, "steps": 5, **options}
    short, long = [7, 8, 9], [5, 6, 7, 8, 9, 10]
    batch = torch.tensor([[0, 0, 0, *short], long])
    attention = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    together = generate(model, batch, attention, **options)
    for row, prompt in enumerate((short, long)):
        alone = generate(model, torch.tensor([prompt]), **options)
        assert torch.equal(together.sequences[row, -5:], alone.sequences[0, -5:])


def test_padding_that_happens_to_be_the_mask_token_is_never_filled(model):
    batch = torch.tensor([[MASK, MASK, 7, 8], [5, 6, 7, 8]])
    attention = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = generate(model, batch, attention, max_new_tokens=4, steps=4).sequences
    assert torch.equal(out[0, :2], torch.tensor([MASK, MASK]))
    assert not (out[:, 2:] == MASK).any()


def test_block_decoding_never_reveals_a_later_block_before_an_earlier_one_is_complete(model):
    new, block = 9, 3  # three blocks of three tokens, two steps each
    out = generate(model, PROMPT, max_new_tokens=new, steps=6, block_length=block, output_history=True)
    assert len(out.history) == 7
    for before, after in steps_of(out.history):
        assert torch.equal(after[:, :4], PROMPT)
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
        masked = (after[:, 4:] == MASK).reshape(2, new // block, block)
        for b in range(1, new // block):
            started = (~masked[:, b]).any(-1)
            assert not (started & masked[:, :b].flatten(1).any(-1)).any()
    assert not (out.sequences == MASK).any()


def test_block_schedule_shares_steps_out_evenly():
    assert block_schedule(7, 3) == [3, 2, 2]
    assert sum(block_schedule(64, 4)) == 64
    with pytest.raises(ValueError, match="number of blocks"):
        diffusion_generate(None, PROMPT, mask_token_id=MASK, max_new_tokens=8, steps=2, block_length=2)


def test_threshold_reveals_every_confident_token_and_at_least_one_per_step(model):
    out = generate(model, PROMPT, max_new_tokens=8, steps=8, threshold=0.0, output_history=True)
    # every probability exceeds 0: the whole canvas is revealed by the first forward pass
    assert len(out.history) == 2 and not (out.sequences == MASK).any()
    out = generate(model, PROMPT, max_new_tokens=8, steps=8, threshold=1.5, output_history=True)
    for before, after in steps_of(out.history):  # nothing is that confident: at least one per step
        assert ((before == MASK).sum(1) - (after == MASK).sum(1) >= 1).all()
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
    assert not (out.sequences == MASK).any()


def test_threshold_with_origin_is_rejected():
    with pytest.raises(ValueError, match="confidence alg"):
        SamplerSettings(alg="origin", threshold=0.9).check()


def test_infilling_keeps_prefix_and_suffix_byte_identical(model, tokenizer):
    prefixes = ["Sort 9", "Sort 31"]
    suffixes = ["42 please", "0"]
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    kwargs = dict(mask_token_id=MASK, pad_token_id=tokenizer.pad_token_id, steps=4, alg="entropy")
    spans = infill(model, [encode(p) for p in prefixes], [encode(s) for s in suffixes], 4, **kwargs)
    for prefix, suffix, span in zip(prefixes, suffixes, spans):
        assert len(span) == 4 and MASK not in span
        alone = infill(model, [encode(prefix)], [encode(suffix)], 4, **kwargs)[0]
        assert alone == span
        text = tokenizer.decode(encode(prefix) + span + encode(suffix))
        assert text.startswith(prefix) and text.endswith(suffix)


def test_masks_inside_the_prompt_are_filled_and_nothing_else_changes(model):
    prompt = torch.tensor([[5, MASK, 7, MASK, 9]])
    out = generate(model, prompt, max_new_tokens=0, steps=2, output_history=True)
    assert not (out.sequences == MASK).any()
    assert torch.equal(out.sequences[0, [0, 2, 4]], torch.tensor([5, 7, 9]))


def test_trim_after_eos_cuts_generated_tokens_at_the_first_eos():
    sequences = torch.tensor([[1, 2, 3, 0, 5, 0, 6], [1, 0, 3, 4, 5, 6, 7]])
    trimmed = trim_after_eos(sequences, start=2, eos_token_id=0)
    assert trimmed.tolist() == [[1, 2, 3, 0, 0, 0, 0], [1, 0, 3, 4, 5, 6, 7]]
