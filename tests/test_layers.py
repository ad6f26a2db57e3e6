"""The house rules of `sft/` (README, Architecture): rooms on floors, imports only down or level
within a room, no cycles, small modules, and light commands that do not load the trainer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SFT = Path(__file__).resolve().parents[1] / "sft"

FLOORS = {
    "sft.errors": 0,
    "sft.loss": 1,
    "sft.tasks": 0,
    "sft.ranks": 0,
    "sft.notices": 0,
    "sft.trl_keys": 0,
    "sft.validation": 1,
    "sft.hub": 2,
    "sft.config": 2,
    "sft.families": 3,
    "sft.recipe": 5,
    "sft.data": 4,
    "sft.training": 5,
    "sft.engines": 6,
    "sft.sampling": 6,
    "sft.evaluation": 7,
    "sft.export": 8,
    "sft.planning": 8,
    "sft.report": 8,
    "sft.cli": 9,
}
"""Each room's floor, as the README's architecture section draws them."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SFT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SFT.rglob("*.py")}


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(module: str) -> set[str]:
    """The sft modules `module` imports, anywhere in its body (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft"):
            for alias in node.names:  # a submodule by name, else a name from the module itself
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES and a.name != "sft"}
    return found - {module, "sft"}


def test_every_room_has_a_floor():
    assert {room(m) for m in MODULES if m != "sft"} == set(FLOORS)


def test_no_import_runs_up_a_floor_or_sideways_into_another_room():
    offenders = [
        f"{module} -> {target}"
        for module in MODULES
        if module != "sft"
        for target in imports(module)
        if room(target) != room(module) and FLOORS[room(target)] >= FLOORS[room(module)]
    ]
    assert not offenders


def test_no_import_cycles():
    graph = {m: imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph[module]:
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_at_most_twelve_top_level_modules_and_none_over_350_lines():
    top_level = [p.name for p in SFT.glob("*.py") if p.name != "__init__.py"]
    assert len(top_level) <= 12, top_level
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 350}
    assert not long


@pytest.mark.parametrize("module", ["sft.report", "sft.planning.plan"])
def test_drawing_curves_or_planning_a_run_does_not_import_the_trainer(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.startswith(('sft.training.trainer', 'sft.training.run'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_help_of_every_command_answers_without_torch():
    code = (
        "import sys\n"
        "from sft.cli.main import COMMANDS, main\n"
        "import argparse\n"
        "subparsers = argparse.ArgumentParser().add_subparsers()\n"
        "names = [c.add_parser(subparsers).prog.split()[-1] for c in COMMANDS]\n"
        "for argv in [['--help']] + [[name, '--help'] for name in names]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(len(names), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "8 False"


def test_the_readme_draws_the_floors_the_code_keeps():
    readme = (SFT.parent / "README.md").read_text()
    section = readme[readme.index("## Architecture") : readme.index("## Development")]
    drawn = {}
    for line in section.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            drawn["sft." + parts[1].removesuffix("/").removesuffix(".py")] = int(parts[0])
    assert drawn == FLOORS
