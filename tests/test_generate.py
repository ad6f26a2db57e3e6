"""The diffusion sampler: determinism, reveal schedules, frozen prompts, left padding."""

from __future__ import annotations

import pytest
import torch

from sft.config import ModelSettings
from sft.families import load_model
from sft.generate import diffusion_generate

MASK = 3


@pytest.fixture(scope="module")
def model(qwen2_dir):
    return load_model(ModelSettings(name_or_path=str(qwen2_dir))).model.eval()


def test_temperature_zero_is_deterministic(model):
    prompt = torch.tensor([[5, 6, 7, 8]])
    a = diffusion_generate(model, prompt, mask_token_id=MASK, max_new_tokens=6, steps=6).sequences
    b = diffusion_generate(model, prompt, mask_token_id=MASK, max_new_tokens=6, steps=6).sequences
    assert torch.equal(a, b)
    assert not (a == MASK).any()


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("alg_temp", [None, 0.5])
def test_confidence_algorithms_reveal_the_scheduled_number_and_never_change_revealed(model, alg, alg_temp):
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    steps, new = 4, 8
    out = diffusion_generate(model, prompt, mask_token_id=MASK, max_new_tokens=new, steps=steps, alg=alg,
                             alg_temp=alg_temp, output_history=True, generator=torch.Generator().manual_seed(0))
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    history = out.history
    for i in range(len(history) - 1):
        before, after = history[i], history[i + 1]
        assert torch.equal(after[:, :4], prompt)
        revealed_before = before != MASK
        assert torch.equal(after[revealed_before], before[revealed_before])
        n_masked = (before == MASK).sum(1)
        expected = n_masked if i == steps - 1 else (n_masked.float() * (1 - timesteps[i + 1] / timesteps[i])).long()
        assert torch.equal((before == MASK).sum(1) - (after == MASK).sum(1), expected)
    assert not (out.sequences == MASK).any()


def test_origin_reveals_everything_and_keeps_the_prompt(model):
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = diffusion_generate(model, prompt, mask_token_id=MASK, max_new_tokens=8, steps=5, alg="origin",
                             output_history=True, generator=torch.Generator().manual_seed(0))
    for before, after in zip(out.history, out.history[1:]):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
    assert not (out.sequences == MASK).any()


def test_left_padded_batch_matches_each_prompt_alone(model):
    short, long = [7, 8, 9], [5, 6, 7, 8, 9, 10]
    batch = torch.tensor([[0, 0, 0, *short], long])
    attention = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    together = diffusion_generate(model, batch, attention, mask_token_id=MASK, max_new_tokens=5, steps=5)
    for row, prompt in enumerate((short, long)):
        alone = diffusion_generate(model, torch.tensor([prompt]), mask_token_id=MASK, max_new_tokens=5, steps=5)
        assert torch.equal(together.sequences[row, -5:], alone.sequences[0, -5:])
