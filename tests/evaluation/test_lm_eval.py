"""lm-evaluation-harness on a tiny trained checkpoint and a local task (no downloads): both request
types, determinism, stop strings, batching, a known answer, `dlm-sft eval --tasks`, `dlm-sft
report` with the results, and lm-eval's own CLI finding `--model dlm` through the installed hook."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lm_eval.api.instance import Instance
from transformers import AutoTokenizer

from sft.cli import main
from sft.evaluation.lm_eval_model import DiffusionLM, cut_at_strings
from sft.recipe import build_run_config
from sft.sampling.chat import stop_token_ids
from sft.sampling.loading import load_for_sampling
from sft.sampling.sampler import cut_at_stop, diffusion_generate, left_pad
from sft.training.run import train
from tests.conftest import QUICKSTART_MODEL, recipe_dict, tiny_qwen2_config, write_chat_rows

REPO = Path(__file__).resolve().parents[2]
DIGITS = [str(d) for d in range(10)]


def next_digit_rows(count: int, seed: int) -> list[dict]:
    """The tiny task: answer the digit after the one given (9 -> 0); chance is 1 in 10."""
    digits = random.Random(seed).choices(range(10), k=count)
    return [{"question": str(d), "answer": (d + 1) % 10, "answer_text": str((d + 1) % 10)} for d in digits]


RAW_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}{% generation %}"
    "{{- m['content'] + '<|im_end|>' }}{% endgeneration %}{%- else %}{{- m['content'] }}{%- endif %}"
    "{%- endfor %}"
)
"""A chat template that renders a user turn as its bare text, so prompts with and without
`--apply-chat-template` are the same tokens (and the answer follows the digit directly)."""


@pytest.fixture(scope="module")
def next_digit_task(tmp_path_factory) -> Path:
    """A directory of lm-eval task YAMLs over a local JSON-lines file: multiple choice (loglikelihood),
    generation (generate_until) and rolling loglikelihood."""
    directory = tmp_path_factory.mktemp("tasks")
    data = directory / "next_digit.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in next_digit_rows(20, seed=1)))
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "doc_to_text": "{{question}}",
        "target_delimiter": "",
    }
    tasks = {
        "dlm_next_digit_mc": {
            "output_type": "multiple_choice",
            "doc_to_choice": DIGITS,
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc"}],
        },
        "dlm_next_digit_gen": {
            "output_type": "generate_until",
            "doc_to_target": "{{answer_text}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 3},
            "metric_list": [{"metric": "exact_match"}],
        },
        "dlm_next_digit_rolling": {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{question}}{{answer_text}}",
            "metric_list": [{"metric": "word_perplexity"}],
        },
    }
    for name, spec in tasks.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **spec}))
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide diffusion LM trained from scratch for 100 small steps on the task's chats
    (seconds on an idle CPU)."""
    directory = tmp_path_factory.mktemp("next_digit_run")
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART_MODEL)
    tokenizer.chat_template = RAW_TEMPLATE
    config = tiny_qwen2_config(
        tokenizer, is_causal=False, mask_token_id=tokenizer.convert_tokens_to_ids("<|mask|>")
    )
    config.save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "model")
    rows = [
        {
            "messages": [
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["answer_text"]},
            ]
        }
        for r in next_digit_rows(512, seed=0)
    ]
    train_file = write_chat_rows(directory / "train.jsonl", rows)
    run_config = build_run_config(
        {
            "model": {"name_or_path": str(directory / "model"), "from_scratch": True},
            "data": {"train": str(train_file), "max_length": 16, "cache_dir": str(directory / "cache")},
            "diffusion": {"eos_tail": "none"},
            "training": {
                "output_dir": str(directory / "run"),
                "max_steps": 100,
                "per_device_train_batch_size": 32,
                "learning_rate": 1e-2,
                "warmup_steps": 2,
                "report_to": [],
                "save_strategy": "no",
                "logging_steps": 50,
                "activation_checkpointing": False,
                "use_cpu": True,
                "disable_tqdm": True,
                "seed": 0,
            },
        }
    )
    train(run_config)
    return directory / "run"


@pytest.fixture(scope="module")
def model(trained) -> DiffusionLM:
    return DiffusionLM.from_loaded(load_for_sampling(trained, device="cpu"), mc_samples=16, batch_size=1)


def instances(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(arguments)]


def test_generate_until_is_deterministic_and_batching_equals_unbatched(model):
    prompts = ["3", "8", "1", "5", "9"]
    requests = instances("generate_until", [(p, {"until": ["\n"], "max_gen_toks": 4}) for p in prompts])
    model.batch_size = 1
    one_by_one = model.generate_until(requests, disable_tqdm=True)
    model.batch_size = 4
    batched = model.generate_until(requests, disable_tqdm=True)
    assert batched == one_by_one == model.generate_until(requests, disable_tqdm=True)
    assert one_by_one == ["4", "9", "2", "6", "0"]  # the trained answers, stop tokens cut


def test_sampler_options_reach_the_sampler(model):
    options = {"alg": "entropy", "block_length": 1, "threshold": 0.9, "steps": 2, "temperature": 0.0}
    requests = instances("generate_until", [(c, {"max_gen_toks": 2}) for c in ("2", "7")])
    answers = DiffusionLM.from_loaded(model.loaded, batch_size=2, **options).generate_until(requests, True)
    loaded = model.loaded
    ids, attention = left_pad([loaded.tokenizer("2")["input_ids"], loaded.tokenizer("7")["input_ids"]], 0)
    sequences = diffusion_generate(
        loaded.model,
        ids,
        attention,
        mask_token_id=loaded.mask_token_id,
        shift=loaded.family.shift,
        max_new_tokens=2,
        **options,
    ).sequences[:, ids.shape[1] :]
    stops = stop_token_ids(loaded.tokenizer)
    expected = [
        loaded.tokenizer.decode(cut_at_stop(r, stops), skip_special_tokens=True) for r in sequences.tolist()
    ]
    assert answers == expected
    origin_with_threshold = DiffusionLM.from_loaded(loaded, alg="origin", threshold=0.5)
    with pytest.raises(ValueError, match="threshold needs a confidence alg"):
        origin_with_threshold.generate_until(requests, True)


def test_until_strings_cut_the_answer(model):
    (free,) = model.generate_until(instances("generate_until", [("6", {"max_gen_toks": 3})]), True)
    (stopped,) = model.generate_until(
        instances("generate_until", [("6", {"until": ["7"], "max_gen_toks": 3})]), True
    )
    assert free == "7" and stopped == ""
    assert cut_at_strings("ab\nc|d", ["|", "\n"]) == "ab"


def test_loglikelihood_ranks_the_trained_answer_first_and_greedy_matches_decoding(model):
    requests = instances("loglikelihood", [(c, d) for c in DIGITS for d in DIGITS])
    model.batch_size = 32
    scored = model.loglikelihood(requests, disable_tqdm=True)
    scores = [score for score, _ in scored]
    likeliest = [max(range(10), key=lambda d: scores[10 * c + d]) for c in range(10)]
    assert sum(d == (c + 1) % 10 for c, d in enumerate(likeliest)) >= 7  # the trained answer (chance: 1)
    assert all(s < 0 for s in scores)
    prompts = [(c, {"max_gen_toks": 1}) for c in DIGITS]
    decoded = model.generate_until(instances("generate_until", prompts), True)
    assert [hit for _, hit in scored] == [decoded[c] == d for c in range(10) for d in DIGITS]
    spread = model.get_model_info()["dlm"]["elbo"]["spread"]["loglikelihood"]
    # one-token continuations: LLaDA's estimator (the default) masks that token in every sample, exactly
    assert spread["requests"] >= 100 and spread["max_standard_error"] == 0.0


def test_loglikelihood_is_seeded_and_batching_equals_unbatched(model):
    requests = instances("loglikelihood", [(c, d) for c in ("3", "7") for d in DIGITS])

    def scores(batch_size: int, seed: int, kind: str = "bernoulli") -> list[float]:
        estimator = DiffusionLM.from_loaded(
            model.loaded, mc_samples=4, batch_size=batch_size, seed=seed, estimator=kind
        )
        estimator.greedy_check = False
        return [score for score, _ in estimator.loglikelihood(requests, disable_tqdm=True)]

    one_by_one = scores(batch_size=1, seed=0)
    assert scores(batch_size=24, seed=0) == pytest.approx(one_by_one, abs=1e-4)
    assert scores(batch_size=24, seed=0) == scores(batch_size=24, seed=0)
    assert scores(batch_size=24, seed=1) != pytest.approx(one_by_one, abs=1e-4)  # the seed draws the masks
    # LLaDA's estimator is exact on one-token continuations: no seed changes it
    assert scores(24, 0, "count") == pytest.approx(scores(1, 1, "count"), abs=1e-4)


def test_loglikelihood_rolling_sums_windows_and_batches_alike(model):
    texts = ["34", "9012345"]
    requests = instances("loglikelihood_rolling", [(t,) for t in texts])
    model.batch_size = 1
    one_by_one = model.loglikelihood_rolling(requests, disable_tqdm=True)
    model.batch_size = 8
    assert model.loglikelihood_rolling(requests, disable_tqdm=True) == pytest.approx(one_by_one, abs=1e-4)
    short_windows = DiffusionLM.from_loaded(model.loaded, mc_samples=16, max_length=4)
    split = short_windows.loglikelihood_rolling(requests, disable_tqdm=True)
    assert all(s < 0 for s in one_by_one + split) and split != pytest.approx(one_by_one)


def test_dlm_sft_eval_tasks_scores_the_trained_model_above_chance_and_report_shows_it(
    trained, next_digit_task, capsys
):
    capsys.readouterr()
    code = main(
        [
            "eval",
            str(trained),
            "--tasks",
            "dlm_next_digit_mc,dlm_next_digit_gen",
            "--include-path",
            str(next_digit_task),
        ]
        + ["--apply-chat-template", "--limit", "20", "--mc-samples", "8", "--batch-size", "16"]
    )
    assert code == 0
    out = capsys.readouterr().out
    (results_file,) = (trained / "eval").glob("lm_eval_*.json")
    results = json.loads(results_file.read_text())
    accuracy = results["results"]["dlm_next_digit_mc"]["acc,none"]
    exact = results["results"]["dlm_next_digit_gen"]["exact_match,none"]
    assert accuracy >= 0.5 and exact >= 0.5  # chance is 0.1
    assert results["n-shot"] == {"dlm_next_digit_mc": 0, "dlm_next_digit_gen": 0}
    assert results["config"]["dlm"]["elbo"]["mc_samples"] == 8
    assert results["config"]["dlm"]["elbo"]["spread"]["loglikelihood"]["requests"] == 200
    assert f"dlm_next_digit_mc acc: {accuracy:.4f}" in out and str(results_file) in out

    assert main(["report", str(trained)]) == 0
    report = capsys.readouterr().out
    assert (
        f"eval results ({results_file}):" in report
        and f"dlm_next_digit_gen exact_match: {exact:.4f}" in report
    )


def test_lm_eval_cli_finds_the_dlm_model_through_the_installed_pth(trained, next_digit_task, tmp_path):
    """Python runs a site-packages .pth at start-up; `site.addsitedir` is that same step for a
    directory holding only the file the wheel installs. Without it, lm-eval has no `dlm`."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    pth = REPO / "sft" / "evaluation" / "dlm_sft_lm_eval.pth"
    (site_dir / pth.name).write_text(pth.read_text())
    output = tmp_path / "cli"
    argv = ["lm_eval", "run", "--model", "dlm", "--model_args", f"pretrained={trained},mc_samples=4"]
    argv += ["--tasks", "dlm_next_digit_mc", "--include_path", str(next_digit_task), "--limit", "4"]
    argv += ["--apply_chat_template", "--output_path", str(output)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def lm_eval_cli(with_hook: bool) -> subprocess.CompletedProcess:
        if with_hook:
            setup, flags = f"import site; site.addsitedir({str(site_dir)!r}); ", []
        else:  # -S: site-packages on the path, but none of its .pth files run (an installed dlm-sft's too)
            paths = [str(REPO), *site.getsitepackages()]
            setup, flags = f"import sys; sys.path[:0] = {paths!r}; ", ["-S"]
        cli = "from lm_eval.__main__ import cli_evaluate; cli_evaluate()"
        code = f"{setup}import sys; sys.argv = {argv!r}; {cli}"
        return subprocess.run(
            [sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )

    run = lm_eval_cli(with_hook=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (written,) = output.glob("**/results_*.json")  # lm-eval's own layout under --output_path
    results = json.loads(written.read_text())
    assert (
        results["config"]["dlm"]["family"] == "ar" and "acc,none" in results["results"]["dlm_next_digit_mc"]
    )
    without = lm_eval_cli(with_hook=False)
    assert without.returncode != 0 and "dlm" in without.stderr


def test_train_and_eval_outside_a_git_repository_print_no_deepspeed_or_git_notices(
    trained, next_digit_task, qwen2_dir, chat_file, tmp_path
):
    """One process, as a user runs the two commands, in a directory that is no git repository:
    DeepSpeed (installed, imported by accelerate when the model is saved) says nothing about its
    CPU accelerator, and lm-eval's `git describe` prints no `fatal: not a git repository`."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(qwen2_dir, chat_file, tmp_path / "run", max_steps=1)))
    evaluate = ["eval", str(trained), "--tasks", "dlm_next_digit_mc", "--include-path", str(next_digit_task)]
    evaluate += ["--limit", "2", "--mc-samples", "2", "--output", str(tmp_path / "results.json")]
    code = (
        "import sys; from sft.cli import main; "
        f"assert main(['train', {str(recipe)!r}]) == 0; assert main({evaluate!r}) == 0; "
        "print('deepspeed imported:', 'deepspeed' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "results.json").is_file()
    if importlib.util.find_spec("deepspeed") is not None:
        assert "deepspeed imported: True" in run.stdout  # the notice had its chance
    output = run.stdout + run.stderr
    assert "Setting accelerator to CPU" not in output and "not a git repository" not in output
