"""The LM head of a ZeRO-3-sharded model is gathered once per micro-batch.

DeepSpeed is not needed: a stand-in partitions the head's parameters the way ZeRO-3 does (the
tensor's data is emptied and `ds_id` set), counts each all-gather through its gather context, and
fetches through module hooks, as ZeRO-3's per-call hooks do, when the head module is called while
partitioned. A computation that used the weight while it was partitioned would fail on the empty
tensor, so matching the unsharded losses and gradients proves the weight was there throughout."""

from __future__ import annotations

import gc
from contextlib import contextmanager

import pytest
import torch

from sft.config import ModelSettings
from sft.families.loader import load_model
from sft.loss import engine_gather
from sft.loss.prediction_head import enable_prediction_positions

pytestmark = pytest.mark.smoke  # in `make test-min`

CHUNK = 4  # masked positions per head chunk: each micro-batch below has several chunks


class StandInZero3:
    """Partition `module`'s parameters; gather them through a counted context or per module call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.full = {p: p.data for p in module.parameters()}
        self.context_gathers = 0
        self.hook_gathers = 0
        for index, param in enumerate(self.full):
            param.ds_id = index
        self.partition()
        module.register_forward_pre_hook(self.fetch_for_call)
        module.register_forward_hook(lambda *_: self.partition())

    def partitioned(self) -> bool:
        return all(p.data.numel() == 0 for p in self.full)

    def partition(self) -> None:
        for param in self.full:
            param.data = torch.empty(0)

    def unpartition(self) -> None:
        for param, data in self.full.items():
            param.data = data

    def fetch_for_call(self, *_) -> None:
        if self.partitioned():
            self.hook_gathers += 1
            self.unpartition()

    @contextmanager
    def gather(self, params):
        assert set(params) == set(self.full)
        if not self.partitioned():  # as DeepSpeed's GatheredParameters refuses it
            raise RuntimeError("Nested GatheredParameters contexts cannot overlap parameters")
        self.context_gathers += 1
        self.unpartition()
        yield
        self.partition()


def micro_batch(seed: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 200, (2, 24), generator=generator)
    rows, cols = (torch.rand(2, 24, generator=generator) < 0.5).nonzero(as_tuple=True)
    return ids, (rows, cols), ids[rows, (cols + 1) % 24]


def head_loss(model, batch) -> torch.Tensor:
    ids, positions, targets = batch
    return model(
        input_ids=ids,
        prediction_positions=positions,
        prediction_targets=targets,
        prediction_weights=torch.ones(len(targets)),
    ).sum()


def losses_and_head_grad(model, batches) -> tuple[list[float], torch.Tensor]:
    losses = []
    for batch in batches:
        loss = head_loss(model, batch)
        loss.backward()
        losses.append(loss.item())
    return losses, model.lm_head.weight.grad.clone()


@pytest.fixture
def model(qwen2_dir):
    model = load_model(ModelSettings(name_or_path=str(qwen2_dir))).model
    enable_prediction_positions(model, chunk_size=CHUNK)
    return model


def test_a_zero3_sharded_head_is_gathered_once_per_micro_batch(model, qwen2_dir, monkeypatch):
    batches = [micro_batch(seed) for seed in range(3)]
    assert all(len(targets) > 3 * CHUNK for _, _, targets in batches)  # several chunks, recomputed
    reference = load_model(ModelSettings(name_or_path=str(qwen2_dir))).model
    enable_prediction_positions(reference, chunk_size=CHUNK)
    expected_losses, expected_grad = losses_and_head_grad(reference, batches)

    zero3 = StandInZero3(model.lm_head)
    monkeypatch.setattr(engine_gather, "zero3_gather", zero3.gather)
    losses, grad = losses_and_head_grad(model, batches)

    assert (zero3.context_gathers, zero3.hook_gathers) == (len(batches), 0)
    assert zero3.partitioned()  # released after each backward
    assert losses == pytest.approx(expected_losses, abs=1e-6)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_without_a_backward_the_head_is_released_when_the_forward_ends(model, monkeypatch):
    zero3 = StandInZero3(model.lm_head)
    monkeypatch.setattr(engine_gather, "zero3_gather", zero3.gather)
    ids, positions, targets = micro_batch(0)
    with torch.no_grad():
        model(
            input_ids=ids,
            prediction_positions=positions,
            prediction_targets=targets,
            prediction_weights=torch.ones(len(targets)),
        )
    assert zero3.context_gathers == 1 and zero3.partitioned()


def test_a_head_that_is_not_partitioned_is_never_gathered(model, monkeypatch):
    def no_gather(params):
        raise AssertionError("gathered a whole head")

    monkeypatch.setattr(engine_gather, "zero3_gather", no_gather)
    ids, positions, targets = micro_batch(0)
    model(
        input_ids=ids,
        prediction_positions=positions,
        prediction_targets=targets,
        prediction_weights=torch.ones(len(targets)),
    ).sum().backward()
    assert model.lm_head.weight.grad is not None


def test_two_forwards_before_one_backward_share_one_gather(model, qwen2_dir, monkeypatch):
    batches = [micro_batch(seed) for seed in range(2)]
    reference = load_model(ModelSettings(name_or_path=str(qwen2_dir))).model
    enable_prediction_positions(reference, chunk_size=CHUNK)
    sum(head_loss(reference, batch) for batch in batches).backward()

    zero3 = StandInZero3(model.lm_head)
    monkeypatch.setattr(engine_gather, "zero3_gather", zero3.gather)
    first = head_loss(model, batches[0])
    second = head_loss(model, batches[1])  # the head is still gathered for the first's backward
    assert zero3.context_gathers == 1 and not zero3.partitioned()
    (first + second).backward()
    assert zero3.partitioned()
    assert torch.allclose(model.lm_head.weight.grad, reference.lm_head.weight.grad, atol=1e-6)


def test_a_forward_never_backpropagated_releases_the_head_when_its_graph_is_dropped(model, monkeypatch):
    zero3 = StandInZero3(model.lm_head)
    monkeypatch.setattr(engine_gather, "zero3_gather", zero3.gather)
    loss = head_loss(model, micro_batch(0))
    assert not zero3.partitioned()
    del loss
    gc.collect()
    assert zero3.partitioned()
    head_loss(model, micro_batch(1)).backward()  # the next micro-batch gathers afresh
    assert zero3.context_gathers == 2 and zero3.partitioned()
