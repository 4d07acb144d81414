"""A fair tuning comparison (analysis.lib.tuning, study.lib.experiment) on synthetic studies with a
planted answer: no training."""

import math
import random
import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.lib.document import Paragraph
from analysis.lib.export import run_rows
from analysis.lib.overfitting import runs_from_study
from analysis.lib.stats import welch
from analysis.lib.tuning import fidelity_paragraph, importance_per_stratum, pruning_fidelity, tuned
from study.lib.experiment import steps, study_names

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_every_accumulation_value_gets_its_own_search_with_the_same_effort():
    plan = steps(dataset="cifar10", budget="cpu", accumulation=4, seeds=5, arms=["none"], n_trials={1: 16, 4: 16},
                 replicate_seeds=5, workers=2)  # fmt: skip
    searches = [s for s in plan if s.module == "study.run"]
    assert len(searches) == 2
    names = study_names("cifar10", "cpu", 4)
    for step, n in zip(searches, (1, 4), strict=True):
        args = step.args
        assert args[args.index("--n-trials") + 1] == "16" and "--seed" not in args  # the same sampler seed
        assert (
            f"accumulation_steps={n}" in args and "lr_scaling=none" in args
        )  # one stratum, the lr searched itself
        assert args[args.index("--study-name") + 1] == names[f"search-x{n}"]
        assert args[args.index("--space") + 1] == "overfitting"  # the same nuisance space
    (replicate,) = [s for s in plan if s.module == "study.replicate"]
    assert (
        replicate.args.count("--study") == 2 and "--step-matched" in replicate.args
    )  # the cifar10 cpu budget
    # a finished search is not run again
    assert [s.module for s in steps(dataset="cifar10", budget="cpu", accumulation=4, seeds=5, arms=["none"],
                                     n_trials={1: 0, 4: 3}, replicate_seeds=5, workers=1)].count("study.run") == 1  # fmt: skip


def _reports(study, values, *, pruner_steps=3):
    """Add completed trials reporting ``value`` at every step."""
    dist = {"x": FloatDistribution(0, 1)}
    for v in values:
        study.add_trial(create_trial(params={"x": 0.5}, distributions=dist, value=v,
                                     intermediate_values={s: v for s in range(pruner_steps)}))  # fmt: skip


def test_pruning_never_compares_across_accumulation_values():
    """A trial that is the worst overall but the best of its accumulation value survives in its
    value's own study; pooled with the other value's trials, a median pruner would stop it."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    x1, x4 = (optuna.create_study(direction="maximize", pruner=pruner) for _ in range(2))
    _reports(x1, [0.90, 0.92, 0.91])  # accumulation 1: many steps per epoch, ahead at every epoch
    _reports(x4, [0.30, 0.32, 0.31])  # accumulation 4: behind at equal epochs
    pooled = optuna.create_study(direction="maximize", pruner=pruner)
    _reports(pooled, [0.90, 0.92, 0.91, 0.30, 0.32, 0.31])
    verdicts = {}
    for name, study in (("own value", x4), ("pooled", pooled)):
        trial = study.ask({"x": FloatDistribution(0, 1)})
        trial.report(0.40, 1)  # worst overall, best among accumulation 4
        verdicts[name] = trial.should_prune()
    assert verdicts == {"own value": False, "pooled": True}


def _replicate(effect: float, *, seeds=(1, 2, 3, 4, 5), step_matched: bool = True) -> optuna.Study:
    """Replicated best configurations of accumulation 1 and 4: each seed has a large effect of its own
    (shared by both values, as paired runs share initialization and data order) and accumulation 4
    adds ``effect`` to the test accuracy; its runs trained 4 x 10 epochs, recorded at 10 and 40."""
    rng = random.Random(0)
    study = optuna.create_study(direction="maximize")
    dists = {"source": CategoricalDistribution(("a:0", "b:0")), "seed": CategoricalDistribution(seeds)}
    for seed in seeds:
        shared = rng.gauss(0, 0.05)
        for value, source in ((1, "a:0"), (4, "b:0")):
            epochs = 40 if value == 4 and step_matched else 10
            test = 0.5 + shared + (effect if value == 4 else 0.0) + rng.gauss(0, 0.002)
            val = test + 0.01
            checkpoints = (
                {"10": {"test_accuracy": test - 0.01, "val_accuracy": val - 0.01}} if epochs == 40 else {}
            )
            checkpoints[str(epochs)] = {"test_accuracy": test, "val_accuracy": val}
            config = {
                "accumulation_steps": value,
                "seed": seed,
                "epochs": epochs,
                "optimizer": "adamw",
                "base_lr": 1e-3,
            }
            study.add_trial(create_trial(params={"source": source, "seed": seed}, distributions=dists, value=val,
                                         user_attrs={"config": config, "checkpoints": checkpoints,
                                                     "test_accuracy": test, "val_accuracy": val}))  # fmt: skip
    return study


def test_the_paired_test_scored_difference_recovers_a_planted_effect():
    result = tuned(_replicate(0.02))
    assert result["paired"] and result["scored_on"].startswith("test")
    steps_ = result["difference"]["4"]["matched_steps"]
    assert steps_["epochs"] == 40 and steps_["test_accuracy"].n == 5
    assert (
        steps_["test_accuracy"].low < 0.02 < steps_["test_accuracy"].high and steps_["test_accuracy"].low > 0
    )
    equal = result["difference"]["4"]["equal_epochs"]
    assert equal["epochs"] == 10 and equal["test_accuracy"].mean == pytest.approx(0.01, abs=0.003)
    # the seeds' own effects dwarf the planted one: an unpaired interval cannot see it
    runs = {v: [t.user_attrs["test_accuracy"] for t in _replicate(0.02).trials if t.user_attrs["config"]["accumulation_steps"] == v]
            for v in (1, 4)}  # fmt: skip
    assert welch(runs[1], runs[4]).low < 0
    # without a step-matched replication there is only the equal-epoch comparison
    assert set(tuned(_replicate(0.02, step_matched=False))["difference"]["4"]) == {"equal_epochs"}


def test_an_older_single_search_is_reported_as_such_with_its_unequal_effort():
    dist = {"accumulation_steps": CategoricalDistribution([1, 4])}
    single = optuna.create_study(direction="maximize")
    for value in [1, 1] + [4] * 17:  # the older Fashion-MNIST search: 2 trials of 1, 17 of 4
        single.add_trial(create_trial(state=TrialState.COMPLETE, params={"accumulation_steps": value},
                                      distributions=dist, value=0.8))  # fmt: skip
    result = tuned(_replicate(0.02), {}, single)
    assert result["trials_per_accumulation"] == {"1": 2, "4": 17}
    assert result["pruning"].startswith("across accumulation values")
    per_value = tuned(_replicate(0.02), {1: _search(random.Random(0), 1)}, single)
    assert per_value["pruning"].startswith("within each accumulation value")  # per-value searches win


def test_an_attempt_lost_with_its_worker_does_not_count_as_search_effort():
    """A trial whose worker stopped (FAIL, no reason) was retried; the retry is the trial. Counting
    both would report unequal effort where it was equal."""
    searches = {1: _search(random.Random(0), 1), 4: _search(random.Random(1), 4)}  # 40 trials each
    searches[4].add_trial(create_trial(state=TrialState.FAIL))  # lost, then retried
    searches[4].add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "diverged"}))
    searches[1].add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "diverged"}))
    assert tuned(_replicate(0.02), searches)["trials_per_accumulation"] == {"1": 41, "4": 41}


def _search(rng: random.Random, n: int) -> optuna.Study:
    """A search of one accumulation value whose objective is set by base_lr alone."""
    dists = {"base_lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0, 0.3),
             "drop_path": FloatDistribution(0, 0.3), "weight_decay": FloatDistribution(1e-5, 0.1, log=True)}  # fmt: skip
    study = optuna.create_study(direction="maximize", study_name=f"s{n}")
    for _ in range(40):
        params = {"base_lr": 10 ** rng.uniform(-4, -2), "dropout": rng.uniform(0, 0.3),
                  "drop_path": rng.uniform(0, 0.3), "weight_decay": 10 ** rng.uniform(-5, -1)}  # fmt: skip
        value = 0.5 + 0.1 * math.log10(params["base_lr"]) + rng.gauss(0, 0.005)  # higher lr, better
        study.add_trial(create_trial(state=TrialState.COMPLETE, params=params, distributions=dists, value=value,
                                     intermediate_values={1: value - 0.1, 3: value}))  # fmt: skip
    return study


def test_importance_per_accumulation_value_names_the_planted_parameter():
    rng = random.Random(1)
    blocks = importance_per_stratum({1: _search(rng, 1), 4: _search(rng, 4)}, resamples=10)
    lines = [b.text for b in blocks if isinstance(b, Paragraph)]
    standing = [line for line in lines if "stands out" in line]
    assert len(standing) == 2 and all(line.startswith("base_lr stands out") for line in standing)


def _grid_run(study: optuna.Study, accumulation: int, curve: dict[int, float]) -> None:
    """A completed grid run with its per-epoch validation accuracy."""
    history = {"epoch": list(curve), "val_accuracy": list(curve.values())}
    config = {"dataset": "digits", "batch_size": 32, "accumulation_steps": accumulation, "lr_scaling": "none",
              "seed": len(study.trials), "epochs": max(curve)}  # fmt: skip
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=curve[max(curve)],
                                 user_attrs={"config": config, "history": history}))  # fmt: skip


def test_pruning_fidelity_says_whether_the_early_ranking_predicts_the_last():
    """Planted: with accumulation 1 the grid's ranking at epoch 5 is the ranking at epoch 20; with
    accumulation 4 it is reversed (the early leaders end last), so the pruner's evidence is wrong."""
    grid = optuna.create_study(direction="maximize")
    for i in range(6):
        _grid_run(grid, 1, {5: 0.2 + 0.01 * i, 10: 0.3, 20: 0.5 + 0.01 * i})
        _grid_run(grid, 4, {5: 0.2 + 0.01 * i, 10: 0.3, 20: 0.5 - 0.01 * i})
    searches = {}
    for value in (1, 4):
        search = optuna.create_study(direction="maximize")
        config = {"accumulation_steps": value, "epochs": 20}
        search.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, intermediate_values={5: 0.2, 20: 0.5},
                                      user_attrs={"config": config}))  # fmt: skip
        for stopped_at in (5, 5, 10):
            search.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={e: 0.1 for e in (5, 10) if e <= stopped_at},
                                          user_attrs={"config": config}))  # fmt: skip
        searches[value] = search
    fidelity = pruning_fidelity(runs_from_study(grid), searches)
    assert fidelity["final_epoch"] == 20 and fidelity["trials"] == 8
    assert fidelity["pruned_at"] == {"5": 4, "10": 2}
    at5 = {v: fidelity["rank_correlation"][v]["5"] for v in ("1", "4")}
    assert at5["1"] == {"spearman": pytest.approx(1.0), "n": 6}
    assert at5["4"]["spearman"] == pytest.approx(-1.0)
    assert math.isnan(fidelity["rank_correlation"]["1"]["10"]["spearman"])  # every run ties at epoch 10
    assert "undefined at epoch 10" in fidelity_paragraph(fidelity).text
    assert "-1.00 at epoch 5 (n = 6 runs)" in fidelity_paragraph(fidelity).text
    unpruned = {v: optuna.create_study(direction="maximize") for v in (1, 4)}
    assert pruning_fidelity(runs_from_study(grid), unpruned) is None  # nothing was pruned: nothing to judge


def test_the_replication_csv_holds_what_the_tuned_comparison_reads():
    """A reader re-derives the paired differences from replicate-runs.csv alone: each run's scores
    at every checkpoint epoch (a step-matched run at both of its lengths)."""
    study = _replicate(0.02)
    rows = run_rows(study)
    by = {(r["accumulation_steps"], r["seed"]): r for r in rows}
    assert {"test_accuracy_epoch10", "test_accuracy_epoch40", "val_accuracy_epoch40"} <= set(rows[0])
    assert by[(1, 1)]["test_accuracy_epoch40"] is None  # the accumulation-1 runs stop at 10 epochs
    seeds = sorted({r["seed"] for r in rows})
    for col, where, base_col in (("test_accuracy_epoch40", "matched_steps", "test_accuracy_epoch10"),
                                 ("test_accuracy_epoch10", "equal_epochs", "test_accuracy_epoch10")):  # fmt: skip
        from_csv = statistics.fmean(by[(4, s)][col] - by[(1, s)][base_col] for s in seeds)
        assert from_csv == pytest.approx(tuned(study)["difference"]["4"][where]["test_accuracy"].mean)
