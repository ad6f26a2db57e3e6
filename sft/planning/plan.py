"""`dlm-sft plan RECIPE`: a run's size and per-GPU memory, before renting GPUs.

Size from `data_size`, the model's shape from `shapes` (config.json or a family's built-in config,
never the weights), memory from `memory` (its docstring has every term); `Plan.render` prints them
with optimizer steps and a verdict for a given GPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from sft.config import RunConfig
from sft.errors import UserError
from sft.planning.data_size import DataSize, data_size, paths_of
from sft.planning.memory import MemoryEstimate, estimate_memory
from sft.planning.shapes import ModelShape, model_shape
from sft.training.steps import optimizer_steps

GIB = 1024**3
HEADROOM = 0.9  # the share of a GPU's memory a run may plan to use


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
        return optimizer_steps(self.data.rows or self.data.examples, args, self.num_gpus)

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
                f"data: {', '.join(map(str, paths_of(config.data.train)))} is not on disk and no data "
                "recipe documents it: pass --examples N [--mean-tokens M] for examples, tokens and steps"
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


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _count(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"
