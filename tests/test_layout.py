"""The layout: thin commands over one library per package; no command imports another.

The naming rule: the top level of ``study/`` and ``analysis/`` holds only commands (the modules a
user runs with ``python -m``); everything they call is in the package's ``lib/``, and a command's
own logic, when it has some, is the library module of the same name (``analysis/report.py`` calls
``analysis/lib/report.py``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "analysis", "search_spaces")


def modules() -> list[str]:
    """Every module of the project's packages, their lib/ subpackages included."""
    out = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(out)


def source(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text()


def is_command(module: str) -> bool:
    """A command is a module run with ``python -m``: it has an ``if __name__ == "__main__":`` block."""
    tree = ast.parse(source(module))
    return any(
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        for node in tree.body
    )


def imported(module: str) -> set[str]:
    """Every module of the project that ``module`` imports, at the top or inside a function."""
    tree = ast.parse(source(module))
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


@pytest.mark.parametrize("module", [m for m in modules() if m.startswith("analysis")])
def test_analysis_never_trains(module):
    # analysis reads studies (study.lib.session, study.lib.records) but never imports what trains
    used = imported(module) & {
        "study.train",
        "study.lib.objective",
        "study.run",
        "study.grid",
        "study.replicate",
    }
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


def test_the_top_level_holds_only_commands_and_lib_none():
    for module in modules():
        parts = module.split(".")
        if len(parts) == 2 and parts[0] in ("study", "analysis") and parts[1] != "lib":
            assert is_command(module), f"{module} is not a command: move it into {parts[0]}/lib/"
        if "lib" in parts:
            assert not is_command(module), f"{module} is a command: move it to the top of {parts[0]}/"


def _functions(module: str) -> list[tuple[str, int]]:
    tree = ast.parse(source(module))
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]  # fmt: skip


@pytest.mark.parametrize("module", [m for m in modules() if m.split(".")[0] in ("study", "analysis")])
def test_functions_are_short_and_commands_thin(module):
    """A function a reader checks by eye: at most 80 lines; a command's main parses, checks and
    calls, in at most 60."""
    for name, lines in _functions(module):
        assert lines <= 80, f"{module}.{name} is {lines} lines"
        if name == "main" and module in COMMANDS:
            assert lines <= 60, f"{module}.main is {lines} lines"


def test_study_and_trial_attrs_are_written_by_records_only():
    writers = [m for m in modules() if m != "study.lib.records" and "set_user_attr(" in source(m)]
    assert not writers, f"set_user_attr outside study.lib.records: {', '.join(writers)}"
