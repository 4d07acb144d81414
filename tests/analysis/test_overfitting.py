"""python -m analysis.overfitting: the run-level verdict of grid studies, from the command line."""

import csv
import io
import json
import subprocess
import sys

import optuna
import pytest

from analysis.overfitting import OVERFITTING, UNDER_TRAINING
from tests.analysis.synthetic import stored

optuna.logging.set_verbosity(optuna.logging.WARNING)


def overfitting(*args):
    return subprocess.run(
        [sys.executable, "-m", "analysis.overfitting", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("kind", "verdict"), [("under-training", UNDER_TRAINING), ("overfitting", OVERFITTING)]
)
def test_cli_gives_the_verdict_in_every_format(tmp_path, kind, verdict):
    url = stored(tmp_path, kind, arms=("none", "linear"))
    table = overfitting("--study", "g", "--storage", url)
    assert table.returncode == 0, table.stderr
    assert f"Verdict: {verdict}." in table.stdout and "lr scaling `linear`" in table.stdout
    assert table.stdout.index("(b x N) against (bN x 1)") < table.stdout.index(
        "Verdict:"
    )  # equivalence first
    doc = json.loads(overfitting("--study", "g", "--storage", url, "--format", "json").stdout)
    arms = {a["arm"]: a for a in doc["studies"][0]["arms"]}
    assert arms["none"]["verdict"] == verdict and arms["none"]["seeds"] == [0, 1, 2]
    assert arms["none"]["predictions"]["behind_at_matched_epochs"] is (verdict == UNDER_TRAINING)
    rows = list(
        csv.DictReader(io.StringIO(overfitting("--study", "g", "--storage", url, "--format", "csv").stdout))
    )
    assert {r["where"] for r in rows} >= {"epoch 8", "epoch 40", "equal train loss: accumulated epoch 16",
                                          "best epoch (minimum validation loss)",
                                          "matched steps: accumulated epoch 160 = baseline epoch 40"}  # fmt: skip
    assert all(r["n"] == "3" for r in rows if r["where"].startswith("epoch"))  # n = seeds
    figures = tmp_path / "figs"
    markdown = overfitting(
        "--study", "g", "--storage", url, "--format", "markdown", "--figures", str(figures)
    )
    assert markdown.returncode == 0 and f"**Verdict: {verdict}.**" in markdown.stdout
    for name in ("g-steps-none-x4", "g-progress-none-x4", "g-progress-linear-x4"):
        assert (figures / f"{name}.png").is_file() and f"figures/{name}.png" in markdown.stdout


def test_cli_refuses_a_search_study_and_bad_input(tmp_path):
    url = stored(tmp_path, "neither")
    search = optuna.create_study(storage=url, study_name="s", direction="maximize")
    search.set_user_attr("kind", "search")
    db = tmp_path / "v.db"
    before = db.read_bytes()
    for args, message in [
        (["--study", "s"], "is not a grid study"),
        (["--study", "nope"], "no study 'nope'"),
        (["--study", "g", "--min-effect", "-1"], "--min-effect must be >= 0"),
        (["--study", "g", "--stop-at", "0"], "--stop-at must be >= 1"),
        (["--study", "g", "--stop-at", "7"], "--stop-at 7 is before the first epoch point (8) of 'g'"),
        (["--study", "g", "--format", "xml"], "invalid choice: 'xml'"),
    ]:
        proc = overfitting(*args, "--storage", url)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert db.read_bytes() == before  # analysis reads only
    missing = overfitting("--study", "g", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 2 and not (tmp_path / "none.db").exists()
