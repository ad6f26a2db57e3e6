"""`dlm`: lm-evaluation-harness's model for every checkpoint dlm-sft loads (Dream, LLaDA,
AR-initialised; a training output, an export or a LoRA adapter).

    lm_eval --model dlm --model_args pretrained=runs/x,steps=256,alg=entropy --tasks gsm8k

- `generate_until` runs the diffusion sampler (`sft.sampling.sampler.diffusion_generate`) with the
  model arguments' sampler options; a request's `max_gen_toks` is the canvas when `max_new_tokens`
  is not given, and its `until` strings cut the answer (after the family's stop tokens). Other
  generation kwargs of a task (`temperature`, `do_sample`) are not read: the sampler options are the
  model's (as in Dream's and LLaDA's own harness models).
- `loglikelihood` is the Monte-Carlo ELBO (`sft.evaluation.likelihood`) with `mc_samples` samples,
  `seed` and `estimator` (`count`, the default, or `bernoulli`); `is_greedy` is whether greedy
  diffusion decoding of the continuation's length (one token per step) reproduces it
  (`greedy_check=false` skips that and answers False).
- `loglikelihood_rolling` is the ELBO of each of lm-eval's disjoint windows of the text, summed.

The spread of the ELBO estimates (mean and largest standard error per request type) goes into the
results JSON's `config` through `get_model_info`.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models first: an empty registry triggers that import)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from sft.evaluation.likelihood import LikelihoodSettings, elbo_samples, summarize
from sft.families.base import LoadedModel
from sft.sampling.chat import stop_token_ids
from sft.sampling.loading import load_for_sampling
from sft.sampling.sampler import cut_at_stop, diffusion_generate, left_pad
from sft.sampling.settings import SAMPLER_OPTIONS, SamplerSettings

DEFAULT_GEN_TOKENS = 256  # lm-eval's own default `max_gen_toks`


@register_model("dlm")
class DiffusionLM(TemplateLM):
    """lm-eval model over a `LoadedModel`; build it from a path (`pretrained=`) or `from_loaded`."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        loaded: LoadedModel | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        max_new_tokens: int | None = None,
        mc_samples: int = 128,
        t_min: float = 1e-3,
        estimator: str = "count",
        seed: int = 0,
        greedy_check: bool = True,
        add_bos_token: bool = False,
        max_length: int | None = None,
        **sampler: Any,
    ) -> None:
        super().__init__()
        if (pretrained is None) == (loaded is None):
            raise ValueError("give exactly one of pretrained= (a checkpoint directory) or loaded=")
        unknown = sorted(set(sampler) - set(SAMPLER_OPTIONS) - {"max_batch_size"})
        if unknown:
            raise ValueError(f"unknown dlm model arguments {unknown}; sampler options are {SAMPLER_OPTIONS}")
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"device {device!r} requested but CUDA is not available; using the CPU", stacklevel=2
            )
            device = "cpu"
        self.loaded = loaded or load_for_sampling(str(pretrained), device=device, dtype=dtype)
        self.tokenizer = self.loaded.tokenizer
        self._device = next(self.loaded.model.parameters()).device
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() else 1
        self.max_new_tokens = max_new_tokens
        self.sampler = {k: v for k, v in sampler.items() if k in SAMPLER_OPTIONS and v is not None}
        self.likelihood = LikelihoodSettings(
            mc_samples=int(mc_samples), seed=int(seed), t_min=float(t_min), estimator=str(estimator)
        )
        self.likelihood.check()
        self.seed = int(seed)
        self.greedy_check = greedy_check
        self.add_bos_token = add_bos_token
        config_length = getattr(self.loaded.model.config, "max_position_embeddings", 2048)
        self.max_length = int(max_length or config_length)
        self.standard_errors: dict[str, list[float]] = {"loglikelihood": [], "loglikelihood_rolling": []}

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, **arguments: Any) -> DiffusionLM:
        return cls(loaded=loaded, **arguments)

    def configure(
        self, *, max_new_tokens: int | None = None, mc_samples: int | None = None, **sampler: Any
    ) -> None:
        """Change the settings between evaluations (presets run tasks with different settings)."""
        self.max_new_tokens = max_new_tokens
        if mc_samples is not None:
            self.likelihood = replace(self.likelihood, mc_samples=mc_samples)
        self.sampler = {k: v for k, v in sampler.items() if v is not None}

    # ------------------------------------------------------------------ tokenizer and chat
    @property
    def eot_token_id(self) -> int:
        return self.loaded.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        ids = self.tokenizer(string, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    # ------------------------------------------------------------------ generation
    def _settings(self, max_gen_toks: int) -> SamplerSettings:
        tokens = int(self.max_new_tokens or max_gen_toks)
        settings = SamplerSettings(max_new_tokens=tokens, steps=tokens)
        for name, value in self.sampler.items():
            setattr(settings, name, value)
        settings.check()
        return settings

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self._device).manual_seed(self.seed)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Sample an answer per request; cut it at the first stop token, then at the first `until` string."""
        stops = stop_token_ids(self.tokenizer)
        answers: list[str | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            gen_kwargs = request.args[1]
            groups.setdefault(int(gen_kwargs.get("max_gen_toks", DEFAULT_GEN_TOKENS)), []).append(i)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="dlm generate_until")
        generator = self._generator()
        for max_gen_toks, members in groups.items():
            settings = self._settings(max_gen_toks)
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                budget = self.max_length - settings.max_new_tokens
                prompts = [self.tok_encode(requests[i].args[0])[-budget:] for i in batch]
                ids, attention = left_pad(prompts, self.tokenizer.pad_token_id)
                sequences = diffusion_generate(
                    self.loaded.model,
                    ids.to(self._device),
                    attention.to(self._device),
                    mask_token_id=self.loaded.mask_token_id,
                    shift=self.loaded.family.shift,
                    generator=generator,
                    return_dict_in_generate=False,
                    **settings.kwargs(),
                )
                for i, row in zip(batch, sequences[:, ids.shape[1] :].tolist()):
                    text = self.tok_decode(cut_at_stop(row, stops))
                    answers[i] = cut_at_strings(text, requests[i].args[1].get("until") or [])
                progress.update(len(batch))
        progress.close()
        return [a or "" for a in answers]

    # ------------------------------------------------------------------ likelihood
    def _elbo(self, contexts: list[list[int]], continuations: list[list[int]], kind: str) -> list[float]:
        samples = elbo_samples(
            self.loaded.model,
            contexts,
            continuations,
            self.likelihood,
            mask_token_id=self.loaded.mask_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            shift=self.loaded.family.shift,
            batch_size=max(self.batch_size, 1),
        )
        estimates = summarize(samples)
        self.standard_errors[kind].extend(e.standard_error for e in estimates)
        return [e.mean for e in estimates]

    def _loglikelihood_tokens(
        self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        contexts, continuations = [], []
        for _, context, continuation in requests:
            keep = self.max_length - len(continuation)
            contexts.append(context[-keep:] if keep > 0 else context[:1])
            continuations.append(continuation[-(self.max_length - 1) :])
        scores = self._elbo(contexts, continuations, "loglikelihood")
        greedy = self._is_greedy(contexts, continuations) if self.greedy_check else [False] * len(requests)
        for (cache_key, _, _), score, hit in zip(requests, scores, greedy):
            self.cache_hook.add_partial("loglikelihood", cache_key, (score, hit))
        return list(zip(scores, greedy))

    def _is_greedy(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[bool]:
        """Does greedy diffusion decoding (one token per step, most confident first) give the continuation?"""
        hits = [False] * len(contexts)
        by_length: dict[int, list[int]] = {}
        for i, continuation in enumerate(continuations):
            by_length.setdefault(len(continuation), []).append(i)
        for length, members in by_length.items():
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                ids, attention = left_pad([contexts[i] for i in batch], self.tokenizer.pad_token_id)
                sequences = diffusion_generate(
                    self.loaded.model,
                    ids.to(self._device),
                    attention.to(self._device),
                    mask_token_id=self.loaded.mask_token_id,
                    shift=self.loaded.family.shift,
                    max_new_tokens=length,
                    steps=max(length, 1),
                    return_dict_in_generate=False,
                )
                for i, row in zip(batch, sequences[:, ids.shape[1] :].tolist()):
                    hits[i] = row == continuations[i]
        return hits

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """ELBO of each text: the sum over lm-eval's disjoint rolling windows of max_length tokens."""
        contexts, continuations, owner = [], [], []
        for i, request in enumerate(requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(request.args[0]),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, windows):
                contexts.append(context)
                continuations.append(continuation)
                owner.append(i)
        scores = self._elbo(contexts, continuations, "loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for i, score in zip(owner, scores):
            totals[i] += score
        return totals

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in the results JSON's `config`: the estimator's settings and its spread."""
        spread = {
            kind: {
                "requests": len(errors),
                "mean_standard_error": sum(errors) / len(errors),
                "max_standard_error": max(errors),
            }
            for kind, errors in self.standard_errors.items()
            if errors
        }
        return {
            "dlm": {
                "checkpoint": str(self.loaded.model.config.name_or_path),
                "family": self.loaded.family.name,
                "sampler": {"max_new_tokens": self.max_new_tokens, **self.sampler},
                "elbo": {**vars(self.likelihood), "spread": spread},
            }
        }


def cut_at_strings(text: str, stops: list[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]
