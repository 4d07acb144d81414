"""The run-level verdict (analysis.verdict) on synthetic grid studies whose answer is known."""

import math
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial
from scipy import stats

from analysis.verdict import (
    INCONCLUSIVE,
    NO_DIFFERENCE,
    OVERFITTING,
    UNDER_TRAINING,
    analyse,
    matched_epochs,
    recovery,
    runs_from_study,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
N = 4
BATCHES = (32, 64, 128)
EPOCHS = 15
POINTS = [3, 6, 15]
TRAIN_IMAGES = 2048  # a multiple of 128 x 4: every 4th accumulated epoch is step-matched


def learned(steps: float) -> float:
    """Train accuracy as a function of optimizer steps only: what under-training means."""
    return 0.95 - 0.6 * math.exp(-steps / 120)


def add_run(study, *, batch, accumulation, arm, seed, train, gap, images=TRAIN_IMAGES, epochs=EPOCHS):
    """One grid run whose per-epoch train accuracy and gap come from ``train(steps, epoch)`` and
    ``gap(steps, epoch)``."""
    per_epoch = images // (batch * accumulation)
    steps = [per_epoch * (e + 1) for e in range(epochs)]
    train_acc = [train(s, e + 1) for e, s in enumerate(steps)]
    gaps = [gap(s, e + 1) for e, s in enumerate(steps)]
    history = {
        "optimizer_steps": steps,
        "train_accuracy": train_acc,
        "val_accuracy": [t - g for t, g in zip(train_acc, gaps, strict=True)],
        "generalization_gap": gaps,
        "train_seconds": [0.01 * batch * accumulation * s for s in steps],  # time per image is constant
    }
    params = {"batch_size": batch, "accumulation_steps": accumulation, "lr_scaling": arm, "seed": seed}
    study.add_trial(
        create_trial(
            params=params,
            distributions={
                "batch_size": CategoricalDistribution(BATCHES),
                "accumulation_steps": CategoricalDistribution((1, N)),
                "lr_scaling": CategoricalDistribution(("none", "linear", "sqrt")),
                "seed": CategoricalDistribution(tuple(range(10))),
            },
            value=history["val_accuracy"][-1],
            user_attrs={"config": {"dataset": "fashion-mnist", **params}, "history": history},
        )
    )


def grid(kind: str, *, seeds: int = 3, arms=("none",)) -> optuna.Study:
    """A grid study whose accumulated runs behave as ``kind`` says (seeded noise of 0.003)."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "grid")
    study.set_user_attr("epoch_points", POINTS)
    study.set_user_attr("arms", list(arms))
    rng = random.Random(0)
    for seed in range(seeds):
        for batch in BATCHES:
            jitter = {e: rng.gauss(0, 0.003) for e in range(1, EPOCHS + 1)}

            def noisy(f, jitter=jitter):
                return lambda s, epoch: f(s, epoch) + jitter[epoch]

            add_run(study, batch=batch, accumulation=1, arm="none", seed=seed,
                    train=noisy(lambda s, e: learned(s)), gap=lambda s, e: 0.02)  # fmt: skip
            for arm in arms:
                if kind == "under-training":  # accuracy follows steps; scaled arms take bigger steps
                    factor = {"none": 1, "linear": N, "sqrt": math.sqrt(N)}[arm]
                    train = noisy(lambda s, e, f=factor: learned(s * f))
                    gap = lambda s, e: 0.02  # noqa: E731
                elif kind == "overfitting":  # same train accuracy per epoch, the gap grows
                    train = noisy(lambda s, e, b=batch: learned(e * TRAIN_IMAGES // b))
                    gap = lambda s, e: 0.02 + 0.006 * e  # noqa: E731
                else:  # no difference at all
                    train = noisy(lambda s, e, b=batch: learned(e * TRAIN_IMAGES // b))
                    gap = lambda s, e: 0.02  # noqa: E731
                add_run(study, batch=batch, accumulation=N, arm=arm, seed=seed, train=train, gap=gap)
    return study


def by_arm(study):
    return {a.arm: a for a in analyse(study)}


def test_under_training_is_recognised_and_lr_scaling_recovers_it():
    arms = by_arm(grid("under-training", arms=("none", "linear", "sqrt")))
    none = arms["none"]
    assert none.verdict == UNDER_TRAINING, none.reason
    assert none.seeds == [0, 1, 2] and none.at_epochs[-1]["val_accuracy"]["n"] == 3  # n = runs (seeds)
    assert none.at_epochs[-1]["train_accuracy"]["high"] < -0.01  # fewer steps: lower accuracy per epoch
    # exactly matched: accumulated epoch 12 has the steps of baseline epoch 3
    assert none.at_steps[0]["accumulated_epoch"] == [12] and none.at_steps[0]["baseline_epochs"] == [3]
    assert abs(none.at_steps[0]["val_accuracy"]["mean"]) < 0.005
    lines = recovery(list(arms.values()))
    assert any(
        line.startswith("lr scaled linear") and "recovered" in line and "not" not in line for line in lines
    )


def test_overfitting_is_recognised():
    none = by_arm(grid("overfitting"))["none"]
    assert none.verdict == OVERFITTING, none.reason
    assert none.at_epochs[-1]["generalization_gap"]["low"] > 0
    assert none.at_steps[0]["generalization_gap"]["low"] > 0  # still larger at matched steps


def test_no_difference_is_recognised():
    none = by_arm(grid("none"))["none"]
    assert none.verdict == NO_DIFFERENCE, none.reason


def test_one_seed_is_inconclusive_whatever_the_effect():
    none = by_arm(grid("under-training", seeds=1))["none"]
    assert none.verdict == INCONCLUSIVE and "no interval" in none.reason
    assert math.isnan(none.at_epochs[-1]["val_accuracy"]["low"])


def test_the_accumulation_1_runs_are_shared_by_every_arm():
    study = grid("under-training", seeds=2, arms=("none", "linear", "sqrt"))
    runs = runs_from_study(study)
    assert sum(r.accumulation_steps == 1 for r in runs) == 2 * len(BATCHES)  # run once ...
    analyses = analyse(study)
    assert [a.arm for a in analyses] == ["none", "linear", "sqrt"]  # ... and compared in three arms
    for a in analyses:
        pairs = a.at_epochs[-1]["optimizer_steps"]
        assert len(pairs) == 2 * len(BATCHES)  # every (batch, seed) found its baseline


def test_steps_are_compared_only_where_they_match_exactly():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("epoch_points", [1, 2, 5])
    for seed in range(3):
        # 1000 images: batch 32 makes 31 steps per epoch, accumulation 4 makes 7: never equal
        add_run(study, batch=32, accumulation=1, arm="none", seed=seed, images=1000, epochs=5,
                train=lambda s, e: learned(s), gap=lambda s, e: 0.02)  # fmt: skip
        add_run(study, batch=32, accumulation=4, arm="none", seed=seed, images=1000, epochs=5,
                train=lambda s, e: learned(s), gap=lambda s, e: 0.02)  # fmt: skip
    (a,) = analyse(study)
    assert a.at_steps == []  # no nearest-epoch stand-in
    assert [u["epoch"] for u in a.unmatched] == [1, 2, 5]
    assert a.unmatched[-1]["steps (baseline, accumulated)"] == [(155, 35)]
    runs = runs_from_study(study)
    assert matched_epochs(runs[0], runs[1]) == []
    assert "no epoch of the accumulated runs has exactly the step count" in a.reason


def test_training_time_ratios_per_epoch_and_per_step():
    none = by_arm(grid("none"))["none"]
    # synthetic time is constant per image: same seconds per epoch, N times more per optimizer step
    assert none.time["seconds_per_epoch"]["mean"] == pytest.approx(1.0)
    assert none.time["seconds_per_step"]["mean"] == pytest.approx(N)


def test_pseudo_replication_would_declare_what_the_runs_do_not_show():
    """Two seeds disagree on the size of the effect (+0.002 and +0.030); within each seed the nine
    (micro-batch, epoch point) differences agree. Pooling them as 18 observations finds a
    'significant' effect; the run-level test (n = 2 seeds) does not."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("epoch_points", POINTS)
    shift = {0: 0.002, 1: 0.030}  # the accumulated run's gap offset in each seed
    for seed in (0, 1):
        for batch in BATCHES:
            add_run(study, batch=batch, accumulation=1, arm="none", seed=seed,
                    train=lambda s, e: learned(s), gap=lambda s, e: 0.02)  # fmt: skip
            add_run(study, batch=batch, accumulation=N, arm="none", seed=seed,
                    train=lambda s, e: learned(s), gap=lambda s, e, d=shift[seed]: 0.02 + d + 0.001 * e)  # fmt: skip
    (a,) = analyse(study)
    runs = runs_from_study(study)
    base = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == 1}
    naive = [
        r.at(e, "generalization_gap") - base[(r.batch_size, r.seed)].at(e, "generalization_gap")
        for r in runs
        if r.accumulation_steps == N
        for e in POINTS
    ]
    assert len(naive) == 18 and stats.ttest_1samp(naive, 0.0).pvalue < 0.05  # pseudo-replication
    gap = a.at_epochs[-1]["generalization_gap"]
    assert gap["n"] == 2 and gap["low"] < 0 < gap["high"]  # the runs do not show it
    assert a.verdict != OVERFITTING
