"""The trainer's loss (masked-only LM head fused with the weighted CE) against the full-logits loss:
value and every parameter gradient, for every weighting, EOS tail policy and normalisation, with
LoRA (frozen head, or the head trained through `modules_to_save`), tied embeddings, several chunks
and no masked positions at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sft.config import ModelSettings
from sft.data.collate import DiffusionCollator
from sft.errors import UserError
from sft.families.attention import attention_inputs
from sft.families.loader import load_model
from sft.loss import objective
from sft.loss.prediction_head import enable_prediction_positions
from sft.recipe import build_run_config
from sft.training.noising import draw_noise
from sft.training.run import build_model, build_trainer
from tests.conftest import recipe_dict, sort_rows, tiny_qwen2_config, write_chat_rows

CHUNK = 7  # several chunks per batch, the last one partial


def make_trainer(model_dir, tmp_path, lora=None):
    """A trainer whose model runs the fused head `CHUNK` positions at a time."""
    chats = write_chat_rows(tmp_path / "train.jsonl", sort_rows(16))
    raw = recipe_dict(model_dir, chats, tmp_path / "run")
    if lora is not None:
        raw["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, **lora}
    config = build_run_config(raw)
    loaded = build_model(config)
    enable_prediction_positions(loaded.model, chunk_size=CHUNK)
    trainer = build_trainer(config, loaded=loaded)
    trainer.model.train()
    trainer.state.global_step = 3
    return trainer


def batch_for(trainer, eos_tail="first_n", rows=6):
    trainer.args.eos_tail = eos_tail
    collator = DiffusionCollator.from_args(trainer.args, trainer.data_collator.eos_token_id, 32)
    return collator([trainer.train_dataset[i] for i in range(rows)])


def full_logits_loss(trainer, batch):
    """The loss written out on the full B×L×V logits of the model's own forward."""
    args, model = trainer.args, trainer.model
    noised = draw_noise(batch, trainer.args, trainer.state.global_step, True)
    logits = model(input_ids=noised.noisy_ids, **attention_inputs(batch, "sdpa", torch.float32)).logits
    logits = objective.shift_logits(logits) if args.shift else logits
    ce = F.cross_entropy(logits.float().transpose(1, 2), batch["input_ids"], reduction="none")
    supervised, docs = batch["supervised"], batch["doc_ids"].clamp(min=0)
    if args.loss_normalization == "supervised":
        scale, denominator = torch.ones_like(ce), supervised.sum()
    else:
        scale, denominator = 1.0 / supervised[docs], (supervised > 0).sum()
    return (ce * noised.weights * noised.masked * scale).sum() / denominator


def loss_and_grads(trainer, loss_fn, batch):
    trainer.model.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def assert_same_loss_and_gradients(trainer, batch, atol=1e-5):
    fused = loss_and_grads(trainer, lambda b: trainer.compute_loss(trainer.model, b), batch)
    expected = loss_and_grads(trainer, lambda b: full_logits_loss(trainer, b), batch)
    assert fused[0] == pytest.approx(expected[0], abs=atol) and expected[0] > 0
    assert fused[1].keys() == expected[1].keys()
    for name, grad in expected[1].items():
        torch.testing.assert_close(fused[1][name], grad, rtol=0, atol=atol, msg=name)
    return fused


@pytest.fixture(scope="module")
def trainer(qwen2_dir, tmp_path_factory):
    return make_trainer(qwen2_dir, tmp_path_factory.mktemp("head"))


def test_without_prediction_positions_the_forward_is_the_models_own(qwen2_dir):
    model = load_model(ModelSettings(name_or_path=str(qwen2_dir))).model
    ids = torch.randint(4, 200, (3, 20))
    before = model(input_ids=ids).logits
    enable_prediction_positions(model)
    enable_prediction_positions(model)  # idempotent
    assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("weighting", ["inv_t", "linear", "uniform", "cart"])
@pytest.mark.parametrize("eos_tail", ["all", "first_n", "one", "none"])
def test_fused_loss_and_gradients_equal_the_full_logits_ones(trainer, weighting, eos_tail):
    trainer.args.weighting = weighting
    batch = batch_for(trainer, eos_tail)
    masked = draw_noise(batch, trainer.args, trainer.state.global_step, True).masked.sum()
    assert masked > CHUNK and masked % CHUNK != 0  # several chunks, the last one partial
    for normalization in ("supervised", "sequence"):
        trainer.args.loss_normalization = normalization
        fused = assert_same_loss_and_gradients(trainer, batch)
        assert "lm_head.weight" in fused[1]
    trainer.args.weighting, trainer.args.loss_normalization = "inv_t", "supervised"


def test_no_masked_positions_give_zero_loss_and_zero_gradients_everywhere(trainer):
    batch = batch_for(trainer)
    batch["maskable"][:] = False
    loss, grads = loss_and_grads(trainer, lambda b: trainer.compute_loss(trainer.model, b), batch)
    assert loss == 0.0
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert sorted(grads) == sorted(trained)  # every parameter gets its (zero) gradient
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_tied_embeddings_get_both_the_input_and_the_head_gradient(tokenizer, tmp_path):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, tie_word_embeddings=True))
    model.save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    trainer = make_trainer(tmp_path / "tied", tmp_path)
    base = trainer.model
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    fused = assert_same_loss_and_gradients(trainer, batch_for(trainer))
    assert "model.embed_tokens.weight" in fused[1]


def test_lora_trains_the_adapters_and_leaves_the_frozen_head_without_gradient(qwen2_dir, tmp_path):
    trainer = make_trainer(qwen2_dir, tmp_path, lora={})
    fused = assert_same_loss_and_gradients(trainer, batch_for(trainer))
    assert fused[1] and all("lora_" in name for name in fused[1])


def test_lora_with_the_head_in_modules_to_save_trains_its_copy(qwen2_dir, tmp_path):
    trainer = make_trainer(qwen2_dir, tmp_path, lora={"modules_to_save": ["lm_head"]})
    fused = assert_same_loss_and_gradients(trainer, batch_for(trainer))
    assert any("lm_head.modules_to_save" in name for name in fused[1])


def test_lora_adapters_on_the_head_itself_are_refused_in_one_line(qwen2_dir, tmp_path):
    # the fused head reads the head's weight, so an adapter there would be ignored
    with pytest.raises(UserError) as err:
        make_trainer(qwen2_dir, tmp_path, lora={"target_modules": ["q_proj", "lm_head"]})
    line = err.value.line()
    assert "lora.target_modules: an adapter on the LM head cannot be trained" in line
    assert "lora.modules_to_save: [lm_head]" in line and "\n" not in line
