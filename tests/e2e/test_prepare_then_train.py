"""`dlm-sft prepare`'s output directory is what `dlm-sft train` reads."""

from __future__ import annotations

import yaml

from sft.cli import main
from tests.conftest import recipe_dict, sort_rows
from tests.data_prep_fixtures import write_recipe, write_smoltalk_dir, write_tulu_dir


def test_train_reads_the_prepared_directory(qwen2_dir, tmp_path, capsys):
    rows = sort_rows(60, seed=5)
    tulu = [{"id": r["id"], "messages": r["messages"], "source": "sort"} for r in rows[:40]]
    smol = [{"messages": r["messages"], "source": "sort"} for r in rows[30:]]  # 10 duplicates of tulu
    write_tulu_dir(tmp_path / "tulu", tulu)
    write_smoltalk_dir(tmp_path / "smol", smol)
    data_recipe = write_recipe(
        tmp_path / "data.yaml",
        [
            {"name": "tulu3", "path": str(tmp_path / "tulu")},
            {"name": "smoltalk", "path": str(tmp_path / "smol"), "config": "all"},
        ],
        tmp_path / "prepared",
        eval_fraction=0.2,
        seed=1,
    )
    assert main(["prepare", str(data_recipe)]) == 0
    stats = yaml.safe_load((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["input_rows"] == 70 and stats["kept_rows"] == 60

    raw = recipe_dict(qwen2_dir, tmp_path / "prepared" / "train", tmp_path / "run", max_steps=2)
    raw["data"]["eval"] = str(tmp_path / "prepared" / "eval")
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"train examples: {stats['train_rows']}" in out and f"eval examples: {stats['eval_rows']}" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()
