"""The README's walkthrough ("Walkthrough: tune Dream on your own data") runs as written, with the hub
ids it prints, against the stand-in hub cache (offline): prepare → plan → train LoRA → report →
export → generate. The commands and the data recipe are read from README.md; the test only writes
`my_domain.jsonl` (step 1) and adds size overrides to the training line."""

from __future__ import annotations

import json
import re
import shlex

import yaml

from sft.cli import main
from tests.conftest import REPO
from tests.e2e.test_recipes import CPU, SIZE

SECTION = "## Walkthrough: tune Dream on your own data"


def walkthrough() -> tuple[str, list[list[str]]]:
    """The section's data recipe (its ```yaml block) and its `dlm-sft` commands, in order (fenced
    lines with their backslash continuations, and inline `dlm-sft ...` code), as argument lists."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    recipe = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    commands = []
    for block_or_inline in re.finditer(r"```bash\n(.*?)```|`(dlm-sft [^`]+)`", section, re.S):
        lines = block_or_inline.group(1) or block_or_inline.group(2)
        joined = re.sub(r"\\\n\s*", " ", lines)
        for line in joined.splitlines():
            words = shlex.split(line.split(" # ")[0].strip())
            if words and words[0] == "dlm-sft":
                commands.append(words[1:])
    return recipe, commands


def test_walkthrough_extraction_finds_every_step():
    recipe, commands = walkthrough()
    assert "Dream-org/Dream-v0-Instruct-7B" in recipe
    assert [c[0] for c in commands] == ["prepare", "plan", "train", "report", "export", "generate"]


def test_readme_walkthrough_runs_as_written_with_hub_ids(hub_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the tokenized-data cache
    recipe, commands = walkthrough()
    rows = [
        {"prompt": f"Sort {n:05d}", "completion": "".join(sorted(f"{n:05d}"))} for n in range(7, 8000, 97)
    ]
    rows.append(rows[0])  # a duplicate that prepare drops
    (tmp_path / "my_domain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_domain.yaml").write_text(recipe)
    output_dir = yaml.safe_load(recipe)["output_dir"]

    for command in commands:
        extra = {"train": [*SIZE, *CPU], "generate": ["--max-new-tokens", "16"]}.get(command[0], [])
        assert main([*command, *extra]) == 0, command
        if command[0] == "prepare":
            stats = json.loads((tmp_path / output_dir / "stats.json").read_text())
            assert stats["input_rows"] == len(rows) and stats["dropped"]["duplicate"] == 1
            assert stats["eval_rows"] > 0

    run = tmp_path / "runs" / "dream-7b-lora"
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "Dream-org/Dream-v0-Instruct-7B"
    assert (run / "report.png").is_file()
    exported = tmp_path / "dream-7b-my-domain"
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "Dream"  # the base's own layout, with its remote-code files
    assert {"modeling_dream.py", "configuration_dream.py"} <= {p.name for p in exported.iterdir()}
    assert capsys.readouterr().out.strip().splitlines()[-1].strip()  # generate printed an answer
