"""`dlm-sft plan`: run size and per-GPU memory without weights or data, and a memory estimate that
matches what a tiny model really uses when it trains on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sft.cli import main
from sft.data.splits import prepare_data
from sft.export.shards import parse_size
from sft.planning.memory import estimate_memory
from sft.planning.plan import GIB, make_plan
from sft.planning.shapes import model_shape, shape_from_config
from sft.recipe import build_run_config, load_recipe
from sft.training.steps import run_steps
from tests.conftest import REPO, recipe_dict
from tests.format_fixtures import write_llada_dir

pytestmark = pytest.mark.smoke  # in `make test-min`


def test_plan_of_dream_full_recipe_needs_no_weights_and_no_data(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert not (REPO / "data" / "tulu3_smoltalk" / "train").exists()
    assert main(["plan", "recipes/dream-7b/sft_full.yaml", "--engine", "zero3", "--num-gpus", "8",
                 "--gpu-mem", "80GiB"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "built-in shape of Dream-org/Dream-v0-Base-7B" in out and "7.62B" in out
    assert "1,983,260 input" in out and "(assumed)" in out
    assert "4 per device × 8 accumulation × 8 GPU(s) = 256 global" in out
    assert "optimizer steps: 6,997 per epoch, 20,991 in all (3 epochs)" in out
    assert "verdict: fits a 80.00 GiB GPU" in out


def test_full_7b_on_one_24gib_gpu_does_not_fit_and_says_what_to_try(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["plan", "recipes/dream-7b/sft_full.yaml", "--gpu-mem", "24GiB"]) == 0
    verdict = capsys.readouterr().out.splitlines()[-1]
    assert "does NOT fit" in verdict and "zero3" in verdict and "LoRA" in verdict


def test_sharding_and_lora_shrink_the_per_gpu_memory(monkeypatch):
    monkeypatch.chdir(REPO)
    full = load_recipe("recipes/dream-7b/sft_full.yaml", require_data=False)
    ddp, zero2, zero3 = (make_plan(full, engine, 8).memory for engine in ("ddp", "zero2", "zero3"))
    assert zero3.total < zero2.total < ddp.total
    assert zero3.weights < zero2.weights <= ddp.weights  # ZeRO keeps 16-bit weights under bf16
    lora = make_plan(load_recipe("recipes/dream-7b/sft_lora.yaml", require_data=False)).memory
    assert lora.optimizer < 0.02 * ddp.optimizer
    assert lora.total_with(True) < lora.total_with(False)


def test_block_diffusion_and_complementary_pairs_are_planned_with_their_longer_rows(monkeypatch):
    monkeypatch.chdir(REPO)

    def memory(*overrides: str):
        config = load_recipe("recipes/dream-7b/sft_full.yaml", list(overrides), require_data=False)
        return make_plan(config).memory

    plain = memory()
    block = memory("diffusion.block_size=32")  # auto: flex-attention's sparse BlockMask on CUDA
    dense = memory("diffusion.block_size=32", "model.attn_implementation=sdpa")
    pairs = memory("diffusion.complementary=true")
    config = load_recipe("recipes/dream-7b/sft_full.yaml", require_data=False)
    rows, length = config.training.per_device_train_batch_size, 2 * config.data.max_length
    # [x_t ; x_0] doubles every per-token term; SDPA's dense mask adds (2L)^2 bytes per row
    assert block.activations_full == pytest.approx(2 * plain.activations_full, rel=1e-9)
    assert dense.activations_full == pytest.approx(2 * plain.activations_full + rows * length**2, rel=1e-9)
    assert pairs.activations_full == pytest.approx(2 * plain.activations_full, rel=1e-9)
    assert block.weights == plain.weights and block.optimizer == plain.optimizer


def test_known_shapes_match_the_published_parameter_counts():
    assert model_shape("Dream-org/Dream-v0-Base-7B")[0].params() == pytest.approx(7.62e9, rel=0.01)
    assert model_shape("GSAI-ML/LLaDA-8B-Base")[0].params() == pytest.approx(8.02e9, rel=0.01)
    assert model_shape("Qwen/Qwen2.5-0.5B")[0].params() == pytest.approx(0.494e9, rel=0.01)


def test_shape_from_a_llada_layout_config_counts_its_real_weights(tmp_path, tokenizer):
    state = write_llada_dir(tmp_path / "llada", tokenizer)
    shape, source = model_shape(str(tmp_path / "llada"))
    assert source.endswith("config.json")
    assert shape.params() == sum(t.numel() for t in state.values())


MOE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def test_a_mixture_of_experts_config_plans_every_expert_and_activates_only_the_routed_ones(monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    experts = dict(num_experts=4, num_experts_per_tok=2)
    qwen2_moe = Qwen2MoeConfig(**MOE, **experts, moe_intermediate_size=16, shared_expert_intermediate_size=24)
    mixtral = MixtralConfig(**MOE, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2)
    for config, model_class in ((qwen2_moe, Qwen2MoeForCausalLM), (mixtral, MixtralForCausalLM)):
        model = model_class(config)
        shape = shape_from_config(config.to_dict())
        assert shape.params() == sum(p.numel() for p in model.parameters())  # every expert, the router
        assert shape.qkv_bias == config.to_dict().get("qkv_bias", False)
    shape = shape_from_config(qwen2_moe.to_dict())
    assert shape.mlp.active_width == 2 * 16 + 24  # two routed experts and the shared one, not all four
    lora = get_peft_model(Qwen2MoeForCausalLM(qwen2_moe), LoraConfig(r=4, target_modules="all-linear"))
    assert shape.lora_params(4) == sum(p.numel() for p in lora.parameters() if p.requires_grad)

    monkeypatch.chdir(REPO)
    recipe = load_recipe("recipes/dream-7b/sft_full.yaml", require_data=False)
    one_expert = {**qwen2_moe.to_dict(), "num_experts": 0, "intermediate_size": 16}  # dense, one expert wide
    dense = estimate_memory(recipe, shape_from_config(one_expert))
    sparse = estimate_memory(recipe, shape)
    assert sparse.weights > dense.weights and sparse.activations > dense.activations


def test_a_mixture_of_experts_config_with_dense_layers_counts_each_layers_own_mlp(monkeypatch):
    """Qwen-MoE's `mlp_only_layers` / `decoder_sparse_step` and DeepSeek-style `first_k_dense_replace`
    keep dense MLPs in some layers: the parameters are those transformers builds."""
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    layers = {**MOE, "num_hidden_layers": 4, "intermediate_size": 40, "moe_intermediate_size": 16}
    qwen2_moe = Qwen2MoeConfig(
        **layers, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0], decoder_sparse_step=2
    )  # dense: layers 0 (listed) and 2 (off the step)
    glm4_moe = Glm4MoeConfig(
        **layers,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        use_qk_norm=True,
    )  # dense: layer 0; q/k norms
    cases = ((qwen2_moe, Qwen2MoeForCausalLM, 2), (glm4_moe, Glm4MoeForCausalLM, 1))
    for config, model_class, dense in cases:
        shape = shape_from_config(config.to_dict())
        assert shape.dense_layers == dense and shape.dense_mlp.intermediate_size == 40
        assert shape.params() == sum(p.numel() for p in model_class(config).parameters())

    monkeypatch.chdir(REPO)
    recipe = load_recipe("recipes/dream-7b/sft_full.yaml", require_data=False)
    mixed = shape_from_config(qwen2_moe.to_dict())
    all_sparse = shape_from_config({**qwen2_moe.to_dict(), "mlp_only_layers": [], "decoder_sparse_step": 1})
    assert all_sparse.dense_layers == 0 and mixed.params() != all_sparse.params()
    # a dense layer runs 40 wide per token, a sparse one 2 x 16 + the 5632-wide shared expert
    saved = [estimate_memory(recipe, shape).activations_full for shape in (mixed, all_sparse)]
    assert saved[0] < saved[1]


def test_plan_counts_tokenized_data_when_it_is_on_disk(qwen2_dir, chat_file, tmp_path):
    config = build_run_config(recipe_dict(qwen2_dir, chat_file, tmp_path / "run", max_steps=-1))
    plan = make_plan(config)
    assert plan.data.source == "tokenized" and plan.data.examples == 48 and not plan.data.assumed
    assert plan.steps() == run_steps(config, prepare_data(config)) == (6, 18)  # 48 / batch 8, 3 epochs
    assert "train examples: 48" in plan.render()


def test_gpu_memory_sizes_parse():
    assert parse_size("24GiB", key="--gpu-mem", plain_unit=GIB) == 24 * GIB
    assert parse_size("80GB", key="--gpu-mem", plain_unit=GIB) == 80e9
    assert parse_size("40", key="--gpu-mem", plain_unit=GIB) == 40 * GIB
    with pytest.raises(Exception, match="not a memory size"):
        parse_size("lots", key="--gpu-mem", plain_unit=GIB)


MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    import psutil, torch
    torch.set_num_threads(1)
    from transformers import AutoTokenizer
    from tests.conftest import QUICKSTART_MODEL, recipe_dict, sort_rows, tiny_qwen2_config, write_chat_rows
    from sft.planning.plan import make_plan
    from sft.recipe import build_run_config
    from sft.training.run import build_trainer
    from sft.data.splits import prepare_data

    root = Path(sys.argv[1])
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    config = tiny_qwen2_config(tokenizer, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    config.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = write_chat_rows(root / "train.jsonl", sort_rows(16))
    raw = recipe_dict(root / "model", data, root / "run", max_steps=2, per_device_train_batch_size=2,
                      learning_rate=1e-4)
    raw["model"]["from_scratch"] = True
    raw["data"]["max_length"] = 128
    raw["diffusion"] = {"eos_tail": "all"}
    run = build_run_config(raw)
    plan = make_plan(run)
    prepared = prepare_data(run)
    process = psutil.Process()
    baseline = process.memory_info().rss
    trainer = build_trainer(run, prepared)
    peak, done = baseline, False

    def sample():
        global peak
        while not done:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    trainer.train()
    done = True
    sampler.join()
    numbers = {"params": plan.shape.params(), "estimate": plan.memory.total, "measured": peak - baseline}
    print(json.dumps(numbers))
    """
)


def test_memory_estimate_is_within_30_percent_of_measured_peak_on_cpu(tmp_path):
    """A 24M-parameter model (fp32 weights, gradients and AdamW states dominate, activations are a
    quarter) trains two steps; its peak RSS above the process's baseline is what the plan predicts."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert 20e6 < numbers["params"] < 50e6
    assert numbers["estimate"] == pytest.approx(numbers["measured"], rel=0.30), numbers
