"""Every registered family, through the registry alone: its formats round-trip, its built-in
configs plan, and no module outside `sft/families/` names a family (adding one touches that folder
only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from sft.families import FAMILIES
from sft.families.base import FAMILY_KEY
from sft.families.loader import detect_family, native_config, release_family
from sft.planning.shapes import model_shape

RELEASE = [f for f in FAMILIES.values() if f.is_release_layout is not None]
KNOWN = [(f, hub_id) for f in FAMILIES.values() for hub_id in f.known_configs]
DIMENSIONS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def tiny_native(model_type: str) -> dict:
    values = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2)
    values.update(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, mask_token_id=5)
    return AutoConfig.for_model(model_type, **values).to_dict()


@pytest.mark.parametrize("family", RELEASE, ids=lambda f: f.name)
def test_a_release_config_written_by_a_family_reads_back_to_the_same_model(family):
    native = tiny_native(family.release_model_type)
    release = family.release_config(native, None)
    assert family.is_release_layout(release) and release_family(release) is family
    assert detect_family(release, "config.json") is family
    back = native_config(release, "config.json")
    assert back[FAMILY_KEY] == family.name
    assert {k: back[k] for k in DIMENSIONS} == {k: native[k] for k in DIMENSIONS}


@pytest.mark.parametrize("family", RELEASE, ids=lambda f: f.name)
def test_weight_names_round_trip_through_the_release_layout(family):
    native = tiny_native(family.release_model_type)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**native))
    for name in model.state_dict():
        assert family.native_name(family.release_name(name)) == name


@pytest.mark.parametrize(("family", "hub_id"), KNOWN, ids=[h for _, h in KNOWN])
def test_every_known_hub_model_is_planned_without_a_download(family, hub_id):
    shape, source = model_shape(hub_id)
    assert "built-in" in source and shape.params() > 1e8
    assert detect_family({**family.known_configs[hub_id], FAMILY_KEY: family.name}, hub_id) is family


def family_words() -> set[str]:
    """What names a family or its model types: family names, titles, the transformers model types and
    classes the families load and export."""
    words = set()
    for family in FAMILIES.values():
        words |= {family.name, *family.titles, *family.export_classes, *family.export_classes.values()}
        words |= {family.release_model_type} if family.release_model_type else set()
        words |= {str(config["model_type"]) for config in family.known_configs.values()}
    return words


def offending_lines(pattern: re.Pattern) -> list[str]:
    root = Path(__file__).resolve().parents[2] / "sft"
    return [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in root.rglob("*.py")
        if "families" not in path.parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]


def test_no_module_outside_the_families_folder_names_a_family():
    names = "|".join(FAMILIES)
    assert offending_lines(re.compile(rf"\bfamilies\.({names})\b")) == []  # no import of a family module


def test_no_module_outside_the_families_folder_spells_a_model_type_or_family_name():
    words = family_words()
    assert {"qwen2", "llama", "dream", "llada", "Dream", "LLaDA"} <= words
    quoted = "|".join(sorted(map(re.escape, words)))
    assert offending_lines(re.compile(rf"([\"'])(?i:{quoted})\1")) == []
