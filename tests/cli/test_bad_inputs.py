"""Bad input anywhere (recipe, CLI, data, checkpoint directory) is one `error:` line and exit code 2;
credentials never reach a message or a file; weights load only from safetensors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from sft.cli import main
from tests.conftest import REPO, recipe_dict


@dataclass
class Case:
    """A bad input: `argv(work)` builds the files and returns the CLI arguments; the error line must
    contain every string of `names(work)` (the file and/or key) and `what`."""

    argv: Callable[[Workspace], list[str]]
    names: Callable[[Workspace], list[str]]
    what: str


@dataclass
class Workspace:
    tmp: Path
    model: Path
    data: Path

    def recipe(self, name: str = "recipe", text: str | None = None, **sections: dict) -> Path:
        raw = recipe_dict(self.model, self.data, self.tmp / "out")
        for section, values in sections.items():
            raw[section] = values if not isinstance(raw.get(section), dict) else {**raw[section], **values}
        path = self.tmp / f"{name}.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(raw), encoding="utf-8")
        return path

    def data_file(self, name: str, content: str) -> Path:
        path = self.tmp / name
        path.write_text(content, encoding="utf-8")
        return path

    def model_copy(self, name: str) -> Path:
        path = self.tmp / name
        shutil.copytree(self.model, path)
        return path


def _parquet_without_messages(work: Workspace) -> Path:
    path = work.tmp / "text.parquet"
    pd.DataFrame({"text": ["a b c", "d e f"]}).to_parquet(path)
    return path


def _config_not_json(work: Workspace) -> Path:
    path = work.model_copy("broken")
    (path / "config.json").write_text("{not json", encoding="utf-8")
    return path


def _pickle_only(work: Workspace) -> Path:
    path = work.model_copy("pickled")
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


def _without_config(work: Workspace) -> Path:
    path = work.model_copy("noconfig")
    (path / "config.json").unlink()
    return path


def _train(work: Workspace, path: Path, *extra: str) -> list[str]:
    return ["train", str(path), *extra]


def _dry(work: Workspace, path: Path, *extra: str) -> list[str]:
    return ["train", str(path), *extra, "--dry-run"]


CASES: dict[str, Case] = {
    # recipe files
    "unknown section": Case(
        lambda w: _dry(w, w.recipe(modle={"family": "ar"})),
        lambda w: [str(w.tmp / "recipe.yaml"), "modle"],
        "did you mean 'model'",
    ),
    "unknown key": Case(
        lambda w: _dry(w, w.recipe(training={"learnig_rate": 1e-4})),
        lambda w: ["recipe.yaml", "training.learnig_rate"],
        "did you mean 'learning_rate'",
    ),
    "wrong type": Case(
        lambda w: _dry(w, w.recipe(data={"max_length": "long"})),
        lambda w: ["data.max_length"],
        "expected int",
    ),
    "wrong literal": Case(
        lambda w: _dry(w, w.recipe(diffusion={"weighting": "cosine"})),
        lambda w: ["diffusion.weighting"],
        "one of 'inv_t'",
    ),
    "section not a mapping": Case(
        lambda w: _dry(w, w.recipe(lora=[8])), lambda w: ["recipe.yaml", "lora"], "mapping"
    ),
    "recipe not a mapping": Case(
        lambda w: _dry(w, w.recipe(text="- model\n- data\n")), lambda w: ["recipe.yaml"], "must be a mapping"
    ),
    "YAML syntax error": Case(
        lambda w: _dry(w, w.recipe(text="model: [unclosed\n")), lambda w: ["recipe.yaml"], "not valid YAML"
    ),
    "recipe file missing": Case(
        lambda w: _dry(w, w.tmp / "absent.yaml"), lambda w: ["absent.yaml"], "recipe file not found"
    ),
    "model directory missing": Case(
        lambda w: _dry(w, w.recipe(model={"name_or_path": str(w.tmp / "gone")})),
        lambda w: ["model.name_or_path", "gone"],
        "not found",
    ),
    "data file missing": Case(
        lambda w: _dry(w, w.recipe(data={"train": str(w.tmp / "gone.jsonl")})),
        lambda w: ["data.train", "gone.jsonl"],
        "file not found",
    ),
    "conflicting precision": Case(
        lambda w: _dry(w, w.recipe(training={"bf16": True, "fp16": True})),
        lambda w: ["training"],
        "fp16 and bf16",
    ),
    "bad override": Case(
        lambda w: _dry(w, w.recipe(), "max_length"), lambda w: ["max_length"], "section.key=value"
    ),
    # the command line
    "unknown subcommand": Case(
        lambda w: ["trian", "x.yaml"], lambda w: ["dlm-sft", "'trian'"], "invalid choice"
    ),
    "missing recipe argument": Case(lambda w: ["train"], lambda w: ["dlm-sft train"], "required: recipe"),
    "non-integer option": Case(
        lambda w: _train(w, w.recipe(), "--accelerate", "ddp", "--num-processes", "two"),
        lambda w: ["--num-processes"],
        "invalid int value: 'two'",
    ),
    "unknown engine": Case(
        lambda w: _train(w, w.recipe(), "--accelerate", "deepspeed9"),
        lambda w: ["--accelerate", "'deepspeed9'"],
        "unknown engine",
    ),
    "missing accelerate config": Case(
        lambda w: _train(w, w.recipe(), "--accelerate", str(w.tmp / "none.yaml")),
        lambda w: ["none.yaml", "--accelerate"],
        "config file not found",
    ),
    "not an accelerate config": Case(
        lambda w: _train(w, w.recipe(), "--accelerate", str(w.recipe("other"))),
        lambda w: ["other.yaml", "--accelerate"],
        "not an accelerate config",
    ),
    "process count without engine": Case(
        lambda w: _train(w, w.recipe(), "--num-processes", "2"),
        lambda w: ["--num-processes"],
        "needs --accelerate",
    ),
    "launch with dry run": Case(
        lambda w: _dry(w, w.recipe(), "--accelerate", "ddp"), lambda w: ["--dry-run"], "cannot be combined"
    ),
    # data files
    "invalid JSON lines": Case(
        lambda w: _dry(w, w.recipe(data={"train": str(w.data_file("bad.jsonl", '{"messages": [}\n'))})),
        lambda w: ["bad.jsonl"],
        "no examples to train on",  # the one row is dropped as invalid_json
    ),
    "empty data file": Case(
        lambda w: _dry(w, w.recipe(data={"train": str(w.data_file("empty.jsonl", ""))})),
        lambda w: ["empty.jsonl"],
        "empty",
    ),
    "parquet without messages": Case(
        lambda w: _dry(w, w.recipe(data={"train": str(_parquet_without_messages(w))})),
        lambda w: ["text.parquet"],
        "no conversation columns",
    ),
    "unsupported data file": Case(
        lambda w: _dry(w, w.recipe(data={"train": str(w.data_file("rows.tsv", "a,b\n"))})),
        lambda w: ["rows.tsv"],
        "unsupported data file type",
    ),
    # checkpoint directories
    "model directory without config.json": Case(
        lambda w: _dry(w, w.recipe(model={"name_or_path": str(_without_config(w))})),
        lambda w: ["noconfig"],
        "no config.json",
    ),
    "config.json not JSON": Case(
        lambda w: _dry(w, w.recipe(model={"name_or_path": str(_config_not_json(w))})),
        lambda w: ["broken/config.json"],
        "not valid JSON",
    ),
    "pickle-only checkpoint": Case(
        lambda w: _train(w, w.recipe(model={"name_or_path": str(_pickle_only(w))})),
        lambda w: ["pickled", "pytorch_model.bin"],
        "never loaded",
    ),
    # credentials
    "token in a recipe": Case(
        lambda w: _dry(w, w.recipe(training={"hub_token": "hf_secret123abc"})),
        lambda w: ["training.hub_token"],
        "credentials do not belong in a recipe",
    ),
}


@pytest.fixture
def work(qwen2_dir, chat_file, tmp_path) -> Workspace:
    return Workspace(tmp_path, qwen2_dir, chat_file)


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_input_is_one_error_line_with_exit_code_2(work, capsys, name):
    case = CASES[name]
    argv = case.argv(work)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for part in [*case.names(work), case.what]:
        assert part in err
    assert "secret123" not in err
    assert not (work.tmp / "out" / "model.safetensors").exists()


def test_debug_shows_the_traceback_instead(work):
    with pytest.raises(Exception, match="unknown engine"):
        main(["--debug", "train", str(work.recipe()), "--accelerate", "deepspeed9"])


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sft.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **env},
        timeout=120,
    )


@pytest.mark.parametrize("name", ["unknown subcommand", "invalid JSON lines"])
def test_a_real_process_prints_only_the_error_line(work, name):
    result = run_cli(CASES[name].argv(work))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and CASES[name].what in result.stderr


def test_credentials_in_the_environment_reach_no_output_file_or_log(work):
    """HF_TOKEN / WANDB_API_KEY set while training: not in stdout, stderr, or any file of the run."""
    secret = "hf_secret123abcdefgh"
    result = run_cli(["train", str(work.recipe())], HF_TOKEN=secret, WANDB_API_KEY=secret)
    assert result.returncode == 0, result.stderr[-2000:]
    assert secret not in result.stdout + result.stderr
    files = [p for p in (work.tmp / "out").rglob("*") if p.is_file()]
    assert any(p.name == "dlm_run.json" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


UNSAFE = {
    r"\byaml\.load\(": "yaml.load (use yaml.safe_load)",
    r"\bpickle\.loads?\(": "pickle.load",
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"trust_remote_code=True": "trust_remote_code=True outside sft/families/remote.py",
}


def test_no_unsafe_loader_in_the_source():
    offenders = []
    for path in sorted(
        [*REPO.glob("sft/**/*.py"), *REPO.glob("data_prep/**/*.py"), *REPO.glob("scripts/*.py")]
    ):
        text = path.read_text(encoding="utf-8")
        if path.name in ("dream.py", "llada.py"):  # model-card usage text for their own code: strings
            text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("f'", '"')))
        for pattern, what in UNSAFE.items():
            allowed = what.startswith("trust") and path.name == "remote.py"  # the opt-in
            if re.search(pattern, text) and not allowed:
                offenders.append(f"{path.relative_to(REPO)}: {what}")
    assert offenders == []
