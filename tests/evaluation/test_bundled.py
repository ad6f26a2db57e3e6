"""`dlm-sft generate` and `dlm-sft eval` on real (briefly trained) checkpoints: a training output,
a LoRA adapter and an exported Dream-layout directory; eval loss, task accuracy, AR baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sft.cli import main
from sft.evaluation.bundled import evaluate_checkpoint, resolve_target
from sft.recipe import load_recipe
from sft.sampling.chat import chat_loop
from sft.sampling.loading import load_for_sampling
from sft.sampling.settings import SamplerSettings
from sft.tasks.registry import TASKS
from sft.training.run import train

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart"


def write_recipe(directory: Path, output_dir: Path, lora: bool = False, **data) -> Path:
    from tests.conftest import write_chat_rows

    sort = TASKS["dlm-sft/sort_digits"]
    train_file = write_chat_rows(directory / "train.jsonl", sort.rows(64, 0, "easy", None))
    eval_rows = sort.rows(8, 1, "easy", None) + TASKS["dlm-sft/countdown"].rows(4, 1, "easy", None)
    eval_file = write_chat_rows(
        directory / "eval.jsonl", eval_rows + [{"messages": eval_rows[0]["messages"]}]
    )
    raw = yaml.safe_load((QUICKSTART / "sort_digits.yaml").read_text())
    raw["model"]["name_or_path"] = str(QUICKSTART / "model")
    raw["data"].update(train=str(train_file), eval=str(eval_file), max_length=48, **data)
    raw["training"].update(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=16,
        logging_steps=2,
        disable_tqdm=True,
    )
    if lora:
        raw["lora"] = {"r": 4, "alpha": 8}
    path = directory / ("lora.yaml" if lora else "recipe.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, recipe): the quickstart model after a few steps on the sort task."""
    directory = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(directory, directory / "run")
    train(load_recipe(recipe))
    return directory / "run", recipe


def test_generate_prints_one_reply_per_prompt(trained, capsys):
    checkpoint, _ = trained
    argv = [
        "generate",
        str(checkpoint),
        "--prompt",
        "Sort 73914",
        "--prompt",
        "Sort 2",
        "--max-new-tokens",
        "8",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:4] for line in lines] == ["[0] ", "[1] "]


def test_generate_options_blocks_threshold_and_sampling_run(trained, capsys):
    checkpoint, _ = trained
    common = ["generate", str(checkpoint), "--prompt", "Sort 5", "--max-new-tokens", "8"]
    assert main([*common, "--block-length", "4", "--steps", "4", "--alg", "entropy"]) == 0
    assert main([*common, "--threshold", "0.5", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3"]) == 0
    assert main([*common, "--raw"]) == 0
    assert main([*common, "--block-size", "4", "--steps", "2", "--threshold", "0.9"]) == 0  # KV-cache blocks
    capsys.readouterr()
    assert main([*common, "--block-size", "4", "--block-length", "4"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_generate_works_on_a_lora_adapter_checkpoint(tmp_path, capsys):
    recipe = write_recipe(tmp_path, tmp_path / "lora_run", lora=True)
    config = load_recipe(recipe, ["training.max_steps=1"])
    train(config)
    assert (tmp_path / "lora_run" / "adapter_config.json").is_file()
    assert main(["generate", str(tmp_path / "lora_run"), "--prompt", "Sort 31", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() != "" or True  # the reply may be empty; the plumbing ran


def test_generate_works_on_an_exported_dream_layout_checkpoint(trained, tmp_path, capsys):
    checkpoint, _ = trained
    exported = tmp_path / "exported"
    shutil.copytree(checkpoint, exported, ignore=shutil.ignore_patterns("base", "*.bin"))
    config = json.loads((exported / "config.json").read_text())
    config.pop("dlm_family")
    config.update(model_type="Dream", architectures=["DreamModel"])
    (exported / "config.json").write_text(json.dumps(config))
    assert load_for_sampling(exported).family.name == "dream"
    main(["generate", str(exported), "--prompt", "Sort 73914", "--max-new-tokens", "8"])
    dream_reply = capsys.readouterr().out
    main(["generate", str(checkpoint), "--prompt", "Sort 73914", "--max-new-tokens", "8"])
    assert capsys.readouterr().out == dream_reply


def test_interactive_loop_keeps_the_conversation_until_an_empty_line(trained):
    checkpoint, _ = trained
    loaded = load_for_sampling(checkpoint)
    turns = iter(["Sort 42", "/reset", "Sort 7", ""])
    shown: list[str] = []
    messages = chat_loop(
        loaded.model,
        loaded.tokenizer,
        SamplerSettings(max_new_tokens=6, steps=3),
        mask_token_id=loaded.mask_token_id,
        shift=loaded.family.shift,
        system="be brief",
        read=lambda _: next(turns),
        write=shown.append,
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Sort 7"
    assert sum(line.startswith("assistant> ") for line in shown) == 2


def test_eval_loss_is_deterministic_and_task_rows_get_accuracy(trained):
    checkpoint, recipe = trained
    loaded = load_for_sampling(checkpoint)
    settings = SamplerSettings(max_new_tokens=1, steps=2)
    first = evaluate_checkpoint(loaded, resolve_target(str(recipe)), settings, auto_steps=False)
    second = evaluate_checkpoint(loaded, resolve_target(str(recipe)), settings, auto_steps=False)
    assert first.eval_loss == second.eval_loss and first.eval_loss > 0
    assert first.examples == 13
    assert set(first.accuracy) == {"dlm-sft/sort_digits", "dlm-sft/countdown"}
    assert first.counts == {"dlm-sft/sort_digits": 8, "dlm-sft/countdown": 4}
    longest = max(
        len(r["messages"][1]["content"]) for r in TASKS["dlm-sft/sort_digits"].rows(8, 1, "easy", None)
    )
    assert (
        first.sampler["dlm-sft/sort_digits"].max_new_tokens == longest + 4
    )  # one token per digit + end room
    assert first.accuracy == second.accuracy


def test_eval_command_reports_loss_and_accuracy_for_a_recipe_and_a_data_file(trained, capsys):
    checkpoint, recipe = trained
    assert (
        main(["eval", str(checkpoint), str(recipe), "--limit", "8", "--steps", "2", "--threshold", "0.9"])
        == 0
    )
    out = capsys.readouterr().out
    assert "eval loss: " in out and "accuracy dlm-sft/sort_digits: " in out and "threshold=0.9" in out
    data = recipe.parent / "eval.jsonl"
    assert (
        main(
            [
                "eval",
                str(checkpoint),
                str(data),
                "--max-length",
                "48",
                "--max-new-tokens",
                "12",
                "--steps",
                "3",
            ]
        )
        == 0
    )
    assert "accuracy dlm-sft/countdown: " in capsys.readouterr().out


def test_eval_ar_baseline_trains_a_causal_model_and_reports_both_accuracies(trained, capsys):
    checkpoint, recipe = trained
    assert (
        main(["eval", str(checkpoint), str(recipe), "--limit", "8", "--ar-baseline", "--ar-max-steps", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy dlm-sft/sort_digits: " in out and "ar-baseline accuracy dlm-sft/sort_digits: " in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "{missing}", "--prompt", "x"], "checkpoint directory not found"),
        (["generate", "{checkpoint}"], "nothing to do"),
        (
            ["generate", "{checkpoint}", "--prompt", "x", "--block-length", "4", "--steps", "1"],
            "number of blocks",
        ),
        (["eval", "{checkpoint}", "{data}", "--ar-baseline"], "--ar-baseline needs a recipe"),
        (["eval", "{checkpoint}", "{missing}"], "not found"),
        (["eval", "{checkpoint}", "{recipe}", "data.eval=null"], "no eval data"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(trained, tmp_path, capsys, argv, message):
    checkpoint, recipe = trained
    paths = dict(
        checkpoint=checkpoint, recipe=recipe, data=recipe.parent / "eval.jsonl", missing=tmp_path / "nope"
    )
    assert main([arg.format(**paths) for arg in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
