"""Batches: EOS-tail policies, padding and the supervised counts."""

from __future__ import annotations

import pytest
import torch

from sft.data.collate import DiffusionCollator

pytestmark = pytest.mark.smoke  # in `make test-min`

EOS = 0


def example(prompt: int, response: int, example_id: int = 0, truncated: bool = False) -> dict:
    ids = list(range(10, 10 + prompt + response - 1)) + [EOS]
    return {"input_ids": ids, "prompt_length": prompt, "truncated": truncated, "example_id": example_id}


def collate(policy: str, examples: list[dict], n: int = 2, max_length: int = 12):
    return DiffusionCollator(eos_token_id=EOS, max_length=max_length, eos_tail=policy, eos_tail_n=n)(examples)


def test_policy_all_fills_every_row_to_max_length_with_supervised_eos():
    batch = collate("all", [example(3, 4), example(2, 2, 1)])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"].all()
    assert batch["tail"][0].tolist() == [False] * 7 + [True] * 5
    assert batch["maskable"][0].tolist() == [False] * 3 + [True] * 9
    assert (batch["input_ids"][batch["tail"]] == EOS).all()
    assert batch["supervised"].tolist() == [9.0, 10.0]


def test_policy_first_n_supervises_exactly_n_tail_tokens_then_pads():
    batch = collate("first_n", [example(3, 4), example(2, 2, 1)], n=2)
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"][1].tolist() == [1] * 6 + [0] * 3
    assert batch["tail"][1].tolist() == [False] * 4 + [True] * 2 + [False] * 3
    assert not (batch["maskable"] & ~batch["attention_mask"].bool()).any()  # padding never maskable
    assert batch["supervised"].tolist() == [6.0, 4.0]


def test_policy_one_counts_the_tail_as_one_token():
    batch = collate("one", [example(3, 4)])
    assert batch["tail"].sum().item() == 5
    assert batch["supervised"].tolist() == [5.0]


def test_policy_none_has_no_tail_and_pads_after_the_eos():
    batch = collate("none", [example(3, 4), example(2, 2, 1)])
    assert not batch["tail"].any()
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * 3
    assert batch["maskable"][1].tolist() == [False, False, True, True, False, False, False]
    assert batch["supervised"].tolist() == [4.0, 2.0]


def test_truncated_responses_get_no_tail():
    batch = collate("all", [example(3, 9, truncated=True)])
    assert not batch["tail"].any()
    assert batch["supervised"].tolist() == [9.0]


@pytest.mark.parametrize("policy", ["all", "first_n", "one", "none"])
def test_a_row_does_not_depend_on_its_batch_mates(policy):
    a, b = example(3, 4), example(2, 2, 1)
    together = collate(policy, [a, b])
    alone = collate(policy, [a])
    width = alone["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "maskable", "tail"):
        assert torch.equal(together[key][0, :width], alone[key][0])
        assert not together["attention_mask"][0, width:].any()
    assert together["supervised"][0] == alone["supervised"][0]
