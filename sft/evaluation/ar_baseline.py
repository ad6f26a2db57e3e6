"""The autoregressive baseline of `dlm-sft eval --ar-baseline`: same size, same data, same budget.

A causal LM with the recipe model's architecture (its config.json with `is_causal = True`),
initialised from scratch, is trained with plain `trl.SFTTrainer` on the recipe's `data.train` for
the recipe's steps, batch size, learning rate and schedule, then answers the eval prompts with
greedy `model.generate`. This reruns the diffusion-vs-AR planning comparison of Dream 7B's release
at laptop scale.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, fields

import datasets
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from sft.config import RunConfig
from sft.data.rows import usable_rows
from sft.data.sources import load_chat_rows
from sft.errors import UserError
from sft.evaluation.bundled import prompts_of
from sft.families import known_checkpoints
from sft.families.base import read_config
from sft.families.loader import detect_family, load_family_tokenizer, native_config
from sft.sampling.chat import encode_prompt, stop_token_ids
from sft.sampling.sampler import cut_at_stop, left_pad
from sft.tasks.registry import task_for_source

_DROP = ("architectures", "auto_map", "transformers_version", "dlm_family", "mask_token_id", "is_causal")

BUDGET_FIELDS = (
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "max_grad_norm",
    "optim",
    "seed",
    "bf16",
    "use_cpu",
    "activation_checkpointing",
)
"""Training settings the baseline copies from the recipe (the budget and optimiser)."""


@dataclass
class ARBaseline:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train_seconds: float
    steps: int


def causal_model(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A from-scratch causal LM with the recipe model's architecture and size."""
    source = config.model.name_or_path
    native = native_config(read_config(source), f"{source}/config.json")
    model_type = str(native.get("model_type", ""))
    if model_type not in detect_family(native, source).export_classes:
        raise UserError(
            f"no AR baseline for model_type {model_type!r}",
            file=config.source,
            key="model.name_or_path",
            expected=f"a {known_checkpoints()} architecture",
        )
    model_config = AutoConfig.for_model(
        model_type, **{k: v for k, v in native.items() if k not in (*_DROP, "model_type")}
    )
    model_config.is_causal = True
    torch.manual_seed(config.training.seed)
    model = AutoModelForCausalLM.from_config(model_config)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def train_ar_baseline(config: RunConfig, max_steps: int | None = None) -> ARBaseline:
    """Train the baseline with plain TRL SFT on the recipe's training data and budget."""
    _, tokenizer, _ = load_family_tokenizer(config.model, config.training.chat_template_path)
    model = causal_model(config, tokenizer)
    budget = {name: getattr(config.training, name) for name in BUDGET_FIELDS}
    if max_steps is not None:
        budget["max_steps"] = max_steps
    known = {f.name for f in fields(SFTConfig)}
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="dlm-sft-ar-"),
        max_length=config.data.max_length,
        assistant_only_loss="generation" in (tokenizer.chat_template or ""),
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(budget["max_steps"] // 5, 1) if budget["max_steps"] > 0 else 50,
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        **{k: v for k, v in budget.items() if k in known},
    )
    rows = load_chat_rows(config.data.train)
    dataset = datasets.Dataset.from_list([{"messages": messages} for _, messages in usable_rows(rows)])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return ARBaseline(trainer.model.eval(), tokenizer, time.perf_counter() - start, trainer.state.global_step)


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[str]:
    """Greedy `model.generate` replies, cut at the first stop token."""
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    replies = []
    for start in range(0, len(conversations), batch_size):
        encoded = [encode_prompt(tokenizer, c) for c in conversations[start : start + batch_size]]
        ids, attention = left_pad(encoded, tokenizer.pad_token_id)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stops),
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, ids.shape[1] :].tolist():
            replies.append(tokenizer.decode(cut_at_stop(row, stops), skip_special_tokens=True))
    return replies


def ar_accuracy(
    baseline: ARBaseline, rows: list[dict], max_new_tokens: dict[str, int], batch_size: int = 64
) -> dict[str, float]:
    """Exact match of the baseline per task source (canvas lengths as the diffusion eval used)."""
    accuracy = {}
    for source, tokens in max_new_tokens.items():
        task = task_for_source(source)
        task_rows = [r for r in rows if r.get("source") == source]
        if task is None or not task_rows:
            continue
        conversations = prompts_of(task_rows)
        answers = greedy_answers(baseline.model, baseline.tokenizer, conversations, tokens, batch_size)
        hits = [task.score(c[-1]["content"], a) for c, a in zip(conversations, answers)]
        accuracy[source] = sum(hits) / len(hits)
    return accuracy
