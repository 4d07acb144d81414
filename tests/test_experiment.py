"""python -m study.experiment: the whole experiment on digits at the quick budget."""

import csv
import json

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
ARGS = ["--dataset", "digits", "--budget", "quick", "--seeds", "2", "--lr-scaling", "none,linear"]
ARGS += ["--n-trials", "4", "--replicate-seeds", "2", "--models", "swin,bn-cnn", "--device", "cpu", "--quiet"]


def experiment(tmp_path, db: str, *extra: str):
    return cli(
        "study.experiment",
        *ARGS,
        "--storage",
        f"sqlite:///{tmp_path / db}",
        "--out",
        str(tmp_path / "out"),
        *extra,
    )


def counts(url: str) -> dict[str, int]:
    return {
        s.study_name: len(optuna.load_study(study_name=s.study_name, storage=url).trials)
        for s in optuna.get_all_study_summaries(url)
    }


@pytest.mark.slow
def test_experiment_writes_every_result_and_resumes(tmp_path):
    first = experiment(tmp_path, "a.db")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    out = tmp_path / "out"
    for name in (
        "report.md",
        "verdict.json",
        "grid-runs.csv",
        "grid-history.csv",
        "search-x1-trials.csv",
        "search-x4-history.csv",
        "replicate-runs.csv",
        "records/grid.jsonl",
        "records/search-x1.jsonl",
        "records/search-x4.jsonl",
        "records/replicate.jsonl",
        "records/grid-bn-cnn.jsonl",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "figures").glob("*.png")), "no figure"
    assert not list(out.rglob("*.db"))  # results never hold a database
    with open(out / "grid-runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 2 * (3 + 3 * 2)  # seeds x (accumulation-1 runs + one per arm and micro-batch)
    verdict = json.loads((out / "verdict.json").read_text())
    # equal tuning effort per accumulation value, the tuned comparison paired by seed and scored on test
    tuning = verdict["tuned_replicates"]
    assert tuning["trials_per_accumulation"] == {"1": 4, "4": 4}
    assert tuning["paired"] is True and tuning["scored_on"].startswith("test")
    assert tuning["seeds"] == {"1": [1, 2], "4": [1, 2]}
    assert tuning["difference"]["4"]["equal_epochs"]["test_accuracy"]["n"] == 2
    assert tuning["configs"]["1"]["optimizer"] == tuning["configs"]["4"]["optimizer"] == "adamw"
    # the grid's runs measured the gradient noise scale, and the report places the batches on it
    noise = verdict["noise_scale"]
    assert noise["runs"] == len(runs) and noise["grid_effective_batches"] == [32, 64, 128, 256, 512]
    assert set(noise["positions_at_last_epoch"].values()) <= {"below", "near", "above"}
    report = (out / "report.md").read_text()
    assert "## The gradient noise scale" in report and "figures/noise-scale.png" in report
    assert (out / "figures" / "noise-scale.png").is_file()
    with open(out / "grid-history.csv") as f:
        history = list(csv.DictReader(f))
    assert all(float(row["grad_trace_sigma"]) > 0 for row in history)  # measured every epoch
    url = f"sqlite:///{tmp_path / 'a.db'}"
    before = counts(url)
    assert before == {"digits-grid-quick": 18, "digits-overfitting-quick-accumulation_steps=1": 4,
                      "digits-overfitting-quick-accumulation_steps=4": 4, "digits-overfitting-quick-tuned": 4,
                      "digits-grid-quick-bn-cnn": 4}  # fmt: skip
    # the control's grid is the Swin's design reduced to micro-batch 32 (arm none): 2 seeds x (32 x 1, 32 x 4)
    control = optuna.load_study(study_name="digits-grid-quick-bn-cnn", storage=url)
    assert {(t.params["batch_size"], t.params["accumulation_steps"]) for t in control.trials} == {(32, 1), (32, 4)}
    assert [f["family"] for f in verdict["families"]["contrast"]] and set(verdict["families"]["per_family"]) == {"swin", "bn-cnn"}

    # The same command again: nothing is run twice.
    again = experiment(tmp_path, "a.db")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 of 18 runs to do" in again.stdout and "tuning search" not in again.stdout
    assert counts(url) == before

    # On a machine without the database: the committed records stand in for it.
    fresh = experiment(tmp_path, "b.db")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "resumed from" in fresh.stdout and "0 of 18 runs to do" in fresh.stdout
    after = counts(f"sqlite:///{tmp_path / 'b.db'}")
    assert after == before
    grid = optuna.load_study(study_name="digits-grid-quick", storage=f"sqlite:///{tmp_path / 'b.db'}")
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["history"] for t in grid.trials)
    ran = optuna.load_study(study_name="digits-grid-quick", storage=url).trials
    assert sorted(t.datetime_complete for t in grid.trials) == sorted(t.datetime_complete for t in ran)  # not import time


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--n-trials", "0"], "--n-trials must be >= 1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--lr-scaling", "none,cubic"], "--lr-scaling takes arms of"),
        (["--storage", "not a url"], "malformed storage URL"),
        (["--budget", "huge"], "invalid choice: 'huge'"),
        (["--models", "swin,cnn"], "--models takes model families of swin, vit, bn-cnn"),
    ],
)
def test_experiment_bad_input_exits_2_with_one_line(tmp_path, args, message):
    db = tmp_path / "e.db"
    base = [
        "--dataset",
        "digits",
        "--budget",
        "quick",
        "--storage",
        f"sqlite:///{db}",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = cli("study.experiment", *base, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not db.exists() and not (tmp_path / "o").exists()


def test_the_control_families_get_the_grid_of_the_same_design_after_the_swins_replication():
    from study.lib.experiment import steps, study_names

    plan = steps(dataset="cifar10", budget="cpu", accumulation=4, seeds=5, arms=["none", "linear", "sqrt"],
                 n_trials={1: 16, 4: 16}, replicate_seeds=5, workers=2, controls=("vit", "bn-cnn"))  # fmt: skip
    assert [s.module for s in plan] == ["study.grid", "study.run", "study.run", "study.replicate", "study.grid", "study.grid"]
    names = study_names("cifar10", "cpu")
    for step, family in zip(plan[-2:], ("vit", "bn-cnn"), strict=True):
        flags = step.args
        assert flags[flags.index("--models") + 1] == family and flags[flags.index("--lr-scaling") + 1] == "none"
        assert flags[flags.index("--study-name") + 1] == names[f"grid-{family}"] == f"cifar10-grid-cpu-{family}"
        assert flags[flags.index("--seeds") + 1] == "5" and "--noise-scale" not in flags
        assert flags[flags.index("--batch-sizes") + 1] == "32"  # the reduced design (docs/design.md)
        assert flags[flags.index("--step-matched") + 1] == ""  # no step-matched run (docs/design.md)
