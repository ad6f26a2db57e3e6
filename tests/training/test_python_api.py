"""The TRL-style Python API: `DiffusionSFTTrainer(model=..., args=DiffusionSFTConfig(...), train_dataset=...)`
with a hub id, a path or a `PreTrainedModel`, chat or prompt/completion datasets, an optional tokenizer
and LoRA config; `save_model()` writes what `dlm-sft export` reads. The README's snippet runs as printed."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import pytest
from transformers import AutoTokenizer, Qwen2ForCausalLM, TrainingArguments

from sft.cli import main
from sft.data.sources import load_chat_rows
from tests.conftest import REPO, sort_rows, write_chat_rows


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("<!-- snippet: python-api -->\n```python\n", 1)[1].split("```", 1)[0]


def test_the_public_names_import_from_sft_without_loading_torch():
    code = (
        "import sys, sft; assert 'torch' not in sys.modules; "
        "from sft import DiffusionSFTConfig, DiffusionSFTTrainer; "
        "from sft.training.trainer import DiffusionSFTTrainer as T; assert DiffusionSFTTrainer is T"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_readme_snippet_trains_and_saves_what_export_reads(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the tokenized-data cache
    write_chat_rows(tmp_path / "my_domain.jsonl", sort_rows(16))
    namespace: dict = {}
    exec(readme_snippet(), namespace)  # noqa: S102 - the README's code, as printed
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    assert trainer.args.mask_token_id == trainer.model.config.mask_token_id
    assert trainer.args.shift and trainer.args.max_length == 1024

    run = tmp_path / "runs" / "dream-python"
    record = json.loads((run / "dlm_run.json").read_text())
    assert record["global_step"] == 2
    assert record["recipe"]["model"]["name_or_path"] == "Dream-org/Dream-v0-Instruct-7B"
    assert record["recipe"]["lora"]["r"] == 32
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "Dream-org/Dream-v0-Instruct-7B"
    assert "base_model: Dream-org/Dream-v0-Instruct-7B" in (run / "README.md").read_text()
    assert list((tmp_path / ".cache" / "dlm-sft" / "tokenized").iterdir())  # the CLI's cache

    assert main(["export", str(run), "--output", "dream-python-merged"]) == 0
    exported = json.loads((tmp_path / "dream-python-merged" / "config.json").read_text())
    assert exported["model_type"] == "Dream"


def test_a_pretrained_causal_lm_with_its_tokenizer_and_prompt_completion_rows(qwen2_dir, tmp_path):
    """A plain causal LM object becomes a bidirectional diffusion LM with a mask token (family `ar`)."""
    from sft import DiffusionSFTConfig, DiffusionSFTTrainer

    model = Qwen2ForCausalLM.from_pretrained(qwen2_dir)
    tokenizer = AutoTokenizer.from_pretrained(qwen2_dir)
    rows = [{"prompt": f"Sort {n}", "completion": "".join(sorted(str(n)))} for n in range(300, 340)]
    args = DiffusionSFTConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        max_length=32,
        per_device_train_batch_size=4,
        report_to=[],
        activation_checkpointing=False,
        eos_tail="none",
    )
    trainer = DiffusionSFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows[:32]),
        eval_dataset=datasets.Dataset.from_list(rows[32:]),
        processing_class=tokenizer,
    )
    assert model.config.is_causal is False and model.config.dlm_family == "ar"
    assert args.mask_token_id == tokenizer.convert_tokens_to_ids("<|mask|>") and args.shift
    assert len(trainer.train_dataset) == 32 and "input_ids" in trainer.eval_dataset.column_names
    trainer.train()
    assert "eval_loss" in trainer.evaluate()
    trainer.save_model()
    record = json.loads((tmp_path / "run" / "dlm_run.json").read_text())
    assert record["global_step"] == 2 and record["recipe"]["data"]["max_length"] == 32
    assert record["recipe"]["diffusion"]["eos_tail"] == "none"
    assert main(["export", str(tmp_path / "run"), "--output", str(tmp_path / "export")]) == 0


def test_the_cli_reuses_the_tokenization_of_the_python_api(
    qwen2_dir, chat_file, tmp_path, monkeypatch, capsys
):
    from sft import DiffusionSFTConfig, DiffusionSFTTrainer

    monkeypatch.setenv("HOME", str(tmp_path))
    args = DiffusionSFTConfig(output_dir=str(tmp_path / "api"), max_length=32, report_to=[])
    trainer = DiffusionSFTTrainer(str(qwen2_dir), args, train_dataset=load_chat_rows(str(chat_file)))
    cache = tmp_path / ".cache" / "dlm-sft" / "tokenized"
    (built,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(trainer.train_dataset) == 48

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(
            {"model": {"name_or_path": str(qwen2_dir)}, "data": {"train": str(chat_file), "max_length": 32}}
        )
    )
    assert main(["train", str(recipe), "--tokenize-only"]) == 0
    assert f"train tokenized into {built}" in capsys.readouterr().out


def test_a_dataset_without_conversation_columns_is_one_line(qwen2_dir, tmp_path):
    from sft import DiffusionSFTConfig, DiffusionSFTTrainer, UserError

    args = DiffusionSFTConfig(output_dir=str(tmp_path / "run"), report_to=[])
    with pytest.raises(UserError, match=r"train_dataset: no conversation columns \(has text\)"):
        DiffusionSFTTrainer(str(qwen2_dir), args, train_dataset=datasets.Dataset.from_list([{"text": "hi"}]))


def test_trls_own_sft_config_trains_with_what_it_sets(qwen2_dir, chat_file, tmp_path):
    """A TRL user's `SFTConfig` (and plain `TrainingArguments`) works as `args`: what it sets carries
    over into the `DiffusionSFTConfig`, TRL's `max_length` as the data's; the rest are the defaults."""
    from trl import SFTConfig

    from sft import DiffusionSFTConfig, DiffusionSFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        max_length=32,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        lr_scheduler_type="cosine",
        report_to=[],
    )
    trainer = DiffusionSFTTrainer(str(qwen2_dir), args, train_dataset=load_chat_rows(str(chat_file)))
    got = trainer.args
    assert isinstance(got, DiffusionSFTConfig) and got.output_dir == str(tmp_path / "run")
    assert (got.max_steps, got.max_length, got.learning_rate) == (2, 32, 1e-3)
    assert got.per_device_train_batch_size == 4
    assert got.lr_scheduler_type == "cosine" and not got.bf16
    assert got.eos_tail == DiffusionSFTConfig.eos_tail and got.weighting == DiffusionSFTConfig.weighting
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= 32
    trainer.train()
    assert trainer.state.global_step == 2

    plain = TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True, num_train_epochs=2)
    converted = DiffusionSFTTrainer(str(qwen2_dir), plain, train_dataset=load_chat_rows(str(chat_file))).args
    assert isinstance(converted, DiffusionSFTConfig) and converted.num_train_epochs == 2


def test_an_sft_config_asking_for_trls_packing_is_one_line(qwen2_dir, chat_file, tmp_path):
    from trl import SFTConfig

    from sft import DiffusionSFTTrainer, UserError

    args = SFTConfig(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, packing=True)
    with pytest.raises(UserError, match=r"^args.packing: not used by diffusion SFT; use data.batching: pack"):
        DiffusionSFTTrainer(str(qwen2_dir), args, train_dataset=load_chat_rows(str(chat_file)))
    assert not (tmp_path / "run").exists()
