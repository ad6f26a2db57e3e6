"""Dream's and LLaDA's published evaluation settings per task, as `dlm-sft eval --preset NAME`.

Each `TaskPreset` is one lm-eval task with the few-shot count, chat template and sampler (or ELBO)
settings the model's authors used, and where they come from. docs/evaluation.md quotes the same
sources with the published figures and says what could not be verified.

- `dream-instruct`: DreamLM/Dream `eval_instruct/eval.sh` (commit fac0a7f), the lm-eval commands
  behind Dream-v0-Instruct-7B's numbers: temperature 0.1, top_p 0.9, alg `entropy`,
  steps = max_new_tokens, `--apply_chat_template`; GPQA by likelihood with its model's default of
  mc samples = diffusion_steps = 32.
- `llada-instruct`: ML-GSAI/LLaDA `EVAL.md` and `opencompass/examples/llada_instruct_*`
  (commit b7e6c35): low-confidence remasking (`maskgit_plus`) with blocks, temperature 0,
  steps = gen_length. LLaDA evaluated its instruct model with OpenCompass, not lm-eval: the tasks
  here are lm-eval's nearest equivalents (prompts differ), and the variants chosen are the ones
  that need none of LLaDA's EOS-suppression switches, which this sampler does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

from sft.errors import UserError

DREAM_SOURCE = "DreamLM/Dream eval_instruct/eval.sh @ fac0a7f"
LLADA_SOURCE = "ML-GSAI/LLaDA EVAL.md + opencompass/examples/{example} @ b7e6c35"


@dataclass(frozen=True)
class TaskPreset:
    """One task's settings. `max_new_tokens=None` marks a likelihood (multiple-choice) task."""

    task: str
    num_fewshot: int
    apply_chat_template: bool
    source: str
    max_new_tokens: int | None = None
    steps: int | None = None
    alg: str = "maskgit_plus"
    temperature: float = 0.0
    top_p: float | None = None
    block_length: int | None = None
    mc_samples: int | None = None

    def sampler(self) -> dict[str, object]:
        """The `dlm` model's settings for this task."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "mc_samples": self.mc_samples,
            "steps": self.steps,
            "alg": self.alg,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "block_length": self.block_length,
        }


def _dream(task: str, shots: int, tokens: int | None = None, mc_samples: int | None = None) -> TaskPreset:
    return TaskPreset(
        task,
        shots,
        True,
        DREAM_SOURCE,
        max_new_tokens=tokens,
        steps=tokens,
        alg="entropy",
        temperature=0.1,
        top_p=0.9,
        mc_samples=mc_samples,
    )


def _llada(task: str, shots: int, tokens: int, block: int, example: str) -> TaskPreset:
    source = LLADA_SOURCE.format(example=example)
    return TaskPreset(task, shots, True, source, max_new_tokens=tokens, steps=tokens, block_length=block)


PRESETS: dict[str, dict[str, TaskPreset]] = {
    "dream-instruct": {
        p.task: p
        for p in (
            _dream("mmlu_generative", 4, 128),
            _dream("mmlu_pro", 4, 128),
            _dream("gsm8k_cot", 0, 256),
            _dream("minerva_math", 0, 512),
            _dream("gpqa_main_n_shot", 5, mc_samples=32),
            _dream("humaneval_instruct", 0, 768),
            _dream("mbpp_instruct", 0, 1024),
            _dream("ifeval", 0, 1280),
        )
    },
    "llada-instruct": {
        p.task: p
        for p in (
            _llada("mmlu_generative", 5, 3, 3, "llada_instruct_gen_mmlu_length3_block3.py"),
            _llada("mmlu_pro", 0, 256, 256, "llada_instruct_gen_mmlupro_length256_block256.py"),
            _llada("arc_challenge_chat", 0, 512, 512, "llada_instruct_gen_arcc_length512_block512.py"),
            _llada("gsm8k", 4, 256, 8, "llada_instruct_gen_gsm8k_length256_block8.py"),
            _llada("minerva_math", 0, 512, 64, "llada_instruct_gen_math_length512_block64.py"),
            _llada("humaneval_instruct", 0, 512, 32, "llada_instruct_gen_humaneval_length512_block32.py"),
            _llada("mbpp_instruct", 3, 512, 32, "llada_instruct_gen_mbpp_length512_block32.py"),
        )
    },
}


def preset_tasks(name: str, tasks: list[str] | None) -> list[TaskPreset]:
    """The preset's settings for `tasks` (default: all of its tasks)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}", key="--preset", expected=" or ".join(PRESETS))
    table = PRESETS[name]
    missing = [t for t in tasks or [] if t not in table]
    if missing:
        raise UserError(
            f"the {name} preset has no settings for {', '.join(missing)}",
            key="--tasks",
            expected=f"some of {', '.join(table)} (or no --preset)",
        )
    return [table[t] for t in tasks] if tasks else list(table.values())
