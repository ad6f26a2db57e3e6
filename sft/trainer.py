"""`DiffusionSFTTrainer`: TRL's `SFTTrainer` with the masked-diffusion loss.

Wiring only; the math lives in `sft/objective.py`. The trainer overrides three hooks:
- `_get_num_items_in_batch`: the loss denominator of the *global* batch (all accumulation
  micro-batches, summed over data-parallel ranks), so loss and gradients do not depend on how the
  global batch is split;
- `compute_loss`: noise → forward with logits only at masked positions → weighted CE ÷ that
  denominator; logs masked tokens, mean t and the EOS share of supervised tokens;
- evaluation uses a fixed t grid and seed, so eval loss is deterministic.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from trl import SFTTrainer

from sft import objective
from sft.collate import DiffusionCollator
from sft.config import DiffusionSFTConfig
from sft.prediction_head import enable_prediction_positions


class DiffusionSFTTrainer(SFTTrainer):
    """SFT for masked diffusion LMs. `args.mask_token_id` and `args.shift` come from the family."""

    args: DiffusionSFTConfig

    def __init__(
        self, model: Any, args: DiffusionSFTConfig, *, eos_token_id: int, max_length: int, **kwargs: Any
    ) -> None:
        if args.mask_token_id is None:
            raise ValueError("args.mask_token_id must be set (the model family provides it)")
        kwargs.setdefault(
            "data_collator",
            DiffusionCollator(
                eos_token_id=eos_token_id,
                max_length=max_length,
                eos_tail=args.eos_tail,
                eos_tail_n=args.eos_tail_n,
                pad_to_multiple_of=args.pad_to_multiple_of,
            ),
        )
        super().__init__(model=model, args=args, **kwargs)
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        enable_prediction_positions(base)
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the global denominator

    # ------------------------------------------------------------------ global normalisation
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        total = sum(
            objective.row_denominator(b["supervised"], self.args.loss_normalization).sum()
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
        args = self.args
        training = model.training
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        if training:
            keys = objective.row_keys(args.seed, self.state.global_step, inputs["example_ids"])
            t = objective.sample_t(keys, args.t_min)
        else:
            keys = objective.row_keys(args.eval_seed, 0, inputs["example_ids"])
            t = objective.grid_t(inputs["example_ids"], args.eval_t_grid, args.t_min)
        positions = torch.arange(ids.shape[1], device=ids.device)
        noised = objective.add_noise(
            ids,
            attention,
            inputs["maskable"],
            inputs["tail"],
            t,
            objective.token_uniforms(keys, positions),
            mask_token_id=args.mask_token_id,
            weighting=args.weighting,
            cart_p=args.cart_p,
            tail_as_one=args.eos_tail == "one",
        )
        rows, cols = noised.masked.nonzero(as_tuple=True)
        logits = model(
            input_ids=noised.noisy_ids,
            attention_mask=attention,
            prediction_positions=(rows, objective.prediction_source(cols, args.shift)),
        )
        scale = objective.row_loss_scale(inputs["supervised"], args.loss_normalization)
        total = objective.weighted_masked_ce(logits, ids[rows, cols], noised.weights[rows, cols], rows, scale)
        if training and num_items_in_batch is not None:
            # DDP/DeepSpeed average gradients over ranks; the global sum wants their total.
            loss = total / num_items_in_batch.clamp(min=1) * self.accelerator.num_processes
        else:
            denominator = objective.row_denominator(inputs["supervised"], args.loss_normalization)
            loss = total / denominator.sum().clamp(min=1)
        self._log_noise_stats("train" if training else "eval", noised, inputs)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _log_noise_stats(self, mode: str, noised: objective.NoisedBatch, inputs: dict) -> None:
        stats = torch.stack(
            [
                noised.masked.sum().float(),
                noised.t.mean().float(),
                inputs["tail"].sum().float() / (inputs["maskable"].sum().float().clamp(min=1)),
            ]
        ).detach()
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.gather(stats[None]).mean(dim=0)
        for name, value in zip(("masked_tokens", "mean_t", "eos_share"), stats.tolist()):
            self._metrics[mode][name].append(value)

    def prediction_step(
        self, model: Any, inputs: dict, prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
