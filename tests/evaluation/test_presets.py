"""`--preset`: Dream's and LLaDA's settings per task, grouped into lm-eval calls; explicit options win;
and `dlm-sft eval` argument mistakes end in one line (exit 2) before any model is loaded."""

from __future__ import annotations

import pytest

from sft.cli import main
from sft.errors import UserError
from sft.evaluation.harness import plan_runs
from sft.evaluation.presets import PRESETS


def test_dream_preset_runs_each_task_with_dreams_own_settings():
    runs = plan_runs(["gsm8k_cot", "mmlu_generative", "mmlu_pro"], "dream-instruct", None, False, {})
    assert [run.tasks for run in runs] == [["gsm8k_cot"], ["mmlu_generative", "mmlu_pro"]]
    gsm8k, mmlu = runs
    assert gsm8k.num_fewshot == 0 and mmlu.num_fewshot == 4 and gsm8k.apply_chat_template
    assert gsm8k.settings["max_new_tokens"] == gsm8k.settings["steps"] == 256
    assert (gsm8k.settings["alg"], gsm8k.settings["temperature"], gsm8k.settings["top_p"]) == (
        "entropy",
        0.1,
        0.9,
    )
    assert mmlu.settings["max_new_tokens"] == 128


def test_llada_preset_uses_blocks_greedy_and_steps_equal_to_length():
    (run,) = plan_runs(["gsm8k"], "llada-instruct", None, False, {})
    assert run.num_fewshot == 4 and run.settings["block_length"] == 8
    assert run.settings["steps"] == run.settings["max_new_tokens"] == 256
    assert run.settings["alg"] == "maskgit_plus" and run.settings["temperature"] == 0.0
    every = PRESETS["llada-instruct"].values()
    assert all(p.steps == p.max_new_tokens and p.source.startswith("ML-GSAI/LLaDA") for p in every)


def test_explicit_options_override_the_preset_for_every_task():
    runs = plan_runs(None, "dream-instruct", 1, False, {"temperature": 0.0, "steps": 8})
    assert len({t for run in runs for t in run.tasks}) == len(PRESETS["dream-instruct"])
    assert all(
        r.settings["temperature"] == 0.0 and r.settings["steps"] == 8 and r.num_fewshot == 1 for r in runs
    )
    likelihood = next(r for r in runs if "gpqa_main_n_shot" in r.tasks)
    assert likelihood.settings["mc_samples"] == 32 and likelihood.settings["max_new_tokens"] is None


def test_plain_tasks_run_in_one_call_with_the_given_options():
    (run,) = plan_runs(["a", "b"], None, 3, True, {"steps": 4})
    assert (run.tasks, run.num_fewshot, run.apply_chat_template, run.settings) == (
        ["a", "b"],
        3,
        True,
        {"steps": 4},
    )


@pytest.mark.parametrize(
    ("tasks", "preset", "message"),
    [(None, None, "--tasks: no tasks"), (["gsm8k"], "gpt-instruct", "unknown preset 'gpt-instruct'")],
)
def test_bad_plans_are_user_errors(tasks, preset, message):
    with pytest.raises(UserError, match=message):
        plan_runs(tasks, preset, None, False, {})


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--preset", "llada-instruct", "--tasks", "hellaswag"],
            "the llada-instruct preset has no settings for",
        ),
        (["recipe.yaml", "--tasks", "gsm8k"], "cannot be combined with --tasks/--preset"),
        ([], "nothing to evaluate on"),
        (["--tasks", "gsm8k", "--ar-baseline"], "--ar-baseline works with a recipe"),
    ],
)
def test_eval_argument_mistakes_are_one_line(argv, line, tmp_path, capsys):
    assert main(["eval", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and line in err and err.count("\n") == 1
