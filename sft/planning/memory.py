"""Per-GPU training memory for planning, in bytes, by kind:

    weights      = P · w                      (w: weight bytes; ZeRO with bf16/fp16 keeps 16-bit copies)
    gradients    = P_train · g                (g = w for trained weights; LoRA adapters fp32)
    optimizer    = P_train · (8 + 4·master)   (AdamW m, v fp32; ZeRO adds an fp32 master copy when the
                                               weights are 16-bit; torch AdamW keeps m, v in the
                                               weights' dtype: 2·w)
    sharding     ddp: none;  zero2: gradients + optimizer ÷ N;  zero3/fsdp: all three ÷ N
                 (+ one gathered layer ×2 for prefetch under zero3/fsdp)
    activations  per decoder layer and token, at a bytes (2 under bf16/fp16, else 4):
                     a · (8·H + 4·kv + 4·I)   (+ a · 2·heads·L with eager attention: scores, probs)
                 H hidden, kv = KV heads × head dim, I the MLP width a token runs through (dense: its
                 width; MoE: experts per token × expert width + shared experts), L row length;
                 ×T = micro-batch × L tokens × layers; LoRA with dropout adds a·(6·H + I), the
                 adapters' dropped-out inputs. With activation checkpointing only each layer's input
                 is kept, a·H·T per layer, plus one layer's full activations while it is recomputed. Either
                 way the backward pass adds one layer's activation gradients.
    loss head    the backbone's last hidden state (a·H·T, twice: norm in and out), the hidden states
                 gathered at the masked positions and their gradient, which the fused head computes
                 in the forward (N ≤ T, all supervised tokens in the worst case, 2·a·H·N), and one
                 chunk of min(N, 512) logits (`linear_cross_entropy.HEAD_CHUNK_TOKENS`): fp32 (the
                 softmax and its gradient in place), plus a copy in the compute dtype each way
                 under bf16/fp16. The head's weight gradient counts under `gradients`.

The row length L is data.max_length when the EOS tail fills rows (`eos_tail: all` / `one`), else
max_length as the worst case of a padded batch. Block diffusion (`diffusion.block_size`) runs rows of
2·L ([x_t ; x_0]); under SDPA or eager they also hold a (2L)² bool attention mask per row (`auto`
plans for CUDA, where flex-attention's sparse BlockMask is negligible); complementary masks double the
rows of a micro-batch. The total leaves out the CUDA context and allocator
fragmentation: the verdict asks for 10% headroom.
"""

from __future__ import annotations

from dataclasses import dataclass

from sft.config import RunConfig
from sft.engines import ENGINES
from sft.errors import UserError
from sft.families.shapes import MlpShape
from sft.loss.linear_cross_entropy import HEAD_CHUNK_TOKENS
from sft.planning.shapes import ModelShape

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class MemoryEstimate:
    """Per-GPU bytes by kind; `activations` with the recipe's checkpointing, both variants kept."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    loss_head: float
    activations_checkpointed: float
    activations_full: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.loss_head

    def total_with(self, checkpointing: bool) -> float:
        other = self.activations_checkpointed if checkpointing else self.activations_full
        return self.total - self.activations + other


def weight_bytes(config: RunConfig, shape: ModelShape) -> int:
    """Bytes per weight as loaded: model.dtype, or the checkpoint's own dtype for `auto`."""
    name = shape.dtype if config.model.dtype == "auto" else config.model.dtype
    return _DTYPE_BYTES.get(name, 4)


def estimate_memory(
    config: RunConfig, shape: ModelShape, engine: str = "ddp", num_gpus: int = 1
) -> MemoryEstimate:
    """Per-GPU training memory (see the module docstring for every term)."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}", key="--engine", expected=", ".join(ENGINES))
    args = config.training
    half = bool(args.bf16 or args.fp16)
    act = 2 if half else 4
    params = shape.params()
    w = weight_bytes(config, shape)
    deepspeed = engine.startswith("zero")
    if deepspeed and half:
        w = 2  # DeepSpeed keeps 16-bit weights (and an fp32 master copy in the optimizer)
    if config.lora is None:
        trained, g = params, w
        opt_per = 8 + (4 if w < 4 else 0) if deepspeed else 2 * w
        frozen = 0
    else:
        trained, g, opt_per = shape.lora_params(config.lora.r), 4, 8
        frozen = params
    full_weights = (params * w) if config.lora is None else frozen * w + trained * 4
    grads, optim = trained * g, trained * opt_per
    shards = max(num_gpus, 1)
    if engine in ("zero2", "zero3", "fsdp"):
        grads, optim = grads / shards, optim / shards
    weights = float(full_weights)
    if engine in ("zero3", "fsdp"):
        largest_layer = max(shape.layer_params(mlp) for mlp, _ in shape.layer_mlps())
        weights = full_weights / shards + 2 * largest_layer * act

    length = config.data.max_length * (2 if args.block_size else 1)  # [x_t ; x_0] rows
    rows = args.per_device_train_batch_size * (2 if args.complementary else 1)
    tokens = rows * length

    def per_layer_token(mlp: MlpShape) -> int:
        saved = act * (8 * shape.hidden_size + 4 * shape.kv_dim + 4 * mlp.active_width)
        if config.lora is not None and config.lora.dropout > 0:  # each adapter's dropped-out input
            saved += act * (6 * shape.hidden_size + mlp.active_width)
        if config.model.attn_implementation == "eager":
            saved += act * 2 * shape.num_heads * length
        return saved

    kinds = shape.layer_mlps()
    one_layer = max(per_layer_token(mlp) for mlp, _ in kinds) * tokens
    layers = sum(count * per_layer_token(mlp) for mlp, count in kinds) * tokens
    full = layers + act * shape.hidden_size * tokens  # + embedding output
    checkpointed = shape.num_layers * act * shape.hidden_size * tokens + one_layer
    chunk = min(tokens, HEAD_CHUNK_TOKENS)
    head = act * shape.hidden_size * (4 * tokens) + chunk * shape.vocab_size * (4 + (2 * act if half else 0))
    # the backward pass holds one layer's activation gradients beside what is saved
    full, checkpointed = full + one_layer, checkpointed + one_layer
    if args.block_size and config.model.attn_implementation in ("sdpa", "eager"):  # the dense block mask
        mask = float(rows * length * length)
        full, checkpointed = full + mask, checkpointed + mask
    use = checkpointed if args.activation_checkpointing else full
    return MemoryEstimate(weights, grads, optim, use, head, checkpointed, full)
