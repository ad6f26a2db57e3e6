"""TRL / alignment-handbook keys that dlm-sft refuses, each with what to use instead: the trainer keys
with no meaning for diffusion SFT (`REFUSED_TRAINING_KEYS`) and a handbook script's own keys
(`SCRIPT_KEYS`, e.g. `model_name_or_path`). The recipe validator (`sft.recipe`) reads them.
"""

from __future__ import annotations

_DATA_IS_TOKENIZED = "remove it: dlm-sft tokenizes the chat rows itself (see data.*)"
_PACKING = "use data.batching: pack (per-document attention and noise)"
_RESPONSE_ONLY = "remove it: only response tokens are ever masked (data.multi_turn picks the turns)"
_DIFFUSION_LOSS = "remove it: the loss is the diffusion loss (see diffusion.weighting)"
_FUSED_HEAD = "remove it: the masked-only head already fuses the LM head and the loss"
REFUSED_TRAINING_KEYS = {
    "max_length": "use data.max_length",
    "truncation_mode": "use data.truncation",
    "packing": _PACKING,
    "packing_strategy": _PACKING,
    "padding_free": _PACKING,
    "eval_packing": _PACKING,
    "pad_to_multiple_of": _PACKING,
    "completion_only_loss": _RESPONSE_ONLY,
    "assistant_only_loss": _RESPONSE_ONLY,
    "dataset_text_field": "use data.train rows with `messages` or `prompt`/`completion`",
    "dataset_kwargs": _DATA_IS_TOKENIZED,
    "dataset_num_proc": "use data.num_proc",
    "shuffle_dataset": "remove it: the sampler reshuffles every epoch (training.data_seed)",
    "remove_unused_columns": _DATA_IS_TOKENIZED,
    "eos_token": "remove it: the tokenizer's EOS is used (choose the tokenizer with model.tokenizer)",
    "pad_token": "remove it: the tokenizer's pad token is used (choose it with model.tokenizer)",
    "model_init_kwargs": "use model.dtype and model.attn_implementation",
    "trust_remote_code": "use model.trust_remote_code",
    "loss_type": "use diffusion.weighting",
    "label_smoothing_factor": _DIFFUSION_LOSS,
    "router_aux_loss_coef": _DIFFUSION_LOSS,
    "label_names": "remove it: the diffusion loss builds its own targets",
    "average_tokens_across_devices": "use diffusion.loss_normalization",
    "use_liger_kernel": _FUSED_HEAD,
    "liger_kernel_config": _FUSED_HEAD,
    "activation_offloading": "use training.activation_checkpointing",
    "parallelism_config": "use the parallelism_config of an accelerate config (--accelerate FILE)",
}
"""TRL `SFTConfig` / `TrainingArguments` keys that diffusion SFT does not honour, each with what
does that job here. A recipe setting one is refused with that name; every other field works as in
TRL and transformers."""


def refusal(key: str) -> str:
    """Why a recipe or a Python caller setting `key` (one of `REFUSED_TRAINING_KEYS`) is refused."""
    return f"not used by diffusion SFT; {REFUSED_TRAINING_KEYS[key]}"


SCRIPT_KEYS = {
    "model_name_or_path": "model.name_or_path",
    "model_revision": "model.name_or_path (a hub id, or a local snapshot of the revision)",
    "torch_dtype": "model.dtype",
    "attn_implementation": "model.attn_implementation",
    "dataset_name": "data.train (a hub dataset id, files or directories)",
    "dataset_mixture": "data.train (a list of sources), or dlm-sft prepare to mix and filter",
    "dataset_config": "data.train: {name: ..., config: ...}",
    "dataset_train_split": "data.train: {name: ..., split: ...}",
    "dataset_test_split": "data.eval: {name: ..., split: ...}",
    "max_seq_length": "data.max_length",
    "use_peft": "a lora: section",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
}
"""Settings of TRL's and alignment-handbook's scripts (`ScriptArguments`, `ModelConfig`, the old
`max_seq_length`) that are no `SFTConfig` field: a recipe using one, under `training:` or at the top
level as a handbook recipe has them, is refused naming the recipe key that does that job."""
