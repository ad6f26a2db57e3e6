"""`DiffusionSFTTrainer`: TRL's `SFTTrainer` with the masked-diffusion loss.

Wiring only; the math lives in `sft/objective.py`. The trainer overrides three hooks:
- `_get_num_items_in_batch`: the loss denominator of the *global* batch (all accumulation
  micro-batches, summed over data-parallel ranks), so loss and gradients do not depend on how the
  global batch is split;
- `compute_loss`: noise → forward with the LM head only at masked positions, fused with the
  weighted CE ÷ that denominator; adds masked tokens, t and the EOS share of supervised tokens to
  sums kept on the device, which `log` reduces over ranks once per logging step;
- evaluation uses a fixed t grid and seed, so eval loss is deterministic;
and guards the optimizer: a step whose gradients are not finite on any rank is skipped (no update)
by every rank and counted (`nonfinite_steps`); more than `max_consecutive_nonfinite` in a row abort
the run with a clear message, leaving the last complete checkpoint as it was.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from torch.distributed.tensor import DTensor
from trl import SFTTrainer

from sft import objective
from sft.attention import attention_inputs
from sft.block_diffusion import block_model_inputs, block_prediction_source
from sft.collate import DiffusionCollator
from sft.config import DiffusionSFTConfig
from sft.errors import UserError
from sft.prediction_head import enable_prediction_positions


class DiffusionSFTTrainer(SFTTrainer):
    """SFT for masked diffusion LMs. `args.mask_token_id` and `args.shift` come from the family."""

    args: DiffusionSFTConfig

    def __init__(
        self, model: Any, args: DiffusionSFTConfig, *, eos_token_id: int, max_length: int, **kwargs: Any
    ) -> None:
        if args.mask_token_id is None:
            raise ValueError("args.mask_token_id must be set (the model family provides it)")
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = DiffusionCollator.from_args(args, eos_token_id, max_length)
        super().__init__(model=model, args=args, **kwargs)
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        if args.block_size and base.config._attn_implementation == "flash_attention_2":
            raise UserError(
                "block diffusion needs a 4-D attention mask (noisy block ⊕ clean prefix), which "
                "flash_attention_2 cannot take",
                key="model.attn_implementation",
                expected="sdpa or eager with diffusion.block_size",
            )
        enable_prediction_positions(base)
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the global denominator
        self.nonfinite_steps = 0
        self._noise_sums: dict[str, torch.Tensor] = {}  # per mode: noise_stats summed since the last log
        self._noise_batches: dict[str, int] = {}  # per mode: micro-batches in those sums
        self._consecutive_nonfinite = 0

    # ------------------------------------------------------------------ non-finite steps
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if not self.is_deepspeed_enabled:  # DeepSpeed skips overflowing steps itself
            step = optimizer.step

            def guarded_step(*args: Any, **kwargs: Any) -> Any:
                if self._gradients_finite(optimizer):
                    self._consecutive_nonfinite = 0
                    return step(*args, **kwargs)
                self._skip_nonfinite_step(optimizer)
                return None

            optimizer.step = guarded_step
        return optimizer

    def _gradients_finite(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether every gradient on every rank is finite. Each rank checks what it holds (its shards
        under FSDP) and the verdicts are summed over ranks, so all ranks skip or step together."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        nonfinite = torch.zeros(1, device=self.accelerator.device)
        if local:
            nonfinite += ~torch.stack([g.isfinite().all() for g in local]).all()
        if self.accelerator.num_processes > 1:
            nonfinite = self.accelerator.reduce(nonfinite, reduction="sum")
        return not nonfinite.item()

    def _skip_nonfinite_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        self._metrics["train"]["nonfinite_steps"].append(float(self.nonfinite_steps))
        if self._consecutive_nonfinite > self.args.max_consecutive_nonfinite:
            raise TrainingDiverged(
                f"{self._consecutive_nonfinite} optimizer steps in a row had a non-finite loss or gradient "
                f"(at step {self.state.global_step}); stopped. The last complete checkpoint in "
                f"{self.args.output_dir} is unchanged",
                key="training.max_consecutive_nonfinite",
                expected="a lower learning rate, bf16 instead of fp16, or clean data",
            )

    # ------------------------------------------------------------------ global normalisation
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        copies = 2 if self.args.complementary else 1  # a complementary pair counts twice
        total = copies * sum(
            objective.doc_denominator(b["supervised"], self.args.loss_normalization).sum()
            for b in batch_samples
        )
        total = torch.as_tensor(total, dtype=torch.float32, device=device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    # ------------------------------------------------------------------ the loss
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> Any:
        args, training = self.args, model.training
        complement = None
        if training and args.complementary:  # both halves of each pair in this micro-batch
            inputs, complement = objective.complementary_pairs(inputs)
        ids, doc_ids, positions = inputs["input_ids"], inputs["doc_ids"], inputs["positions"]
        blocks = None
        if args.block_size:
            blocks = objective.block_index(inputs["maskable"], doc_ids, positions, args.block_size)
        noised = self._add_noise(inputs, training, complement, blocks)
        rows, cols = noised.masked.nonzero(as_tuple=True)
        config = self.accelerator.unwrap_model(model).config
        if blocks is None:
            source = objective.prediction_source(cols, positions[rows, cols], args.shift)
            model_inputs = {
                "input_ids": noised.noisy_ids,
                **attention_inputs(inputs, config._attn_implementation, self._compute_dtype()),
            }
        else:  # the row is [x_t ; x_0] (sft/block_diffusion.py)
            source = block_prediction_source(rows, cols, positions, blocks, args.shift)
            model_inputs = block_model_inputs(
                noised.noisy_ids,
                ids,
                doc_ids,
                positions,
                blocks,
                config._attn_implementation,
                self._compute_dtype(),
            )
        denominator = None
        if training and num_items_in_batch is not None:
            # DDP/DeepSpeed average gradients over ranks; the global sum wants their total.
            denominator = num_items_in_batch.clamp(min=1) / self.accelerator.num_processes
        loss_weights = objective.masked_token_weights(
            noised, doc_ids, inputs["supervised"], args.loss_normalization, denominator
        )
        # the forward is patched (sft/prediction_head.py): the LM head runs only at `source` and the
        # model returns Σ loss_weights · CE against `prediction_targets` there (a fused linear + CE)
        loss = model(
            **model_inputs,
            prediction_positions=(rows, source),
            prediction_targets=ids[rows, cols],
            prediction_weights=loss_weights,
        )
        self._add_noise_stats("train" if training else "eval", noised, inputs)
        return (loss, {}) if return_outputs else loss

    def _add_noise(
        self,
        inputs: dict[str, torch.Tensor],
        training: bool,
        complement: torch.Tensor | None = None,
        blocks: torch.Tensor | None = None,
    ) -> objective.NoisedBatch:
        """Training draws each document's t and noise from (seed, step, example id); evaluation uses a
        fixed t grid and seed, so eval loss is deterministic. `complement` flags the second halves
        of complementary pairs. With `blocks`, every block draws its own t from hash(key, block)
        (evaluation: grid cell example id + block); the document's t is then their mean."""
        args, docs = self.args, inputs["example_ids"]
        draw = objective.sample_pair_t if complement is not None else objective.sample_t
        if training:
            keys = objective.example_keys(args.seed, self.state.global_step, docs)
            t = draw(keys, args.t_min)
        else:
            keys = objective.example_keys(args.eval_seed, 0, docs)
            t = objective.grid_t(docs, args.eval_t_grid, args.t_min)
        token_t = None
        if blocks is not None:
            doc_ids, maskable = inputs["doc_ids"], inputs["maskable"]
            owner = doc_ids.clamp(min=0)
            if training:
                token_t = draw(objective.block_keys(keys[owner], blocks), args.t_min)
            else:
                token_t = objective.grid_t(docs[owner] + blocks.clamp(min=0), args.eval_t_grid, args.t_min)
            sums = torch.zeros_like(t).index_add_(0, doc_ids[maskable], token_t[maskable])
            counts = torch.zeros_like(t).index_add_(0, doc_ids[maskable], torch.ones_like(token_t[maskable]))
            t = torch.where(counts > 0, sums / counts.clamp(min=1), t)
        return objective.add_noise(
            inputs["input_ids"],
            inputs["maskable"],
            inputs["tail"],
            inputs["doc_ids"],
            inputs["positions"],
            t,
            keys,
            mask_token_id=args.mask_token_id,
            weighting=args.weighting,
            cart_p=args.cart_p,
            tail_as_one=args.eos_tail == "one",
            complement=complement,
            token_t=token_t,
            blocks=blocks,
            block_size=args.block_size,
        )

    def _compute_dtype(self) -> torch.dtype:
        if self.args.bf16:
            return torch.bfloat16
        return torch.float16 if self.args.fp16 else next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ noise statistics
    def _add_noise_stats(self, mode: str, noised: objective.NoisedBatch, inputs: dict) -> None:
        """Add a micro-batch's noise sums to the logging window's, on the device (no sync)."""
        stats = objective.noise_stats(noised, inputs["tail"], inputs["maskable"])
        window = self._noise_sums.get(mode)
        self._noise_sums[mode] = stats if window is None else window + stats
        self._noise_batches[mode] = self._noise_batches.get(mode, 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._log_noise_stats("train" if self.model.training else "eval")
        super().log(logs, start_time)

    def _log_noise_stats(self, mode: str) -> None:
        """Masked tokens per micro-batch (summed over ranks), mean t and the EOS tail's share of
        maskable tokens over the logging window: one reduce over ranks and one copy to the host per
        logging step. Every rank logs at the same steps, so the reduce is collective."""
        sums = self._noise_sums.pop(mode, None)
        if sums is None:
            return
        micro_batches = self._noise_batches.pop(mode)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        masked, t_sum, docs, tail, maskable = sums.tolist()
        self._metrics[mode]["masked_tokens"].append(masked / micro_batches)
        self._metrics[mode]["mean_t"].append(t_sum / max(docs, 1.0))
        self._metrics[mode]["eos_share"].append(tail / max(maskable, 1.0))

    def prediction_step(
        self, model: Any, inputs: dict, prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class TrainingDiverged(UserError):
    """Training stopped after too many consecutive non-finite steps."""
