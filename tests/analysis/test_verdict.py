"""The verdict (analysis.lib.overfitting) on synthetic grid studies whose answer is planted, and on real runs."""

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial
from scipy import stats

from analysis.lib.overfitting import (
    BOTH,
    INCONCLUSIVE,
    NEITHER,
    OVERFITTING,
    RUNNING_LOSS,
    UNDER_TRAINING,
    Predictions,
    Run,
    analyse,
    at_minimum_row,
    decide,
    interpolate_at_loss,
    matched_epochs,
    on_one_schedule,
    pair_progress,
    reason,
    recovery,
    rises,
    runs_from_study,
    twins,
)
from tests.analysis.synthetic import BATCHES, EPOCHS, POINTS, N, grid

optuna.logging.set_verbosity(optuna.logging.WARNING)


def unscaled(study):
    return next(a for a in analyse(study) if a.arm == "none")


@pytest.mark.parametrize(
    ("kind", "verdict"),
    [("under-training", UNDER_TRAINING), ("overfitting", OVERFITTING), ("both", BOTH), ("neither", NEITHER)],
)
def test_the_planted_answer_is_found(kind, verdict):
    a = unscaled(grid(kind))
    assert a.verdict == verdict, reason(a)
    assert a.seeds == [0, 1, 2] and all(r.effects["val_loss"].n == 3 for r in a.at_train_loss)  # n = seeds


def test_under_training_lies_on_the_baselines_curve_reached_later():
    a = unscaled(grid("under-training"))
    p = a.predictions
    assert p.behind_at_matched_epochs and p.minimum_later and p.same_curve_at_equal_train_loss
    assert not p.overfitting()
    # matched epochs measure progress: the gap is smaller, because the accumulated run is behind
    assert a.at_epochs[0].effects["generalization_gap"].high < 0
    best = a.at_minimum.effects
    assert best["epoch_ratio"].mean == pytest.approx(N, rel=0.05)  # N times the epochs ...
    assert best["steps_ratio"].mean == pytest.approx(1.0, rel=0.05)  # ... the same optimizer steps
    # the step-matched runs end at their baselines' steps: the last matched-steps row is the end
    assert (
        a.at_steps[-1].where
        == f"matched steps: accumulated epoch {N * POINTS[-1]} = baseline epoch {POINTS[-1]}"
    )


def test_overfitting_at_equal_training_loss_is_not_hidden_by_matched_epochs():
    a = unscaled(grid("overfitting"))
    assert a.predictions.worse_val_loss_at_equal_train_loss and a.predictions.worse_best_val_loss
    assert not a.predictions.behind_at_matched_epochs
    assert a.at_train_loss[-1].effects["val_loss"].mean == pytest.approx(0.15, abs=0.02)  # the planted shift


def test_two_seeds_of_noise_are_inconclusive_and_say_what_could_have_been_detected():
    a = unscaled(grid("noise", seeds=2))
    assert a.verdict == INCONCLUSIVE
    assert a.detectable and all(h > 0.05 for h in a.detectable.values())
    assert "could not have been detected" in reason(a)


def test_one_seed_is_inconclusive_whatever_the_effect():
    a = unscaled(grid("overfitting", seeds=1))
    assert a.verdict == INCONCLUSIVE and "one seed: no interval" in reason(a)


def _run(epochs, losses, values):
    return Run(
        0, "cifar10", 32, 1, "none", 0, {"epoch": epochs, "train_eval_loss": losses, "val_loss": values}
    )


def test_interpolation_at_a_training_loss_never_extrapolates():
    run = _run([1, 2, 3], [2.0, 1.0, 0.5], [3.0, 2.0, 1.0])
    assert interpolate_at_loss(run, 1.0, "val_loss") == pytest.approx(2.0)
    # linear in log loss: sqrt(2 x 1) lies halfway between the first two epochs
    assert interpolate_at_loss(run, math.sqrt(2.0), "val_loss") == pytest.approx(2.5)
    assert interpolate_at_loss(run, 2.5, "val_loss") is None  # above the first evaluated loss
    assert interpolate_at_loss(run, 0.4, "val_loss") is None  # below the last
    # a curve that comes back up is read where it first reached the loss
    bumpy = _run([1, 2, 3, 4], [2.0, 1.0, 1.5, 0.5], [3.0, 2.0, 2.5, 1.0])
    assert interpolate_at_loss(bumpy, 1.2, "val_loss") == pytest.approx(
        3.0 + (math.log(2.0) - math.log(1.2)) / (math.log(2.0) - math.log(1.0)) * (2.0 - 3.0)
    )


def test_a_run_whose_minimum_lies_beyond_the_common_progress_has_not_risen_yet():
    # the baseline trains further: its minimum (1.0) comes at training loss 0.2, after the
    # accumulated run's last point (0.5), where the baseline's validation loss is still falling
    base = _run([1, 2, 3, 4, 5], [2.0, 1.0, 0.5, 0.3, 0.2], [2.0, 1.5, 1.2, 1.1, 1.0])
    base.history["val_loss"].append(1.3)  # it rises after its minimum, beyond the common point
    base.history["epoch"].append(6)
    base.history["train_eval_loss"].append(0.1)
    acc = _run([1, 2, 3], [1.8, 0.9, 0.5], [1.9, 1.2, 1.4])  # minimum 1.2, then 1.4 at 0.5
    base_rise, acc_rise = rises(base, acc)
    assert base_rise == pytest.approx(1.0)  # still falling at training loss 0.5: no rise yet
    assert acc_rise == pytest.approx(1.4 / 1.2)


def _curve(epochs, accumulation):
    """One training curve read at ``epochs``: validation loss lowest (1.0) at epoch 5, between
    evaluations every 4 epochs."""
    return Run(accumulation, "cifar10", 32, accumulation, "none", 0, {
        "epoch": list(epochs), "train_eval_loss": [2.0 / e for e in epochs],
        "val_loss": [1.0 + 0.05 * abs(e - 5) for e in epochs], "val_accuracy": [0.5 - 0.01 * abs(e - 5) for e in epochs],
        "optimizer_steps": [10 * e for e in epochs]})  # fmt: skip


def test_a_run_evaluated_less_often_is_compared_at_the_epochs_both_evaluated():
    base = _curve(range(1, 13), 1)  # every epoch, 12 epochs: minimum 1.0 at epoch 5
    acc = _curve(range(4, 25, 4), 4)  # the same curve every 4 epochs, step-matched to 24: 1.05
    b, a = on_one_schedule(base, acc)
    assert b.epochs == [4, 8, 12] and a.epochs == [4, 8, 12, 16, 20, 24]
    row = at_minimum_row({(32, 0): (base, acc)})
    # the same curve: no worse minimum, no other epoch; read on its own schedules it would be +0.05
    assert row.by_batch[32]["val_loss"].mean == pytest.approx(0.0)
    assert row.by_batch[32]["epoch_ratio"].mean == pytest.approx(1.0)


def test_a_pair_is_compared_on_one_training_loss_measure():
    eval_mode = _run([1, 2], [2.0, 1.0], [2.0, 1.5])
    eval_mode.history["train_loss"] = [2.2, 1.2]
    running_only = Run(1, "cifar10", 32, 4, "none", 0,
                       {"epoch": [1, 2], "train_loss": [2.1, 1.1], "val_loss": [2.0, 1.6]})  # fmt: skip
    assert pair_progress(eval_mode, running_only) == RUNNING_LOSS == pair_progress(running_only, eval_mode)
    assert pair_progress(eval_mode, eval_mode) == "train_eval_loss"


def _predictions(**changes):
    same = dict(worse_val_loss_at_equal_train_loss=False, worse_best_val_loss=False, larger_rise_after_minimum=False,
                behind_at_matched_epochs=False, minimum_later=False, same_curve_at_equal_train_loss=True,
                same_best_val_loss=True, same_rise_after_minimum=True, same_minimum_epoch=True,
                same_accuracy_at_matched_epochs=True)  # fmt: skip
    return Predictions(**{**same, **changes})


def test_neither_needs_every_comparison_inside_its_margin():
    assert decide(_predictions(), n_seeds=3) == NEITHER
    for name in ("same_best_val_loss", "same_rise_after_minimum", "same_minimum_epoch", "same_curve_at_equal_train_loss"):
        assert decide(_predictions(**{name: None}), n_seeds=3) == INCONCLUSIVE, name  # not measured
        assert decide(_predictions(**{name: False}), n_seeds=3) == INCONCLUSIVE, name  # too wide to tell
    assert decide(_predictions(minimum_later=True, same_minimum_epoch=False), n_seeds=3) == INCONCLUSIVE


def test_the_smallest_detectable_effect_is_never_below_the_smallest_that_counts():
    a = unscaled(grid("neither", seeds=5))
    assert a.detectable["best val_loss"] >= 0.02 and a.detectable["rise after the minimum"] >= 0.05


def test_pairs_outside_the_baselines_range_are_left_out_and_counted():
    study = grid("under-training")
    a = unscaled(study)
    # the baseline of micro-batch 128 never gets as far as its step-matched accumulated run
    for row in a.at_train_loss:
        assert row.pairs + row.left_out <= 3 * len(BATCHES)
    assert any(row.left_out for row in a.at_train_loss) or all(row.pairs == 9 for row in a.at_train_loss)


def test_scaling_the_learning_rate_recovers_an_under_training_loss():
    analyses = analyse(grid("under-training", arms=("none", "linear")))
    (line,) = recovery(analyses)
    assert line.startswith("lr scaled linear (x4)") and ": recovered" in line
    linear = next(a for a in analyses if a.arm == "linear")
    assert not linear.predictions.behind_at_matched_epochs  # linear scaling keeps up per epoch


def test_the_accumulation_1_runs_are_shared_by_every_arm():
    study = grid("under-training", seeds=2, arms=("none", "linear", "sqrt"))
    runs = runs_from_study(study)
    assert sum(r.accumulation_steps == 1 and r.batch_size in BATCHES for r in runs) == 2 * len(BATCHES)
    analyses = analyse(study)
    assert [a.arm for a in analyses] == ["none", "linear", "sqrt"]
    assert all(a.at_epochs[-1].pairs == 2 * len(BATCHES) for a in analyses)


def test_runs_read_up_to_an_epoch_show_what_shorter_runs_would_have():
    """``stop_at``: the planted under-trained 32 x 4 run reaches its minimum at about epoch 79 of
    its 160 (step-matched); read up to the equal-epoch length, every accumulated run is still
    falling, so no pair is compared at its best epoch; the epoch points after it are dropped, and
    a cut run is the beginning of the run it was cut from."""
    study = grid("under-training")
    full, cut = unscaled(study), next(a for a in analyse(study, stop_at=EPOCHS) if a.arm == "none")
    assert full.at_minimum.pairs == 5 and cut.at_minimum.pairs == 0
    last = [a.at_train_loss[-1].where.rsplit(" ", 1)[1] for a in (full, cut)]
    assert last == ["160", str(EPOCHS)]
    assert next(a for a in analyse(study, stop_at=16) if a.arm == "none").epoch_points == [8, 16]
    runs = {r.trial: r for r in runs_from_study(study)}
    for r in runs_from_study(study, stop_at=EPOCHS):
        whole = runs[r.trial]
        assert r.last_epoch == min(whole.last_epoch, EPOCHS)
        assert all(r.series(k) == whole.series(k)[: len(r.epochs)] for k in ("val_loss", "train_seconds"))


def test_training_time_ratios_per_epoch_and_per_step():
    a = unscaled(grid("neither"))
    # synthetic time is constant per image: same seconds per epoch, N times more per optimizer step
    assert a.time["seconds_per_epoch"].mean == pytest.approx(1.0)
    assert a.time["seconds_per_step"].mean == pytest.approx(N)


def test_steps_are_compared_only_where_they_match_exactly():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("epoch_points", [1, 2, 5])
    for seed in range(3):
        for accumulation in (1, 4):  # 1000 images: 31 steps per epoch at batch 32, 7 with accumulation
            steps = [(1000 // (32 * accumulation)) * e for e in range(1, 6)]
            history = {"epoch": [1, 2, 3, 4, 5], "optimizer_steps": steps, "train_eval_loss": [1.0] * 5,
                       "train_loss": [1.0] * 5, "val_loss": [1.0] * 5, "train_accuracy": [0.5] * 5,
                       "val_accuracy": [0.5] * 5, "generalization_gap": [0.0] * 5, "train_seconds": steps}  # fmt: skip
            params = {
                "batch_size": 32,
                "accumulation_steps": accumulation,
                "lr_scaling": "none",
                "seed": seed,
            }
            dists = {k: CategoricalDistribution((v,)) for k, v in params.items()}
            study.add_trial(create_trial(params=params, distributions=dists, value=0.5,
                                         user_attrs={"config": {"dataset": "x", **params}, "history": history}))  # fmt: skip
    (a,) = analyse(study)
    assert a.at_steps == [] and a.unmatched == [1, 2, 5]  # no nearest-epoch stand-in
    runs = runs_from_study(study)
    assert matched_epochs(runs[0], runs[1]) == []


def test_pseudo_replication_would_declare_what_the_runs_do_not_show():
    """Two seeds disagree on the size of the effect (+0.05 and +0.25 on the validation loss at equal
    training loss); within each seed the micro-batches and epoch points agree. Pooling the
    (micro-batch, epoch point) differences as independent observations finds a 'significant'
    effect; the run-level test (n = 2 seeds) does not."""
    study = grid("neither", seeds=2, offsets={0: 0.05, 1: 0.25})
    runs = runs_from_study(study)
    base = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == 1}
    naive = []
    for r in runs:
        for epoch in POINTS if r.accumulation_steps == N else ():
            at = interpolate_at_loss(base[(r.batch_size, r.seed)], r.at(epoch, r.progress), "val_loss")
            if at is not None:
                naive.append(r.at(epoch, "val_loss") - at)
    assert len(naive) >= 8 and stats.ttest_1samp(naive, 0.0).pvalue < 0.05  # pseudo-replication
    a = unscaled(study)
    for row in a.at_train_loss:
        effect = row.effects["val_loss"]
        assert effect.n == 2 and effect.low < 0 < effect.high  # the runs do not show it
    assert a.verdict != OVERFITTING


def test_twins_of_a_synthetic_grid_are_identical_and_cost_the_same():
    table = twins(runs_from_study(grid("under-training")))
    assert [(t.micro_batch, t.accumulation_steps) for t in table] == [(32, 4), (64, 4), (128, 4)]
    for t in table:
        assert t.max_train_loss_difference == 0 and t.identical_through_epoch == 40
        assert t.seeds == [0, 1, 2] and t.seconds_per_epoch.mean == pytest.approx(1.0)


def test_a_pause_in_part_of_a_run_does_not_count_in_its_time_ratio():
    """Seconds per epoch are a run's median over its evaluation intervals: a run stopped for 600 s
    in one of its 8 intervals (SIGSTOP while the test suite ran) costs what its twin costs, where
    its total seconds would make it 8.5 times dearer; a run slower throughout still counts."""
    epochs = [5 * k for k in range(1, 9)]

    def run(trial, batch, n, seconds):
        history = {"epoch": epochs, "optimizer_steps": [20 * e for e in epochs], "train_loss": [1.0] * 8,
                   "val_accuracy": [0.5] * 8, "val_loss": [1.5] * 8, "train_seconds": seconds}  # fmt: skip
        return Run(trial, "cifar10", batch, n, "none", 0, history)

    steady = [2.0 * e for e in epochs]
    paused = [s + (600.0 if e >= 20 else 0.0) for s, e in zip(steady, epochs, strict=True)]
    (pair,) = twins([run(1, 32, 4, paused), run(2, 128, 1, steady)])
    assert pair.seconds_per_epoch.mean == pytest.approx(1.0)
    (pair,) = twins([run(1, 32, 4, [2 * s for s in steady]), run(2, 128, 1, steady)])
    assert pair.seconds_per_epoch.mean == pytest.approx(2.0)


def test_twins_on_different_evaluation_schedules_compare_their_eval_mode_loss():
    """A step-matched 32 x 4 run evaluates every 20 epochs, its twin 128 x 1 every 5: the running
    train-mode loss averages over different windows (on CIFAR-10, 1.886 against 1.742 at epoch 20)
    while the parameters, and so the eval-mode loss, are the same."""

    def run(trial, batch, n, epochs, running):
        history = {"epoch": epochs, "optimizer_steps": [20 * e for e in epochs], "train_loss": running,
                   "train_eval_loss": [2.0 / e for e in epochs], "val_accuracy": [0.01 * e for e in epochs],
                   "val_loss": [1.5] * len(epochs), "train_seconds": [2.0 * e for e in epochs]}  # fmt: skip
        return Run(trial, "cifar10", batch, n, "none", 0, history)

    step_matched = run(1, 32, 4, [20, 40], [1.886, 1.619])
    twin = run(2, 128, 1, [5, 10, 15, 20, 25, 30, 35, 40], [2.1, 2.0, 1.9, 1.742, 1.7, 1.6, 1.58, 1.54])
    (pair,) = twins([step_matched, twin])
    assert pair.common_epochs == 2 and pair.max_train_loss_difference == 0
    assert pair.identical_through_epoch == 40


def test_twins_of_a_real_grid_are_the_same_update(small_studies):
    """32 x 4 and its twin 128 x 1, really trained (the quick digits grid of conftest): the same
    update, so their training losses agree to float round-off through every epoch."""
    study = optuna.load_study(study_name="g", storage=small_studies)
    (pair, *_) = twins(runs_from_study(study))
    assert (pair.micro_batch, pair.accumulation_steps) == (32, 4) and pair.common_epochs == 5
    assert pair.max_train_loss_difference < 1e-4 and pair.identical_through_epoch == 5
    assert pair.max_val_accuracy_difference < 0.01
