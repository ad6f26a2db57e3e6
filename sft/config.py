"""Run configuration: the trainer's `DiffusionSFTConfig` and the recipe's other sections.

A recipe YAML has the sections `model`, `data`, `diffusion`, `lora` (absent = full fine-tuning)
and `training`. `diffusion` and `training` both fill one `DiffusionSFTConfig` (TRL's `SFTConfig`
plus the diffusion fields), so every TrainingArguments/SFTConfig name works as users know it;
`model`, `data` and `lora` fill the small dataclasses below. The docstrings are the reference
for recipe keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from trl import SFTConfig


@dataclass
class DiffusionSFTConfig(SFTConfig):
    r"""`SFTConfig` for masked-diffusion SFT: the recipe's `training:` and `diffusion:` sections.

    Every `transformers.TrainingArguments` / `trl.SFTConfig` field is accepted under `training:`
    (output_dir, learning_rate, num_train_epochs, max_steps, per_device_train_batch_size,
    gradient_accumulation_steps, bf16, activation_checkpointing (alias gradient_checkpointing,
    default True as in TRL; under FSDP it switches on FSDP's own checkpointing instead), report_to,
    seed, ...). TRL's own losses, fused LM head and token-accuracy metric are never used: the loss
    is the diffusion loss.
    `bf16` defaults to True only when a CUDA device is present (TRL's default assumes a GPU).

    Diffusion fields (the recipe's `diffusion:` section; see `sft/objective.py` for the math):

    t_min (`float`, defaults to 1e-3):
        Per-sequence time t = t_min + (1 - t_min)·u, u ~ U[0, 1). 0 reproduces Dream; 1e-3 is
        LLaDA / dllm. Every response token is masked with probability t.
    weighting (`str`, defaults to `"inv_t"`):
        Loss weight of each masked token: `inv_t` (1/t, the ELBO; LLaDA, dllm), `linear` (1 - t),
        `uniform` (1) or `cart` (Dream's context-adaptive token weights with parameter `cart_p`;
        no 1/t factor).
    cart_p (`float`, defaults to 0.1):
        Geometric decay p of CART: w_j = Σ_{i clean, i≠j} ½·p·(1-p)^{|i-j|-1}. Dream uses 0.1.
    eos_tail (`str`, defaults to `"all"`):
        How the EOS tail after each response is trained. Every response already ends with one
        supervised EOS; the *tail* is the further EOS tokens after it.
        `all`: the tail fills the row up to `data.max_length` and every tail token is attended,
        maskable and supervised (Dream: pad to max_length with EOS, all in the loss).
        `first_n`: exactly `eos_tail_n` tail tokens (fewer if max_length is reached) are
        attended and supervised (dLLM-RL); the rest of the row is padding.
        `one`: as `all`, but the masked tail tokens of a row together weigh one token
        (DreamOn-style averaging) and the tail counts as one supervised token.
        `none`: no tail; the row is padded (not attended, not supervised) after its EOS.
        Padding (attention 0) is never masked, never supervised and never counts as CART context.
    eos_tail_n (`int`, defaults to 16):
        Tail length for `eos_tail: first_n`.
    loss_normalization (`str`, defaults to `"supervised"`):
        `supervised`: the summed weighted loss is divided by the number of supervised tokens
        (response + supervised tail) in the *global* batch — across gradient accumulation and
        data-parallel ranks — so loss and gradients do not depend on how the global batch is
        split. `sequence`: LLaDA's per-sequence mean (÷ the sequence's supervised tokens), then the
        mean over the sequences of the global batch.
    complementary (`bool`, defaults to False):
        Complementary masks (LLaDA 2.x post-training, DiffuCoder's coupled sampling): each training
        example appears twice in its micro-batch, once with its mask (time t) and once with the
        complement of that mask (time 1 - t, weighted as such), so every response token is
        supervised exactly once per pair and both halves enter the same optimizer step. t is drawn
        in [t_min, 1 - t_min]; each half counts in the global denominator, so the expected loss
        is the same as without pairs (with less variance). Doubles the rows of every training
        micro-batch (memory and compute); evaluation loss is unchanged.
    block_size (`int` or `None`, defaults to None):
        Block-diffusion SFT (BD3-LMs; Fast-dLLM v2, SDAR): the response and its EOS tail are cut
        into blocks of this many tokens from the first response token; each block draws its own
        t and is masked with it; the model predicts a masked token from its noisy block
        (bidirectional) and the *clean* prompt and clean earlier blocks (the conditional of
        block-by-block sampling with a KV cache; `sampling.block_size` / `--block-size`). One
        forward per row of twice the length, [x_t ; x_0], with a 4-D block mask (sdpa or eager;
        flash_attention_2 is refused), so memory and compute per row double. Weightings,
        normalisation, EOS-tail policies, complementary masks and packing work as without
        blocks; CART counts as context only what the block sees. None: full-sequence diffusion.
    eval_t_grid (`int`, defaults to 8):
        Evaluation draws t from a fixed grid of this many points (example k gets cell k mod n)
        and its masks from `eval_seed`, so eval loss is deterministic.
    eval_seed (`int`, defaults to 0):
        Seed of the evaluation masks. Training noise uses `seed`, the optimizer step and each
        example's id, so an example's noise never depends on batch splitting or padding.
    max_consecutive_nonfinite (`int`, defaults to 5; a `training:` key):
        An optimizer step whose gradients are not finite is skipped (no update) and counted in the
        `nonfinite_steps` metric; more than this many in a row stop the run with a clear message.
    resume_from_checkpoint (`str`, `bool` or `None`, defaults to `"auto"`; a `training:` key):
        `auto` continues from the newest *complete* `checkpoint-N` in `output_dir` (model,
        optimizer, scheduler, RNG states, data position; the diffusion noise is a function of the
        step, so it resumes exactly), or starts fresh when there is none; `true` does the same but
        requires a checkpoint; a path resumes from that checkpoint; `null`/`false` always start
        fresh. A checkpoint is complete once its trainer_state.json (written last) is; one cut
        short by a kill is ignored. A resumed run says so, with the step, on its first output line.
    overwrite_output_dir (`bool`, defaults to False; a `training:` key):
        An `output_dir` holding a *finished* run (its `dlm_run.json`) is refused unless this is
        true; then the old run's checkpoints and record are removed and training starts fresh.
    chat_template_path (`str` or `None`; a `training:` key, as in TRL):
        A `.jinja`/`.j2` chat template file that replaces the tokenizer's template: the training
        data is rendered with it, and it is saved with the run's tokenizer and every export.
    mask_token_id (`int` or `None`):
        Id of the mask token; set by the model family (from the config or tokenizer).
    shift (`bool`, defaults to True):
        Whether logits at position i-1 predict token i (Dream and AR-initialised models) or
        position i predicts token i (LLaDA); set by the model family.
    """

    t_min: float = 1e-3
    weighting: Literal["inv_t", "linear", "uniform", "cart"] = "inv_t"
    cart_p: float = 0.1
    eos_tail: Literal["all", "first_n", "one", "none"] = "all"
    eos_tail_n: int = 16
    loss_normalization: Literal["supervised", "sequence"] = "supervised"
    complementary: bool = False
    block_size: int | None = None
    eval_t_grid: int = 8
    eval_seed: int = 0
    mask_token_id: int | None = None
    shift: bool = True
    max_consecutive_nonfinite: int = 5
    resume_from_checkpoint: str | bool | None = "auto"
    overwrite_output_dir: bool = False

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        if self.activation_checkpointing is None:  # TRL's `gradient_checkpointing` is the old name
            self.activation_checkpointing = self.gradient_checkpointing
        # The dataset arrives tokenized with its own columns; TRL must not re-tokenize or drop them.
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self.remove_unused_columns = False
        super().__post_init__()
        self._checkpoint_through_fsdp()
        _check_choice("weighting", self.weighting, ("inv_t", "linear", "uniform", "cart"))
        _check_choice("eos_tail", self.eos_tail, ("all", "first_n", "one", "none"))
        _check_choice("loss_normalization", self.loss_normalization, ("supervised", "sequence"))
        if not 0.0 <= self.t_min < 1.0:
            raise ValueError(f"t_min must be in [0, 1), got {self.t_min}")
        if self.complementary and self.t_min >= 0.5:
            raise ValueError(f"complementary masks need t_min < 0.5 (t and 1 - t >= t_min), got {self.t_min}")
        if not 0.0 < self.cart_p <= 1.0:
            raise ValueError(f"cart_p must be in (0, 1], got {self.cart_p}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(
                f"block_size must be >= 1 or null (full-sequence diffusion), got {self.block_size}"
            )
        if self.eos_tail_n < 0 or self.eval_t_grid < 1:
            raise ValueError("eos_tail_n must be >= 0 and eval_t_grid >= 1")

    def _checkpoint_through_fsdp(self) -> None:
        """Under FSDP, `activation_checkpointing` is handed to FSDP's own checkpointing (accelerate's
        `fsdp_activation_checkpointing`, read from the environment that `accelerate launch` sets):
        transformers' checkpointing on top of FSDP re-gathers each layer's weights once more in the
        backward. The two are never on together (the Trainer refuses that)."""
        fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or self.fsdp_plugin_args
        if not (fsdp and self.activation_checkpointing):
            return
        os.environ["FSDP_ACTIVATION_CHECKPOINTING"] = "true"
        if self.fsdp_plugin_args is not None:
            self.fsdp_plugin_args["activation_checkpointing"] = True
        self.activation_checkpointing = self.gradient_checkpointing = False


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


DIFFUSION_FIELDS = (
    "t_min",
    "weighting",
    "cart_p",
    "eos_tail",
    "eos_tail_n",
    "loss_normalization",
    "complementary",
    "block_size",
    "eval_t_grid",
    "eval_seed",
)
"""The `DiffusionSFTConfig` fields a recipe sets under `diffusion:` (the rest go under `training:`)."""

FAMILY_FIELDS = ("mask_token_id", "shift")
"""Fields set from the model family, never by the recipe."""

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


@dataclass
class ModelSettings:
    """The recipe's `model:` section.

    name_or_path: a local model directory or a hub id (read from the hub cache, fetched when missing;
        offline, `HF_HUB_OFFLINE=1`, only the cache). Required.
    family: `auto` (from config.json), `dream`, `llada`, `ar` (any Qwen2/Llama causal LM made
        bidirectional, with a `<|mask|>` token added when the tokenizer lacks one) or `remote`
        (an unknown family through its own code; needs `trust_remote_code`).
    trust_remote_code: allow loading an unknown family with the Python files its checkpoint ships
        (off by default, warned when on). Dream and LLaDA never need it.
    tokenizer: tokenizer directory when it differs from `name_or_path`.
    from_scratch: initialise the weights from config.json (seeded by `training.seed`) instead of
        loading them; the initial weights are saved to `<output_dir>/base` so adapters and
        checkpoints can name their base model.
    dtype: `auto`, `float32`, `bfloat16` or `float16` for the loaded weights.
    attn_implementation: `sdpa` (default), `eager` or `flash_attention_2` (falls back to SDPA
        with a warning when flash-attn is not installed).
    mask_token: the mask token's text, used when the config has no `mask_token_id`.
    """

    name_or_path: str = ""
    family: str = "auto"
    trust_remote_code: bool = False
    tokenizer: str | None = None
    from_scratch: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    mask_token: str = "<|mask|>"


@dataclass
class DataSettings:
    """The recipe's `data:` section.

    train: a chat data file (`.jsonl`, `.json`, `.parquet`) or directory (parquet shards, the hub
        layout with `data/`, or a `Dataset.save_to_disk` directory), a hub dataset id
        (`HuggingFaceTB/smoltalk`) or a mapping `{name, config, split, revision}` as
        `datasets.load_dataset` takes them (`name` may also be a `DatasetDict.save_to_disk`
        directory, `split` choosing its split), or a list of these. Hub datasets are read from the
        hub cache when cached (offline too), else downloaded. Rows have `messages` (list of
        {role, content}, the Tulu 3 schema) or `prompt`/`completion`.
    eval: the same, for evaluation (optional).
    max_length: longest training row in tokens (prompt + response + EOS tail).
    multi_turn: `last` (Dream: the history is the prompt, the last assistant turn the response)
        or `all` (one example per assistant turn, each seeing only its history).
    truncation: for an example longer than max_length: `drop` it, or `truncate_response` (cut
        the response to fit; it then gets no EOS). A prompt is never cut: an example whose prompt
        alone does not fit is dropped. Both are counted and reported.
    num_proc: processes for tokenization (None = the available cores, at most one per 5,000 rows).
    cache_dir: where tokenized data is cached, keyed by the data, tokenizer, chat template,
        max_length and the multi-turn and truncation policies (reused across epochs and runs).
        Under a launcher only the global rank 0 writes it; for several nodes it must be shared.
    batching: `pad` (one example per row, rows padded to the batch's longest; set
        `training.train_sampling_strategy: group_by_length` for length-grouped batches) or `pack`
        (several examples per row, best-fit-decreasing up to max_length, each with its own
        positions, EOS tail and noise, attending only within itself). `pack` needs
        `diffusion.eos_tail` `first_n` or `none`: `all` and `one` fill every example's row to
        max_length, leaving nothing to pack.
    """

    train: str | dict[str, Any] | list[str | dict[str, Any]] = ""
    eval: str | dict[str, Any] | list[str | dict[str, Any]] | None = None
    max_length: int = 2048
    multi_turn: Literal["last", "all"] = "last"
    truncation: Literal["drop", "truncate_response"] = "drop"
    num_proc: int | None = None
    cache_dir: str = "~/.cache/dlm-sft/tokenized"
    batching: Literal["pad", "pack"] = "pad"


@dataclass
class LoraSettings:
    """The recipe's `lora:` section (absent = full fine-tuning); passed to `peft.LoraConfig`.

    r, alpha, dropout: LoRA rank, scaling numerator and dropout.
    target_modules: `all-linear` (every linear layer but the LM head) or a list of module names.
    modules_to_save: extra modules trained in full and saved with the adapter (e.g. embed_tokens).
    """

    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] | None = None


@dataclass
class RunConfig:
    """A resolved recipe."""

    model: ModelSettings
    data: DataSettings
    training: DiffusionSFTConfig
    lora: LoraSettings | None = None
    source: str = ""  # the recipe file it came from
    training_keys: tuple[str, ...] = ()  # the `training:` keys the recipe set

    def sections(self) -> dict[str, dict]:
        """The resolved recipe as plain dicts (what `--dry-run` prints and runs record): every
        model/data/diffusion/lora setting, and the training settings the recipe set."""
        values = self.training.to_dict()  # enums as plain values, secrets redacted
        diffusion = {k: values[k] for k in DIFFUSION_FIELDS}
        changed = {k: values[k] for k in self.training_keys if k != "output_dir"}
        return {
            "model": vars(self.model),
            "data": vars(self.data),
            "diffusion": diffusion,
            "lora": vars(self.lora) if self.lora else None,
            "training": {"output_dir": self.training.output_dir, **changed},
        }
