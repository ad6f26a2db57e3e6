"""`DiffusionSFTTrainer`: TRL's `SFTTrainer` with the masked-diffusion loss, called as `SFTTrainer` is
(the Python API, and what `dlm-sft train` builds; `sft/training/inputs.py` readies its model and data).

Wiring only; the math lives in `sft/loss/objective.py`. The trainer overrides these hooks:
- `_get_num_items_in_batch`: the loss denominator of the *global* batch (all accumulation
  micro-batches, summed over data-parallel ranks), so loss and gradients do not depend on how the
  global batch is split;
- `compute_loss`: noise → forward with the LM head only at masked positions, fused with the
  weighted CE ÷ that denominator; adds masked tokens, t and the EOS share of supervised tokens to
  sums kept on the device, which `log` reduces over ranks once per logging step;
- evaluation uses a fixed t grid and seed, so eval loss is deterministic;
- `train`: Ctrl-C saves a checkpoint and stops (`sft/training/stopping.py`); on resume the recipe's
  logging/eval/save steps and, for a new `max_steps`, the new schedule's learning rate apply;
- `save_model`: the run's records beside the model; a failed save leaves the model in a temporary
  directory that the error names;
and guards the optimizer: a step whose gradients are not finite on any rank is skipped (no update)
by every rank and counted (`nonfinite_steps`); more than `max_consecutive_nonfinite` in a row abort
the run with a clear message, leaving the last complete checkpoint as it was.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_utils import TrainOutput
from trl import SFTTrainer

from sft.config import DiffusionSFTConfig, RunConfig
from sft.data.collate import DiffusionCollator, pack_examples
from sft.errors import UserError
from sft.families.attention import attention_inputs, block_diffusion_attention
from sft.families.loader import ResolvedModel
from sft.loss import noise, objective
from sft.loss.block_diffusion import block_model_inputs, block_prediction_source
from sft.loss.prediction_head import enable_prediction_positions
from sft.notices import quiet_deepspeed_cpu_notice
from sft.training.checkpoints import check_writable
from sft.training.inputs import (
    api_recipe,
    checkpoint_through_fsdp,
    data_tokenizer,
    diffusion_args,
    diffusion_model,
    is_tokenized,
    model_name,
    tokenized_examples,
)
from sft.training.noising import draw_noise
from sft.training.records import ModelCardCallback, write_records
from sft.training.stopping import continue_schedule, interrupted, stop_on_interrupt


class DiffusionSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer` for masked diffusion LMs, called as it is:

        DiffusionSFTTrainer(model="Dream-org/Dream-v0-Base-7B", args=DiffusionSFTConfig(...),
                            train_dataset=chat_rows, eval_dataset=..., processing_class=..., peft_config=...)

    `args` may also be TRL's `SFTConfig` or a `TrainingArguments` (`sft.training.inputs.diffusion_args`).
    `model` is a hub id, a local path or a `PreTrainedModel`; its family (Dream, LLaDA, a Qwen2/Llama
    causal LM made bidirectional) sets `args.mask_token_id` and `args.shift`. The datasets hold
    `messages` or `prompt`/`completion` rows, tokenized by `dlm-sft train`'s code into its cache
    (`args.max_length`, else `DataSettings.max_length`; the EOS tail token from the family's tokenizer),
    or examples it already tokenized. `recipe` is the resolved recipe of `dlm-sft train` (its model and
    data sections, and what the records show); without it they are built from these arguments.
    `save_model()` writes the model, tokenizer, `dlm_run.json` and model card that `dlm-sft export` reads."""

    args: DiffusionSFTConfig

    def __init__(
        self,
        model: str | PreTrainedModel | ResolvedModel,
        args: DiffusionSFTConfig | TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        *,
        recipe: RunConfig | None = None,
        **kwargs: Any,
    ) -> None:
        quiet_deepspeed_cpu_notice()  # accelerate imports DeepSpeed, when installed, to save
        name = model_name(model)
        args = diffusion_args(args, name)
        check_writable(args.output_dir)
        recipe = recipe or api_recipe(name, args, peft_config)
        loaded = diffusion_model(
            model, recipe.model, processing_class, args.seed, args.chat_template_path, args.output_dir
        )
        args.mask_token_id, args.shift = loaded.mask_token_id, loaded.family.shift
        args.max_length = recipe.data.max_length
        splits = {"train_dataset": train_dataset, "eval_dataset": eval_dataset}
        tokenizer, eos = loaded.tokenizer, loaded.eos_token_id
        if any(rows is not None and not is_tokenized(rows) for rows in splits.values()):
            tokenizer, eos = data_tokenizer(
                model, processing_class, loaded, recipe.model, args.chat_template_path
            )
        train_rows, eval_rows = (
            rows
            if rows is None
            else tokenized_examples(rows, tokenizer, eos, recipe.data, key, recipe.source)
            for key, rows in splits.items()
        )
        if data_collator is None:
            pack = recipe.data.batching == "pack"
            data_collator = DiffusionCollator.from_args(
                args, loaded.eos_token_id, args.max_length, train_rows if pack else None
            )
            train_rows = pack_examples(train_rows, data_collator) if pack else train_rows
        checkpoint_through_fsdp(args)
        super().__init__(
            model=loaded.model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_rows,
            eval_dataset=eval_rows,
            processing_class=loaded.tokenizer,
            peft_config=peft_config,
            **kwargs,
        )
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        if args.block_size:
            loaded_attn = base.config._attn_implementation
            attn = block_diffusion_attention(recipe.model.attn_implementation, loaded_attn, args.device)
            if attn != loaded_attn:
                base.set_attn_implementation(attn)
        enable_prediction_positions(base)
        self.recipe, self.family = recipe, loaded.family.name
        self.add_callback(ModelCardCallback(recipe, self.family))
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the global denominator
        self.nonfinite_steps = 0
        self._noise_sums: dict[str, torch.Tensor] = {}  # per mode: noise_stats summed since the last log
        self._noise_batches: dict[str, int] = {}  # per mode: micro-batches in those sums
        self._consecutive_nonfinite = 0

    # ------------------------------------------------------------------ training, resuming, saving
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """`Trainer.train`; Ctrl-C (SIGINT) stops after the current step with a checkpoint saved and
        raises `TrainingInterrupted` naming it (a second Ctrl-C stops at once)."""
        with stop_on_interrupt(self) as interrupt:
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if interrupt.requested:
            raise interrupted(self.args.output_dir, self.state.global_step)
        return output

    def _init_training_state(self, max_steps: int, *args: Any) -> tuple[int, int]:
        """On resume, logging/eval/save steps come from `args` (the recipe), not from the checkpoint's
        trainer_state.json."""
        epochs_and_steps = super()._init_training_state(max_steps, *args)
        self.state.compute_steps(self.args, max_steps)
        return epochs_and_steps

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Resumed with another `max_steps`, the schedule is the one for the new total: the learning
        rate of the first resumed step is the new schedule's, not the checkpoint's (0 at the end of a
        decay). For an unchanged schedule this is the learning rate the checkpoint holds."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            continue_schedule(self.lr_scheduler, self.optimizer)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (or adapter) and tokenizer; called for the run (not a checkpoint), also its
        records (`dlm_run.json`, `trainer_state.json`, the model card). A save that fails saves the
        model into a new temporary directory and raises a `UserError` naming it."""
        output = output_dir or self.args.output_dir
        try:
            super().save_model(output, _internal_call)
        except OSError as err:
            if _internal_call:
                raise
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # a second save would gather again
                raise UserError(
                    f"could not save the trained model ({err.strerror or err}); the newest checkpoint-N "
                    "holds the latest saved weights",
                    file=str(output),
                    key="training.output_dir",
                ) from None
            rescue = tempfile.mkdtemp(prefix="dlm-sft-unsaved-")
            super().save_model(rescue)
            write_records(Path(rescue), self.recipe, self.state, self.family)
            raise UserError(
                f"could not save the trained model ({err.strerror or err}); it was saved to {rescue} instead",
                file=str(output),
                key="training.output_dir",
            ) from None
        if not _internal_call and self.is_world_process_zero():
            write_records(Path(output), self.recipe, self.state, self.family)

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
            blocks = noise.block_index(inputs["maskable"], doc_ids, positions, args.block_size)
        noised = draw_noise(inputs, self.args, self.state.global_step, training, complement, blocks)
        rows, cols = noised.masked.nonzero(as_tuple=True)
        config = self.accelerator.unwrap_model(model).config
        if blocks is None:
            source = objective.prediction_source(cols, positions[rows, cols], args.shift)
            model_inputs = {
                "input_ids": noised.noisy_ids,
                **attention_inputs(inputs, config._attn_implementation, self._compute_dtype()),
            }
        else:  # the row is [x_t ; x_0] (sft/loss/block_diffusion.py)
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
        # the forward is patched (sft/loss/prediction_head.py): the LM head runs only at `source` and the
        # model returns Σ loss_weights · CE against `prediction_targets` there (a fused linear + CE)
        loss = model(
            **model_inputs,
            prediction_positions=(rows, source),
            prediction_targets=ids[rows, cols],
            prediction_weights=loss_weights,
            # a MoE router's auxiliary loss, once per optimizer step as the diffusion loss
            router_loss_weight=1 / args.gradient_accumulation_steps if training else 1.0,
        )
        self._add_noise_stats("train" if training else "eval", noised, inputs)
        return (loss, {}) if return_outputs else loss

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
