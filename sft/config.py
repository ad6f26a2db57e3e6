"""Run configuration: the trainer's `DiffusionSFTConfig` and the recipe's other sections.

A recipe YAML has the sections `model`, `data`, `diffusion`, `lora` (absent = full fine-tuning)
and `training`. `diffusion` and `training` both fill one `DiffusionSFTConfig` (TRL's `SFTConfig`
plus the diffusion fields), so every TrainingArguments/SFTConfig name works as users know it;
`model`, `data` and `lora` fill the small dataclasses below. The docstrings are the reference
for recipe keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
from trl import SFTConfig

from sft.loss.objective import EosTail, Normalization, Weighting

DIFFUSION = {"section": "diffusion"}
"""Field metadata of the diffusion fields: a recipe sets them under `diffusion:`."""
FAMILY = {"set_by": "family"}
"""Field metadata of the fields the model family sets (never the recipe)."""

NATIVE_ACTIVATION_CHECKPOINTING = any(f.name == "activation_checkpointing" for f in fields(SFTConfig))
"""transformers >= 5.23 names the switch `activation_checkpointing`; older releases know only
`gradient_checkpointing`, which `DiffusionSFTConfig` then sets from its own `activation_checkpointing`."""


def activation_checkpointing_on(model: Any) -> bool:
    """Whether `model` checkpoints activations (`is_gradient_checkpointing` before transformers 5.23)."""
    if NATIVE_ACTIVATION_CHECKPOINTING:
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


@dataclass
class DiffusionSFTConfig(SFTConfig):
    r"""`SFTConfig` for masked-diffusion SFT: the recipe's `training:` and `diffusion:` sections.

    Every `transformers.TrainingArguments` / `trl.SFTConfig` field is accepted under `training:`
    (output_dir, learning_rate, num_train_epochs, max_steps, per_device_train_batch_size,
    gradient_accumulation_steps, bf16, activation_checkpointing (alias gradient_checkpointing,
    default True as in TRL; under FSDP the trainer switches on FSDP's own checkpointing instead), report_to,
    seed, ...). TRL's own losses, fused LM head and token-accuracy metric are never used: the loss
    is the diffusion loss.
    `bf16` defaults to True only when a CUDA device is present (TRL's default assumes a GPU).

    Diffusion fields (the recipe's `diffusion:` section; see `sft/loss/objective.py` for the math):

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
        forward per row of twice the length, [x_t ; x_0], under a block mask (`auto`:
        flex-attention's sparse BlockMask on CUDA, SDPA's dense mask elsewhere; eager may be
        named; flash_attention_2 and torch_varlen are refused), so memory and compute per row
        double. Weightings, normalisation, EOS-tail policies, complementary masks and packing
        work as without blocks; CART counts as context only what the block sees. None:
        full-sequence diffusion.
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
        short by a kill is ignored; Ctrl-C saves one after the current step. A resumed run says so,
        with the step, on its first output line; resumed with a new `max_steps`, its learning rate
        follows the schedule of the new length, and logging/eval/save steps are the recipe's.
    overwrite_output_dir (`bool`, defaults to False; a `training:` key):
        An `output_dir` holding a *finished* run (its `dlm_run.json`) is refused unless this is
        true; then training starts fresh and the old run is moved aside (into
        `output_dir/.overwritten-run`), removed once the new run has saved its first checkpoint (or
        its final model); a new run that fails first puts it back, one that is killed leaves it there whole.
    max_length (`int` or `None`, defaults to None = `DataSettings.max_length`, 2048):
        Longest training row in tokens, TRL's name for the Python API (`DiffusionSFTTrainer`); a
        recipe sets it as `data.max_length`.
    chat_template_path (`str` or `None`; a `training:` key, as in TRL):
        A `.jinja`/`.j2` chat template file that replaces the tokenizer's template: the training
        data is rendered with it, and it is saved with the run's tokenizer and every export.
    mask_token_id (`int` or `None`):
        Id of the mask token; set by the model family (from the config or tokenizer).
    shift (`bool`, defaults to True):
        Whether logits at position i-1 predict token i (Dream and AR-initialised models) or
        position i predicts token i (LLaDA); set by the model family.
    """

    t_min: float = field(default=1e-3, metadata=DIFFUSION)
    weighting: Weighting = field(default="inv_t", metadata=DIFFUSION)
    cart_p: float = field(default=0.1, metadata=DIFFUSION)
    eos_tail: EosTail = field(default="all", metadata=DIFFUSION)
    eos_tail_n: int = field(default=16, metadata=DIFFUSION)
    loss_normalization: Normalization = field(default="supervised", metadata=DIFFUSION)
    complementary: bool = field(default=False, metadata=DIFFUSION)
    block_size: int | None = field(default=None, metadata=DIFFUSION)
    eval_t_grid: int = field(default=8, metadata=DIFFUSION)
    eval_seed: int = field(default=0, metadata=DIFFUSION)
    mask_token_id: int | None = field(default=None, metadata=FAMILY)
    shift: bool = field(default=True, metadata=FAMILY)
    max_consecutive_nonfinite: int = 5
    resume_from_checkpoint: str | bool | None = "auto"
    overwrite_output_dir: bool = False
    max_length: int | None = None
    if not NATIVE_ACTIVATION_CHECKPOINTING:
        activation_checkpointing: bool | None = None

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        if self.activation_checkpointing is None:  # TRL's `gradient_checkpointing` is the old name
            self.activation_checkpointing = self.gradient_checkpointing
        if not NATIVE_ACTIVATION_CHECKPOINTING:
            self.gradient_checkpointing = self.activation_checkpointing
        # The dataset arrives tokenized with its own columns; TRL must not re-tokenize or drop them.
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self.remove_unused_columns = False
        super().__post_init__()
        choices = {"weighting": Weighting, "eos_tail": EosTail, "loss_normalization": Normalization}
        for name, kind in choices.items():
            _check_choice(name, getattr(self, name), get_args(kind))
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


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


DIFFUSION_FIELDS = tuple(
    f.name for f in fields(DiffusionSFTConfig) if f.metadata.get("section") == "diffusion"
)
"""The `DiffusionSFTConfig` fields a recipe sets under `diffusion:` (the rest go under `training:`)."""

FAMILY_FIELDS = tuple(f.name for f in fields(DiffusionSFTConfig) if f.metadata.get("set_by") == "family")
"""Fields set from the model family, never by the recipe."""


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
    attn_implementation: `auto` (default: flash-attn when installed, else torch's own varlen
        FlashAttention `torch_varlen` on CUDA, else SDPA), `sdpa`, `eager`, `flash_attention_2` or
        `torch_varlen` (each falls back to SDPA with a warning when unavailable; see
        `sft/families/attention.py`), or `flex_attention` (padded batches only: it ignores packed
        boundaries; with `diffusion.block_size` it takes the block mask, which `auto` picks on CUDA).
    mask_token: the mask token's text, used when the config has no `mask_token_id`.
    """

    name_or_path: str = ""
    family: str = "auto"
    trust_remote_code: bool = False
    tokenizer: str | None = None
    from_scratch: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flash_attention_2", "torch_varlen", "flex_attention"
    ] = "auto"
    mask_token: str = "<|mask|>"


@dataclass
class DataSettings:
    """The recipe's `data:` section.

    train: a chat data file (a suffix of `sft.data.files.SUFFIXES`) or directory (parquet shards, the hub
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
