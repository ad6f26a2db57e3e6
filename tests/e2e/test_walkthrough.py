"""The README's domain-tuning walkthrough end to end on tiny stand-ins:
my_domain.jsonl → prepare → train (Dream LoRA recipe) → report → export → generate."""

from __future__ import annotations

import json

import yaml

from sft.cli import main
from tests.conftest import REPO
from tests.e2e.test_recipes import cpu_overrides
from tests.format_fixtures import write_dream_dir


def test_domain_walkthrough_from_jsonl_to_generated_text(tokenizer, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    base = tmp_path / "dream-base"
    write_dream_dir(base, tokenizer)
    rows = [
        {"prompt": f"Sort {n:05d}", "completion": "".join(sorted(f"{n:05d}"))} for n in range(7, 4000, 97)
    ]
    rows.append(rows[0])  # a duplicate that prepare drops
    domain = tmp_path / "my_domain.jsonl"
    domain.write_text("".join(json.dumps(r) + "\n" for r in rows))

    data_recipe = tmp_path / "my_domain.yaml"
    data_recipe.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "my_domain", "path": str(domain)}],
                "filters": {"malformed": True, "exact_dedup": True, "max_tokens": 64, "tokenizer": str(base)},
                "output_dir": str(tmp_path / "data"),
                "eval_fraction": 0.1,
                "seed": 0,
            }
        )
    )
    assert main(["prepare", str(data_recipe)]) == 0
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["input_rows"] == len(rows) and stats["kept_rows"] == len(rows) - 1
    assert stats["dropped"]["duplicate"] == 1

    run = tmp_path / "run"
    overrides = cpu_overrides(base, tmp_path / "data" / "train", run, with_eval=False)
    assert main(["train", "recipes/dream-7b/sft_lora.yaml", *overrides]) == 0
    assert (run / "adapter_config.json").is_file() and (run / "trainer_state.json").is_file()

    assert main(["report", str(run)]) == 0
    assert (run / "report.png").is_file()

    exported = tmp_path / "exported"
    assert main(["export", str(run), "--output", str(exported)]) == 0
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "Dream"  # the base's own format
    capsys.readouterr()
    assert main(["generate", str(exported), "--prompt", "Sort 31415", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
