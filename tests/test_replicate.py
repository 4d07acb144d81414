"""python -m study.replicate on a small real study (digits, quick budget)."""

import json
import shutil

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

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


def test_a_replication_of_other_trials_is_refused_with_one_line(small_studies, tmp_path):
    """Resuming a replication whose sources are no longer the best trials (the search was extended)
    names both lists instead of failing its first run inside Optuna."""
    db = tmp_path / "s.db"
    shutil.copy(small_studies.removeprefix("sqlite:///"), db)
    url = f"sqlite:///{db}"
    stale = optuna.create_study(study_name="stale", storage=url, direction="maximize")
    stale.add_trial(create_trial(value=0.5, params={"source": "s:99", "seed": 1},
                                 distributions={"source": CategoricalDistribution(["s:99"]),
                                                "seed": CategoricalDistribution([1])}))  # fmt: skip
    proc = cli("study.replicate", "--study", "s", "--top", "1", "--new-study", "stale", "--storage", url)
    best = optuna.load_study(study_name="s", storage=url).best_trial.number
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"stale re-runs source s:99, but this replication has s:{best}" in proc.stderr
    assert len(optuna.load_study(study_name="stale", storage=url).trials) == 1  # nothing was run or queued
    # the same source with other seeds (--seeds changed) is refused too
    seeds = optuna.create_study(study_name="seeds", storage=url, direction="maximize")
    seeds.add_trial(create_trial(value=0.5, params={"source": f"s:{best}", "seed": 99},
                                 distributions={"source": CategoricalDistribution([f"s:{best}"]),
                                                "seed": CategoricalDistribution([99])}))  # fmt: skip
    proc = cli("study.replicate", "--study", "s", "--top", "1", "--new-study", "seeds", "--storage", url)
    assert proc.returncode == 2 and "seeds re-runs seed 99, but this replication has" in proc.stderr, proc.stderr


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


def test_step_matched_replicates_train_n_times_the_epochs_and_are_recorded_at_both():
    """The CIFAR-10 replication's plan: the accumulated configuration trains as many optimizer steps as
    the accumulation-1 one (N times its epochs) and is recorded at its searched epochs too; both
    configurations get the same fresh seeds, so the comparison is paired."""
    import dataclasses

    from study.lib.config import TrainConfig
    from study.lib.replicate import sources

    chosen = []
    for n in (1, 4):
        cfg = dataclasses.asdict(TrainConfig(dataset="digits", batch_size=32, accumulation_steps=n, epochs=10))
        study = optuna.create_study(study_name=f"search-x{n}")
        study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"config": cfg}))
        chosen.append((study, study.trials[0]))
    plan = sources(chosen, seeds=3, step_matched=True)
    assert plan["search-x1:0"]["config"]["epochs"] == 10 and plan["search-x1:0"]["checkpoints"] == [10]
    assert plan["search-x4:0"]["config"]["epochs"] == 40 and plan["search-x4:0"]["checkpoints"] == [10, 40]
    assert plan["search-x1:0"]["seeds"] == plan["search-x4:0"]["seeds"] == [1, 2, 3]
    unstretched = sources(chosen, seeds=3, step_matched=False)
    assert unstretched["search-x4:0"]["config"]["epochs"] == 10
