"""python -m study.replicate on a small real study (digits, quick budget)."""

import json

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
def test_replicate_reruns_the_best_trials_with_fresh_seeds(small_studies):
    proc = cli(
        "study.replicate",
        "--study",
        "s",
        "--top",
        "1",
        "--seeds",
        "2",
        "--storage",
        small_studies,
        "--format",
        "json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # progress goes to stderr, the report alone to stdout
    assert "trial 0 COMPLETE" in proc.stderr
    (row,) = out["configurations"]
    source = optuna.load_study(study_name="s", storage=small_studies)
    assert row["source"] == f"s:{source.best_trial.number}" and row["n"] == 2 and row["seeds"] == [1, 2]
    replicas = optuna.load_study(study_name="s-replicate", storage=small_studies).get_trials()
    assert len(replicas) == 2 and all(t.state == TrialState.COMPLETE for t in replicas)
    vals = [t.user_attrs["val_accuracy"] for t in replicas]
    assert row["val_accuracy"]["mean"] == pytest.approx(sum(vals) / 2)
    for t in replicas:  # the same configuration, another seed
        cfg, original = t.user_attrs["config"], source.best_trial.user_attrs["config"]
        assert {k: v for k, v in cfg.items() if k not in ("seed", "data_dir", "device")} == {
            k: v for k, v in original.items() if k not in ("seed", "data_dir", "device")
        }
        assert cfg["seed"] != original["seed"]


def test_replicate_bad_input(small_studies):
    for args, message in (
        (["--study", "nope", "--storage", small_studies], "no study 'nope'"),
        (["--study", "s", "--top", "0", "--storage", small_studies], "--top, --seeds and --workers must be >= 1"),
    ):
        proc = cli("study.replicate", *args)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_replicate_workers_share_the_reruns_each_once(small_studies):
    proc = cli("study.replicate", "--study", "s", "--top", "1", "--seeds", "2", "--workers", "2",
               "--storage", small_studies, "--format", "json", "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["configurations"]  # one report, from the parent
    assert row["n"] == 2 and row["seeds"] == [1, 2]
    replicas = optuna.load_study(study_name="s-replicate", storage=small_studies).get_trials()
    assert sorted(t.params["seed"] for t in replicas) == [1, 2]
    assert all(t.state == TrialState.COMPLETE for t in replicas)
