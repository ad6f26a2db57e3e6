"""`dlm-sft plan RECIPE`: a run's size and per-GPU memory, before renting GPUs.

Size: examples, tokens and optimizer steps, from the tokenized data when the data and tokenizer are
on disk (`sft.train.prepare_data`, cached), else from the data recipe's documented counts (for
`recipes/data/*.yaml` outputs; the mean tokens per example is then an *assumption* and labelled so).
Model: parameter counts from config.json (local, or a built-in table of the shipped hub ids), never
the weights. Memory per GPU, in bytes:

    weights      = P · w                      (w: weight bytes; ZeRO with bf16/fp16 keeps 16-bit copies)
    gradients    = P_train · g                (g = w for trained weights; LoRA adapters fp32)
    optimizer    = P_train · (8 + 4·master)   (AdamW m, v fp32; ZeRO adds an fp32 master copy when the
                                               weights are 16-bit; torch AdamW keeps m, v in the
                                               weights' dtype: 2·w)
    sharding     ddp: none;  zero2: gradients + optimizer ÷ N;  zero3/fsdp: all three ÷ N
                 (+ one gathered layer ×2 for prefetch under zero3/fsdp)
    activations  per decoder layer and token, at a bytes (2 under bf16/fp16, else 4):
                     a · (8·H + 4·kv + 4·I)   (+ a · 2·heads·L with eager attention: scores, probs)
                 H hidden, kv = KV heads × head dim, I MLP width, L row length; ×T = micro-batch × L
                 tokens × layers; LoRA with dropout adds a·(6·H + I), the adapters' dropped-out
                 inputs. With activation checkpointing only each layer's input is kept,
                 a·H·T per layer, plus one layer's full activations while it is recomputed. Either
                 way the backward pass adds one layer's activation gradients.
    loss head    the backbone's last hidden state (a·H·T, twice: norm in and out), the hidden states
                 gathered at the masked positions (N ≤ T, all supervised tokens in the worst case,
                 a·H·N), and one chunk of min(N, 512) logits (`objective.HEAD_CHUNK_TOKENS`): in
                 the compute dtype, as fp32, and their fp32 gradient.

The row length L is data.max_length when the EOS tail fills rows (`eos_tail: all` / `one`), else
max_length as the worst case of a padded batch. The total leaves out the CUDA context and allocator
fragmentation: the verdict asks for 10% headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft import checkpoint_io
from sft.config import RunConfig
from sft.errors import UserError
from sft.objective import HEAD_CHUNK_TOKENS

GIB = 1024**3
ENGINES = ("ddp", "fsdp", "zero2", "zero3")
HEADROOM = 0.9  # the share of a GPU's memory a run may plan to use
DATA_RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "data"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide a decoder-only transformer's parameter count and activations."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    qkv_bias: bool
    dtype: str = "float32"  # the checkpoint's own dtype (what `model.dtype: auto` loads)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.kv_dim, self.intermediate_size
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def layer_params(self) -> int:
        bias = self.num_heads * self.head_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linear_shapes()) + bias + 2 * self.hidden_size

    def params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return embeddings + self.num_layers * self.layer_params() + self.hidden_size

    def lora_params(self, rank: int) -> int:
        """LoRA parameters with `target_modules: all-linear` (every linear layer but the LM head)."""
        return self.num_layers * sum(rank * (a + b) for a, b in self.linear_shapes())


def _qwen2(vocab: int, hidden: int, layers: int, heads: int, kv: int, inter: int, tied: bool) -> ModelShape:
    return ModelShape(vocab, hidden, layers, heads, kv, hidden // heads, inter, tied, True, "bfloat16")


KNOWN_MODELS: dict[str, ModelShape] = {
    # Dream = Qwen2.5-7B's shape (SPEC §3)
    "Dream-org/Dream-v0-Base-7B": _qwen2(152064, 3584, 28, 28, 4, 18944, False),
    "Dream-org/Dream-v0-Instruct-7B": _qwen2(152064, 3584, 28, 28, 4, 18944, False),
    # LLaDA-8B: d_model 4096, 32 layers, 32 heads (no GQA), mlp_hidden_size 12288, embedding_size 126464
    "GSAI-ML/LLaDA-8B-Base": ModelShape(126464, 4096, 32, 32, 32, 128, 12288, False, False, "bfloat16"),
    "GSAI-ML/LLaDA-8B-Instruct": ModelShape(126464, 4096, 32, 32, 32, 128, 12288, False, False, "bfloat16"),
    "Qwen/Qwen2.5-0.5B": _qwen2(151936, 896, 24, 14, 2, 4864, True),
    "Qwen/Qwen2.5-1.5B": _qwen2(151936, 1536, 28, 12, 2, 8960, True),
    "Qwen/Qwen2.5-3B": _qwen2(151936, 2048, 36, 16, 2, 11008, True),
    "Qwen/Qwen2.5-7B": _qwen2(152064, 3584, 28, 28, 4, 18944, False),
}
"""Shapes of the hub models the shipped recipes name, for planning without their config.json."""


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A `ModelShape` from a config.json (Qwen2/Llama/Dream keys, or LLaDA's OLMo-style keys)."""
    from sft.families.llada import is_llada_layout, llama_config

    model_type = str(config.get("model_type", "")).lower()
    if is_llada_layout(config):
        config = {**llama_config(config), "torch_dtype": config.get("torch_dtype", "bfloat16")}
        model_type = "llama"
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return ModelShape(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type in ("qwen2", "dream") or bool(config.get("attention_bias", False)),
            dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32").removeprefix("torch."),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"config.json lacks a model dimension ({err})",
            key="model.name_or_path",
            expected="a Qwen2, Llama, Dream or LLaDA config.json",
        ) from None


def model_shape(name_or_path: str) -> tuple[ModelShape, str]:
    """The model's shape and where it came from: a local config.json, the built-in table, or the hub
    cache."""
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return shape_from_config(yaml.safe_load(local.read_text(encoding="utf-8"))), f"{local}"
    if name_or_path in KNOWN_MODELS:
        return KNOWN_MODELS[name_or_path], f"built-in shape of {name_or_path} (no weights needed)"
    from sft.families import read_config

    return shape_from_config(read_config(name_or_path)), f"config.json of {name_or_path}"


# -------------------------------------------------------------------------------------------- data
@dataclass
class DataSize:
    """How many training examples and tokens one epoch holds, and how that was found."""

    examples: int
    mean_tokens: float  # prompt + response + EOS per example, before any EOS tail
    source: str
    assumed: list[str] = field(default_factory=list)  # what is an assumption, not a count
    rows: int | None = None  # packed rows (batching: pack) or None = one example per row
    longest: int | None = None


@dataclass(frozen=True)
class DocumentedData:
    """A data recipe's documented output, for planning before it is prepared."""

    input_rows: int
    kept_rows: int
    assumed_mean_tokens: int


DOCUMENTED_DATA = {
    # recipes/data/tulu3_smoltalk.yaml: 939,343 + 1,043,917 inputs, ~1.8M kept (Dream's count).
    # The mean length is an assumption: Tulu 3 + SmolTalk conversations under 2048 tokens.
    "tulu3_smoltalk": DocumentedData(1_983_260, 1_800_000, 650),
}


def _paths(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def data_size(
    config: RunConfig, examples: int | None = None, mean_tokens: float | None = None
) -> DataSize | None:
    """Count the training data: tokenized when it and the tokenizer are on disk, else documented;
    None when neither is possible (the memory estimate does not need it)."""
    train = _paths(config.data.train)
    on_disk = bool(train) and all(Path(p).exists() for p in train)
    if examples is not None:
        mean = mean_tokens if mean_tokens is not None else config.data.max_length / 2
        assumed = [] if mean_tokens is not None else [f"mean tokens per example {mean:.0f} (max_length / 2)"]
        return DataSize(examples, mean, "--examples", assumed)
    if on_disk and _tokenizer_on_disk(config):
        return _tokenized_size(config)
    if on_disk:  # the tokenizer is a hub id not on disk: count the rows, assume their length
        from sft.data import load_chat_rows

        mean = mean_tokens if mean_tokens is not None else config.data.max_length / 2
        assumed = [] if mean_tokens is not None else [f"mean tokens per example {mean:.0f} (max_length / 2)"]
        return DataSize(len(load_chat_rows(train)), mean, "rows on disk (tokenizer not on disk)", assumed)
    documented = _documented_size(train, config.data.max_length)
    if documented is not None:
        if mean_tokens is not None:
            documented.mean_tokens, documented.assumed = mean_tokens, documented.assumed[:-1]
        return documented
    return None


def _tokenizer_on_disk(config: RunConfig) -> bool:
    return Path(config.model.tokenizer or config.model.name_or_path).is_dir()


def _tokenized_size(config: RunConfig) -> DataSize:
    from sft.train import prepare_data

    data = prepare_data(config)
    lengths = [len(ids) for ids in data.train.dataset["input_ids"]]
    rows = None
    if config.data.batching == "pack":
        from sft.collate import DiffusionCollator, pack_examples

        collator = DiffusionCollator.from_args(config.training, data.eos_token_id, config.data.max_length)
        rows = len(pack_examples(data.train.dataset, collator))
    mean = sum(lengths) / max(len(lengths), 1)
    return DataSize(len(lengths), mean, "tokenized", rows=rows, longest=max(lengths, default=0))


def _documented_size(train: list[str], max_length: int) -> DataSize | None:
    for recipe in sorted(DATA_RECIPES.glob("*.yaml")):
        documented = DOCUMENTED_DATA.get(recipe.stem)
        if documented is None:
            continue
        spec = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        output = Path(str(spec.get("output_dir", ""))).expanduser()
        if not train or any(Path(p).expanduser().resolve() != (output / "train").resolve() for p in train):
            continue
        stats = output / "stats.json"
        if stats.is_file():
            counted = yaml.safe_load(stats.read_text())
            kept = int(counted["train_rows"])
            source = f"{stats} (prepared; tokenizer not on disk)"
        else:
            kept = round(documented.kept_rows * (1 - float(spec.get("eval_fraction", 0.0))))
            source = (
                f"documented by {recipe.relative_to(DATA_RECIPES.parents[1])}: {documented.input_rows:,} "
                f"input, ~{documented.kept_rows:,} kept, minus the eval share"
            )
        mean = min(documented.assumed_mean_tokens, max_length)
        return DataSize(kept, mean, source, [f"mean tokens per example {mean} (assumed)"])
    return None


# ------------------------------------------------------------------------------------------ memory
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
        weights = full_weights / shards + 2 * shape.layer_params() * act

    length = config.data.max_length
    tokens = args.per_device_train_batch_size * length
    per_layer_token = act * (8 * shape.hidden_size + 4 * shape.kv_dim + 4 * shape.intermediate_size)
    if config.lora is not None and config.lora.dropout > 0:  # each adapter's dropped-out input
        per_layer_token += act * (6 * shape.hidden_size + shape.intermediate_size)
    if config.model.attn_implementation == "eager":
        per_layer_token += act * 2 * shape.num_heads * length
    one_layer = per_layer_token * tokens
    full = shape.num_layers * one_layer + act * shape.hidden_size * tokens  # + embedding output
    checkpointed = shape.num_layers * act * shape.hidden_size * tokens + one_layer
    chunk = min(tokens, HEAD_CHUNK_TOKENS)
    head = act * shape.hidden_size * (3 * tokens) + chunk * shape.vocab_size * (act + 4 + 4)
    # the backward pass holds one layer's activation gradients beside what is saved
    full, checkpointed = full + one_layer, checkpointed + one_layer
    use = checkpointed if args.activation_checkpointing else full
    return MemoryEstimate(weights, grads, optim, use, head, checkpointed, full)


# -------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Everything `dlm-sft plan` prints."""

    config: RunConfig
    shape: ModelShape
    shape_source: str
    data: DataSize | None
    engine: str
    num_gpus: int
    memory: MemoryEstimate
    gpu_mem: float | None = None

    @property
    def global_batch(self) -> int:
        args = self.config.training
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * self.num_gpus

    def row_tokens(self) -> float:
        """Tokens one example occupies in a batch row (with its EOS tail)."""
        diffusion, max_length = self.config.training, self.config.data.max_length
        mean = self.data.mean_tokens if self.data else max_length
        if diffusion.eos_tail in ("all", "one") and self.config.data.batching == "pad":
            return float(max_length)
        if diffusion.eos_tail == "first_n":
            return min(mean + diffusion.eos_tail_n, max_length)
        return mean

    def steps(self) -> tuple[int, int]:
        """(optimizer steps per epoch, total), as transformers' Trainer counts them."""
        args = self.config.training
        if self.data is None:
            raise UserError(
                "the training data could not be counted", key="data.train", expected="--examples N"
            )
        rows = self.data.rows or self.data.examples
        batches = math.ceil(rows / (args.per_device_train_batch_size * self.num_gpus))
        per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
        return per_epoch, total

    def fits(self) -> bool | None:
        return None if self.gpu_mem is None else self.memory.total <= HEADROOM * self.gpu_mem

    def render(self) -> str:
        config, args, data, mem = self.config, self.config.training, self.data, self.memory
        params = self.shape.params()
        trained = params if config.lora is None else self.shape.lora_params(config.lora.r)
        method = "full fine-tuning" if config.lora is None else f"LoRA r={config.lora.r} (all-linear)"
        lines = [
            f"# plan for {config.source}",
            f"model: {config.model.name_or_path} ({self.shape_source})",
            f"  parameters: {_count(params)}; trained: {_count(trained)} ({method}); "
            f"weights as {self._weight_dtype()}",
        ]
        lines += (
            self._data_lines()
            if data
            else [
                f"data: {', '.join(_paths(config.data.train))} is not on disk and no data recipe documents "
                "it: pass --examples N [--mean-tokens M] for examples, tokens and steps"
            ]
        )
        lines += [
            f"batch: {args.per_device_train_batch_size} per device × {args.gradient_accumulation_steps} "
            f"accumulation × {self.num_gpus} GPU(s) = {self.global_batch} global; "
            f"row length {config.data.max_length}",
        ]
        if data:
            per_epoch, total = self.steps()
            lines.append(
                f"optimizer steps: {per_epoch:,} per epoch, {total:,} in all ({total / per_epoch:g} epochs); "
                f"tokens processed: {_count(total * self.global_batch * self.row_tokens())}"
            )
        lines += [
            "",
            f"memory per GPU ({self.engine}, {self.num_gpus} GPU(s), "
            f"{'bf16' if args.bf16 else 'fp16' if args.fp16 else 'fp32'} compute, "
            f"micro-batch {args.per_device_train_batch_size} × {config.data.max_length}):",
        ]
        ckpt = "on" if args.activation_checkpointing else "off"
        rows = [
            ("weights", mem.weights),
            ("gradients", mem.gradients),
            ("optimizer (AdamW)", mem.optimizer),
            (f"activations (checkpointing {ckpt})", mem.activations),
            ("loss head (masked positions)", mem.loss_head),
            ("total", mem.total),
        ]
        lines += [f"  {name:<36}{_gib(value):>12}" for name, value in rows]
        lines.append(
            f"  total with checkpointing on / off:  "
            f"{_gib(mem.total_with(True))} / {_gib(mem.total_with(False))}"
        )
        if self.gpu_mem is not None:
            lines.append("")
            lines.append(self._verdict())
        return "\n".join(lines)

    def _data_lines(self) -> list[str]:
        data = self.data
        assert data is not None
        lines = [
            f"data: {data.source}",
            f"  train examples: {data.examples:,}"
            + (f" (packed into {data.rows:,} rows)" if data.rows else ""),
            f"  tokens per example: {data.mean_tokens:,.0f} mean"
            + (f", {data.longest:,} longest" if data.longest else "")
            + f"; per row with the EOS tail: {self.row_tokens():,.0f}",
            f"  tokens per epoch: {_count(data.examples * data.mean_tokens)} real, "
            f"{_count(data.examples * self.row_tokens())} processed",
        ]
        return lines + [f"  assumption: {a}" for a in data.assumed]

    def _weight_dtype(self) -> str:
        name = self.shape.dtype if self.config.model.dtype == "auto" else self.config.model.dtype
        return f"{name} (model.dtype: {self.config.model.dtype})"

    def _verdict(self) -> str:
        assert self.gpu_mem is not None
        budget = HEADROOM * self.gpu_mem
        mem = self.memory
        if self.fits():
            return f"verdict: fits a {_gib(self.gpu_mem)} GPU ({_gib(mem.total)} of {_gib(budget)} usable)"
        hints = []
        if not self.config.training.activation_checkpointing and mem.total_with(True) <= budget:
            hints.append("training.activation_checkpointing=true")
        if self.config.training.per_device_train_batch_size > 1:
            hints.append("a smaller training.per_device_train_batch_size (raise gradient_accumulation_steps)")
        if self.engine != "zero3":
            hints.append("--accelerate zero3 / fsdp over more GPUs")
        if self.config.lora is None:
            hints.append("a LoRA recipe")
        return (
            f"verdict: does NOT fit a {_gib(self.gpu_mem)} GPU ({_gib(mem.total)} > {_gib(budget)} usable); "
            f"try {'; '.join(hints)}"
        )


def make_plan(
    config: RunConfig,
    engine: str = "ddp",
    num_gpus: int = 1,
    gpu_mem: float | None = None,
    examples: int | None = None,
    mean_tokens: float | None = None,
) -> Plan:
    """Size a run (see the module docstring)."""
    if num_gpus < 1:
        raise UserError(f"must be at least 1, got {num_gpus}", key="--num-gpus")
    shape, source = model_shape(config.model.name_or_path)
    data = data_size(config, examples, mean_tokens)
    memory = estimate_memory(config, shape, engine, num_gpus)
    return Plan(config, shape, source, data, engine, num_gpus, memory, gpu_mem)


def load_plan_recipe(path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """`load_recipe` that accepts data paths not yet on disk (plan sizes runs before the data exists):
    everything else is validated as for training."""
    from sft.recipe import apply_override, build_run_config, load_recipe

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return load_recipe(path, overrides)  # reports the problem as training would
    if not isinstance(raw, dict):
        return load_recipe(path, overrides)
    for override in overrides:
        apply_override(raw, override, path)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    missing = {k: data[k] for k in ("train", "eval") if data.get(k) and not _exists(data[k])}
    checked = {**raw, "data": {**data, **dict.fromkeys(missing, path)}}
    # bf16/fp16 are refused by TrainingArguments on a machine without a GPU: plan for them anyway
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    precision = {k: training[k] for k in ("bf16", "fp16") if training.get(k) is True}
    checked["training"] = {**training, **dict.fromkeys(precision, False)}
    config = build_run_config(checked, path)
    for key, value in missing.items():
        setattr(config.data, key, value)
    for key, value in precision.items():
        setattr(config.training, key, value)
    return config


def _exists(value: Any) -> bool:
    return all(Path(str(p)).exists() for p in ([value] if isinstance(value, str) else value or []))


def parse_size(text: str) -> float:
    """`24GiB`, `80GB`, `40G`, `512MiB` or a plain number of GiB → bytes."""
    return float(checkpoint_io.parse_size(text, key="--gpu-mem", plain_unit=GIB))


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _count(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"
