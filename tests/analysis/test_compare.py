"""analysis.compare on small real studies (digits, quick budget; fixture in tests/conftest.py)."""

import json

import optuna
import pytest

from tests.conftest import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
def test_compare_reports_best_and_compute_and_draws_the_curve(small_studies, tmp_path):
    png = tmp_path / "curve.png"
    proc = cli(
        "analysis.compare",
        "--grid",
        "g",
        "--search",
        "s",
        "--storage",
        small_studies,
        "--out",
        str(png),
        "--format",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    grid, search = out["grid"], out["search"]
    g = optuna.load_study(study_name="g", storage=small_studies)
    best_point = max(m["val_accuracy"] for t in g.trials for m in t.user_attrs["checkpoints"].values())
    assert grid["best_val_accuracy"] == best_point
    assert grid["epochs_trained"] == 6 * 5 and grid["trials"] == 6
    s = optuna.load_study(study_name="s", storage=small_studies)
    assert search["best_val_accuracy"] == s.best_value
    assert search["best_test_accuracy"] == s.best_trial.user_attrs["test_accuracy"]
    assert search["epochs_trained"] == sum(t.user_attrs["epochs_trained"] for t in s.trials)
    assert search["wall_seconds"] > 0 and grid["wall_seconds"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("analysis.compare", ["--grid", "nope", "--search", "s"], "no study 'nope'"),
        (
            "analysis.compare",
            ["--grid", "g", "--search", "s", "--storage", "sqlite:////nonexistent/x.db"],
            "no database at",
        ),
    ],
)
def test_bad_input(small_studies, module, args, message):
    if "--storage" not in args:
        args = [*args, "--storage", small_studies]
    proc = cli(module, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
