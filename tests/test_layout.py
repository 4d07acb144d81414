"""The layout of DESIGN.md: thin commands over one study library; no command imports another."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "analysis", "search_spaces")


def modules() -> list[str]:
    return sorted(
        f"{path.parent.name}.{path.stem}" if path.stem != "__init__" else path.parent.name
        for package in PACKAGES
        for path in (ROOT / package).glob("*.py")
    )


def is_command(module: str) -> bool:
    """A command is a module run with ``python -m``: it has an ``if __name__ == "__main__":`` block."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    return any(
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        for node in tree.body
    )


def imported(module: str) -> set[str]:
    """Every module of the project that ``module`` imports, at the top or inside a function."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.split(".")[0] in PACKAGES} & set(modules())


COMMANDS = [m for m in modules() if is_command(m)]


def test_the_commands_are_the_ones_users_run():
    assert {
        "study.run",
        "study.grid",
        "study.replicate",
        "study.experiment",
        "study.dashboard",
        "study.train",
        "analysis.report",
        "analysis.overfitting",
        "analysis.compare",
        "analysis.results",
        "analysis.noise_scale",
    } <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_imports_another_command(command):
    others = sorted(imported(command) & (set(COMMANDS) - {command}))
    assert not others, (
        f"{command} imports the command(s) {', '.join(others)}: move what they share into a library"
    )


@pytest.mark.parametrize("module", [m for m in modules() if m.startswith("analysis.")])
def test_analysis_never_trains(module):
    # analysis reads studies (study.session, study.records) but never imports what trains
    used = imported(module) & {"study.train", "study.objective", "study.run", "study.grid", "study.replicate"}
    assert not used, f"{module} imports {', '.join(sorted(used))}"


def test_analysis_commands_load_no_torch():
    """Reading a study needs no trainer: the analysis commands start without importing torch."""
    import subprocess
    import sys

    code = (
        "import sys, analysis.report, analysis.results, analysis.compare, analysis.overfitting, "
        "analysis.noise_scale; "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
