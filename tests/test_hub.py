"""Hub ids resolve through the hub cache, offline, for models, tokenizers and datasets (sft/hub.py)."""

from __future__ import annotations

import json

import datasets
import pytest

from sft.config import ModelSettings
from sft.data.sources import load_chat_rows
from sft.errors import UserError
from sft.families.loader import load_family_tokenizer, load_model
from sft.recipe import load_recipe
from tests.conftest import REPO
from tests.hub_cache import SMOLTALK, TULU


def test_dream_hub_id_loads_with_its_tokenizer_without_running_remote_code(hub_cache):
    loaded = load_model(ModelSettings(name_or_path="Dream-org/Dream-v0-Instruct-7B"))

    assert loaded.family.name == "dream"
    assert type(loaded.tokenizer).__name__ == "Qwen2Tokenizer"  # not DreamTokenizer's remote code
    assert loaded.tokenizer.chat_template and loaded.mask_token_id == loaded.tokenizer.convert_tokens_to_ids(
        "<|mask|>"
    )
    assert loaded.model.name_or_path == "Dream-org/Dream-v0-Instruct-7B"  # the id, never the cache path


@pytest.mark.parametrize("repo_id", ["GSAI-ML/LLaDA-8B-Base", "Qwen/Qwen2.5-0.5B"])
def test_other_recipe_models_load_by_hub_id(hub_cache, repo_id):
    loaded = load_model(ModelSettings(name_or_path=repo_id))
    assert loaded.model.name_or_path == repo_id
    assert loaded.model.config.is_causal is False


def test_a_missing_hub_model_offline_is_one_line_naming_the_id_and_the_download(hub_cache):
    with pytest.raises(UserError) as err:
        load_family_tokenizer(ModelSettings(name_or_path="Dream-org/Dream-v1-Missing"))
    line = str(err.value)
    assert "\n" not in line and "'Dream-org/Dream-v1-Missing'" in line
    assert "hf download Dream-org/Dream-v1-Missing" in line and "HF_HUB_OFFLINE" in line


def test_model_trust_remote_code_reaches_the_tokenizer(tmp_path, tokenizer):
    directory = tmp_path / "custom"
    tokenizer.save_pretrained(directory)
    values = json.loads((directory / "tokenizer_config.json").read_text())
    values.update(
        tokenizer_class="CustomTokenizer",
        auto_map={"AutoTokenizer": [None, "tokenization_custom.CustomTokenizer"]},
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(values))
    (directory / "tokenization_custom.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n"
        "    loaded_from_remote_code = True\n"
    )
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    _, loaded, _ = load_family_tokenizer(ModelSettings(name_or_path=str(directory), trust_remote_code=True))
    assert getattr(loaded, "loaded_from_remote_code", False)


def test_hub_dataset_ids_load_from_the_cache_with_config_and_split(hub_cache):
    tulu = load_chat_rows(TULU)
    smol = load_chat_rows({"name": SMOLTALK, "config": "everyday-conversations", "split": "test"})
    assert len(tulu) == 48 and tulu.column_names == ["messages"]
    assert len(smol) == 12


def test_a_hub_dataset_revision_selects_the_snapshot(hub_cache):
    from tests.hub_cache import revision_of

    rows = load_chat_rows({"name": TULU, "revision": revision_of(TULU)})
    assert len(rows) == 48
    with pytest.raises(UserError, match="hf download allenai/tulu-3-sft-mixture --repo-type dataset"):
        load_chat_rows({"name": TULU, "revision": "0" * 40})


def test_a_missing_hub_dataset_offline_names_the_download(hub_cache):
    with pytest.raises(UserError, match="hf download org/missing-set --repo-type dataset"):
        load_chat_rows("org/missing-set")


def test_a_dataset_dict_root_needs_a_split_and_then_loads_it(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    root = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows * 3), test=datasets.Dataset.from_list(rows)
    ).save_to_disk(str(root))

    with pytest.raises(UserError, match="a DatasetDict with splits train, test"):
        load_chat_rows(str(root))
    assert len(load_chat_rows({"name": str(root), "split": "test"})) == 1
    assert len(load_chat_rows(str(root / "train"))) == 3


def test_a_recipe_accepts_hub_datasets_in_data_train_and_eval(hub_cache, tmp_path):
    config = load_recipe(
        REPO / "recipes" / "dream-7b" / "sft_lora.yaml",
        [
            "data.train=HuggingFaceTB/smoltalk",  # a string: the default config must then exist
            f"data.eval={{name: {SMOLTALK}, config: all, split: test}}",
            f"training.output_dir={tmp_path / 'run'}",
            "training.bf16=false",
        ],
    )
    assert config.data.train == SMOLTALK and config.data.eval["split"] == "test"
    with pytest.raises(UserError, match="data.eval.splt: unknown key"):
        load_recipe(
            REPO / "recipes" / "dream-7b" / "sft_lora.yaml",
            [f"data.train={TULU}", f"data.eval={{name: {SMOLTALK}, splt: x}}", "training.bf16=false"],
        )


def test_a_hub_dataset_with_several_configs_and_none_set_lists_them_and_names_the_key(hub_cache, capsys):
    """SmolTalk has no default config, as on the hub: the bare id of the README is one line listing
    the cached configs and saying to set `config` (not a hint to download what is cached)."""
    with pytest.raises(UserError) as err:
        load_chat_rows(SMOLTALK)
    line = str(err.value)
    assert "'HuggingFaceTB/smoltalk' has 3 configs and none is set: all, everyday-conversations, " in line
    assert "config: all}" in line and "hf download" not in line


def test_generate_and_export_take_a_hub_id(hub_cache, tmp_path, capsys):
    from sft.cli import main

    dream = "Dream-org/Dream-v0-Base-7B"
    assert main(["generate", dream, "--prompt", "Sort 321", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["export", dream, "--output", str(tmp_path / "native"), "--format", "native"]) == 0
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "qwen2"


def test_prepare_with_a_tokenizer_missing_offline_names_the_download(hub_cache, tmp_path):
    from data_prep.pipeline import prepare

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"sources: [{{name: tulu, path: {TULU}}}]\n"
        "filters: {max_tokens: 64, tokenizer: Dream-org/Dream-v9-Missing}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    with pytest.raises(UserError) as err:
        prepare(str(recipe), progress=False)
    assert str(err.value).count("expected") == 1 and "filters.tokenizer" in str(err.value)
    assert "hf download Dream-org/Dream-v9-Missing" in str(err.value)
