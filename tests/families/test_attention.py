"""`attention_inputs`, the segmented SDPA and torch's varlen attention (with a reference kernel in
place of the CUDA one): what each attention implementation gets for packed rows."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sft.errors import UserError
from sft.families import attention
from sft.families.attention import (
    TORCH_VARLEN,
    attention_inputs,
    block_diffusion_attention,
    resolve_attn_implementation,
    segmented_sdpa_attention,
    torch_varlen_attention,
)
from sft.recipe import build_run_config
from tests.conftest import recipe_dict

pytestmark = pytest.mark.smoke  # in `make test-min`

# two rows: documents 0 (3 tokens) and 1 (2 tokens) then one padding token; document 2 (4 tokens)
# then two padding tokens
DOC_IDS = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]])
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])


def packed_batch() -> dict[str, torch.Tensor]:
    return {
        "doc_ids": DOC_IDS,
        "positions": POSITIONS,
        "example_ids": torch.tensor([7, 9, 4]),  # three documents in two rows: packed
        "attention_mask": (DOC_IDS >= 0).long(),
    }


def test_a_padded_batch_keeps_its_2d_mask_and_positions():
    batch = {**packed_batch(), "doc_ids": torch.tensor([[0, 0, -1]]), "example_ids": torch.tensor([7])}
    batch["attention_mask"] = torch.tensor([[1, 1, 0]])
    batch["positions"] = torch.tensor([[0, 1, 0]])
    for implementation in ("sdpa", "eager", "flash_attention_2"):
        got = attention_inputs(batch, implementation, torch.float32)
        assert got == {"attention_mask": batch["attention_mask"], "position_ids": batch["positions"]}


@pytest.mark.parametrize("implementation", ["sdpa", "flash_attention_2", TORCH_VARLEN])
def test_packed_rows_get_segment_boundaries_over_the_flattened_batch(implementation):
    got = attention_inputs(packed_batch(), implementation, torch.float32)
    assert got["attention_mask"] is None and got["position_ids"] is POSITIONS
    # segments: doc 0 | doc 1 | row 0's padding | doc 2 | row 1's padding
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["cu_seq_lens_k"] is got["cu_seq_lens_q"]
    assert got["max_length_q"] == got["max_length_k"] == 4


def test_eager_gets_an_additive_block_diagonal_mask():
    mask = attention_inputs(packed_batch(), "eager", torch.bfloat16)["attention_mask"]
    allowed = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # padding attends only to itself: no empty row
        ],
        dtype=torch.bool,
    )
    assert mask.dtype == torch.bfloat16 and mask.shape == (2, 1, 6, 6)
    assert torch.equal(mask[0, 0] == 0, allowed)
    assert torch.all(mask[0, 0][~allowed] == torch.finfo(torch.bfloat16).min)


class Attention(torch.nn.Module):
    """What transformers' attention functions read from the calling module (4 heads, 2 KV heads)."""

    num_key_value_groups = 2
    is_causal = False


def qkv(batch: int, width: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    # laid out (B, L, H, D) and viewed (B, H, L, D), as the models hand them over
    return tuple(torch.randn(batch, width, heads, 8).transpose(1, 2) for heads in (4, 2, 2))


def test_segmented_sdpa_equals_sdpa_under_the_block_diagonal_mask():
    query, key, value = qkv(2, 6)
    inputs = attention_inputs(packed_batch(), "sdpa", torch.float32)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = segmented_sdpa_attention(
        Attention(), query, key, value, None, scaling=0.3, is_causal=False, **inputs
    )
    same_segment = (DOC_IDS[:, :, None] == DOC_IDS[:, None, :])[:, None]  # a row's padding is one segment
    expected, _ = sdpa_attention_forward(
        Attention(), query, key, value, same_segment, scaling=0.3, is_causal=False
    )
    assert got.shape == (2, 6, 4, 8)
    assert torch.allclose(got, expected, atol=1e-6)


def test_sdpa_without_segments_is_transformers_sdpa():
    query, key, value = qkv(2, 6)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    got, _ = AttentionInterface()["sdpa"](Attention(), query, key, value, mask, scaling=0.3, is_causal=False)
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, mask, scaling=0.3, is_causal=False)
    assert torch.equal(got, expected)
    assert AttentionInterface()["sdpa"] is segmented_sdpa_attention  # what the models dispatch to


def reference_varlen_attn(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)
):
    """torch 2.11's `varlen_attn` (no `enable_gqa`) in plain torch: (T, H, D), attention within segments."""
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k
    assert query.shape[1] == key.shape[1] == value.shape[1]  # this release cannot group K/V heads
    assert window_size in ((-1, -1), (-1, 0)) and return_aux is None  # full or causal attention
    bounds = cu_seq_q.tolist()
    assert max(e - s for s, e in zip(bounds[:-1], bounds[1:])) == max_q
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                query[s:e].transpose(0, 1),
                key[s:e].transpose(0, 1),
                value[s:e].transpose(0, 1),
                scale=scale,
                is_causal=window_size == (-1, 0),
            ).transpose(0, 1)
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
    )


@pytest.fixture
def varlen_kernel(monkeypatch):
    """torch's varlen FlashAttention (CUDA only) replaced by the reference above, float32 allowed."""
    calls = []

    @functools.wraps(reference_varlen_attn)  # the same signature
    def kernel(*args, **kwargs):
        calls.append(kwargs)
        return reference_varlen_attn(*args, **kwargs)

    monkeypatch.setattr(attention, "varlen_attn", kernel)
    monkeypatch.setattr(attention, "VARLEN_DTYPES", (torch.float32, torch.bfloat16))
    return calls


def block_diagonal_sdpa(query, key, value, scaling):
    same_segment = (DOC_IDS[:, :, None] == DOC_IDS[:, None, :])[:, None]
    return sdpa_attention_forward(
        Attention(), query, key, value, same_segment, scaling=scaling, is_causal=False
    )[0]


def test_torch_varlen_hands_the_segments_to_the_kernel_with_kv_heads_repeated(varlen_kernel):
    query, key, value = qkv(2, 6)
    inputs = attention_inputs(packed_batch(), TORCH_VARLEN, torch.float32)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = AttentionInterface()[TORCH_VARLEN](Attention(), query, key, value, None, scaling=0.3, **inputs)
    assert varlen_kernel == [{"scale": 0.3, "window_size": (-1, -1)}]  # bidirectional; no `enable_gqa` here
    assert got.shape == (2, 6, 4, 8)
    assert torch.allclose(got, block_diagonal_sdpa(query, key, value, 0.3), atol=1e-6)


def test_torch_varlen_lets_a_kernel_with_enable_gqa_group_the_kv_heads(monkeypatch):
    seen = []

    def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size, enable_gqa):
        seen.append((key.shape[1], enable_gqa))
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
        return reference_varlen_attn(
            query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size
        )

    monkeypatch.setattr(attention, "varlen_attn", kernel)
    query, key, value = (s.bfloat16() for s in qkv(2, 6))
    inputs = attention_inputs(packed_batch(), TORCH_VARLEN, torch.bfloat16)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = torch_varlen_attention(Attention(), query, key, value, None, scaling=0.3, **inputs)
    assert seen == [(2, True)]
    assert torch.allclose(got.float(), block_diagonal_sdpa(query, key, value, 0.3).float(), atol=1e-2)


def test_torch_varlen_is_causal_only_when_the_model_says_so(varlen_kernel):
    query, key, value = qkv(2, 6)
    inputs = attention_inputs(packed_batch(), TORCH_VARLEN, torch.float32)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = torch_varlen_attention(
        Attention(), query, key, value, None, scaling=0.3, is_causal=True, **inputs
    )
    assert varlen_kernel[-1]["window_size"] == (-1, 0)
    causal = (DOC_IDS[:, :, None] == DOC_IDS[:, None, :]) & torch.ones(6, 6, dtype=torch.bool).tril()
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, causal[:, None], scaling=0.3)
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_torch_2_10_kernel_is_told_to_attend_both_ways(monkeypatch):
    seen = []

    def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        seen.append(is_causal)
        return reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)

    monkeypatch.setattr(attention, "varlen_attn", kernel)
    monkeypatch.setattr(attention, "VARLEN_DTYPES", (torch.float32,))
    query, key, value = qkv(2, 6)
    inputs = attention_inputs(packed_batch(), TORCH_VARLEN, torch.float32)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = torch_varlen_attention(Attention(), query, key, value, None, scaling=8**-0.5, **inputs)
    assert seen == [False]
    assert torch.allclose(got, block_diagonal_sdpa(query, key, value, 8**-0.5), atol=1e-6)


def test_torch_varlen_without_segments_or_in_float32_is_sdpa(monkeypatch):
    def no_kernel(*args, **kwargs):
        raise AssertionError("the varlen kernel takes half precision only")

    monkeypatch.setattr(attention, "varlen_attn", no_kernel)
    query, key, value = qkv(2, 6)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    got, _ = torch_varlen_attention(Attention(), query, key, value, mask, scaling=0.3, is_causal=False)
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, mask, scaling=0.3, is_causal=False)
    assert torch.equal(got, expected)
    inputs = attention_inputs(packed_batch(), TORCH_VARLEN, torch.float32)
    inputs.pop("attention_mask"), inputs.pop("position_ids")
    got, _ = torch_varlen_attention(Attention(), query, key, value, None, scaling=0.3, **inputs)
    assert torch.allclose(got, block_diagonal_sdpa(query, key, value, 0.3), atol=1e-6)


def test_packed_rows_under_an_implementation_that_ignores_boundaries_are_refused():
    with pytest.raises(UserError, match="'flex_attention' attention would let packed documents attend"):
        attention_inputs(packed_batch(), "flex_attention", torch.float32)
    padded = {**packed_batch(), "example_ids": torch.tensor([7, 9])}  # one document per row
    assert attention_inputs(padded, "flex_attention", torch.float32)["attention_mask"] is not None


def test_a_packing_recipe_naming_flex_attention_is_a_one_line_error(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "run")
    raw["data"]["batching"] = "pack"
    raw["model"]["attn_implementation"] = "flex_attention"
    with pytest.raises(
        UserError, match="model.attn_implementation: 'flex_attention' attention ignores packed"
    ):
        build_run_config(raw)
    raw["data"]["batching"] = "pad"
    assert build_run_config(raw).model.attn_implementation == "flex_attention"


def test_a_block_diffusion_recipe_may_pack_under_flex_attention(qwen2_dir, chat_file, tmp_path):
    raw = recipe_dict(qwen2_dir, chat_file, tmp_path / "run")
    raw["data"]["batching"] = "pack"
    raw["model"]["attn_implementation"] = "flex_attention"
    raw["diffusion"]["block_size"] = 4  # its BlockMask keeps packed documents apart
    assert build_run_config(raw).model.attn_implementation == "flex_attention"


def test_block_diffusion_takes_flex_attention_on_cuda_and_sdpa_on_the_cpu_under_auto():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert block_diffusion_attention("auto", TORCH_VARLEN, cuda) == "flex_attention"
    assert block_diffusion_attention("auto", "flash_attention_2", cuda) == "flex_attention"
    assert block_diffusion_attention("auto", "sdpa", cpu) == "sdpa"
    for named in ("sdpa", "eager", "flex_attention"):
        assert block_diffusion_attention(named, named, cuda) == named
    for named in ("flash_attention_2", TORCH_VARLEN):
        with pytest.raises(UserError, match=f"which {named} cannot take"):
            block_diffusion_attention(named, named, cuda)
    with pytest.raises(UserError, match="flex_attention has no backward pass on the CPU"):
        block_diffusion_attention("flex_attention", "flex_attention", cpu)


def test_auto_picks_flash_attn_then_torch_varlen_on_cuda_and_sdpa_elsewhere(monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attn_implementation("auto") == "sdpa"
    with pytest.warns(UserWarning, match="torch_varlen needs CUDA"):
        assert resolve_attn_implementation(TORCH_VARLEN) == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "varlen_attn", reference_varlen_attn)
    assert resolve_attn_implementation("auto") == TORCH_VARLEN
    assert resolve_attn_implementation(TORCH_VARLEN) == TORCH_VARLEN
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert resolve_attn_implementation("auto") == "flash_attention_2"


def test_auto_on_cuda_loads_the_model_under_torch_varlen_which_padded_batches_run_as_sdpa(
    qwen2_dir, monkeypatch
):
    from sft.config import ModelSettings
    from sft.families.loader import load_model

    reference = load_model(ModelSettings(name_or_path=str(qwen2_dir), attn_implementation="sdpa")).model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "varlen_attn", reference_varlen_attn)
    model = load_model(ModelSettings(name_or_path=str(qwen2_dir))).model  # model.attn_implementation: auto
    assert model.config._attn_implementation == TORCH_VARLEN
    ids, mask = torch.randint(4, 200, (2, 9)), torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    with torch.no_grad():
        got, expected = (m(input_ids=ids, attention_mask=mask).logits for m in (model, reference))
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=1e-5)
