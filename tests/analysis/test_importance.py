"""Parameter importance a reader can trust: bootstrap intervals, minimum evidence, the
pruned trials' evidence at a rung, and the agreement line; on synthetic studies with a known answer."""

import logging
import random
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.lib.importance import importance, min_trials, rung, standing_out
from tests.conftest import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTRIBUTIONS = {
    "signal": FloatDistribution(0.0, 1.0),
    "noise_a": FloatDistribution(0.0, 1.0),
    "noise_b": FloatDistribution(1e-4, 1e-1, log=True),
    "noise_c": CategoricalDistribution((1, 2, 4, 8)),
}
PARAMS = list(DISTRIBUTIONS)


def synthetic(n_complete: int, *, pruned_at: tuple[int, ...] = (), storage=None, seed=0) -> optuna.Study:
    """A study whose objective is 0.5 + 0.4 x signal (plus noise of 0.01); the other parameters do
    nothing. Completed trials report epochs 1, 3 and 9; a pruned trial stops at its epoch in
    ``pruned_at``. generalization_gap is pure noise; wall_seconds depends on noise_c only."""
    rng = random.Random(seed)
    study = optuna.create_study(storage=storage, study_name="syn", direction="maximize")

    def draw():
        params = {name: rng.uniform(d.low, d.high) for name, d in DISTRIBUTIONS.items() if name != "noise_c"}
        params["noise_c"] = rng.choice((1, 2, 4, 8))
        value = 0.5 + 0.4 * params["signal"] + rng.gauss(0, 0.01)
        return params, value

    for last_epoch in [9] * n_complete + list(pruned_at):
        params, value = draw()
        curve = {e: value - 0.1 / e for e in (1, 3, 9) if e <= last_epoch}
        complete = last_epoch == 9
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                params=params,
                distributions=DISTRIBUTIONS,
                value=value if complete else None,
                intermediate_values=curve,
                user_attrs={
                    "generalization_gap": rng.gauss(0.02, 0.01),
                    "wall_seconds": 10.0 * params["noise_c"],
                }
                if complete
                else {},
            )
        )
    return study


def by_target(results):
    return {r.target.split(" ")[0] if " at epoch " not in r.target else "rung": r for r in results}


def test_the_one_parameter_that_matters_stands_out_under_every_evaluator():
    results = by_target(importance(synthetic(40), PARAMS, seed=0))
    objective = results["val_accuracy"]
    assert objective.shown and objective.n_trials == 40
    for evaluator, scores in objective.scores.items():
        others = max(scores[p].high for p in PARAMS if p != "signal")
        assert scores["signal"].low > others, (evaluator, scores)
        assert all(0 <= s.low <= s.median <= s.high <= 1 for s in scores.values())
    assert objective.standing_out() == ["signal"]
    assert objective.agreement().startswith("signal stands out: its interval lies above")
    # the gap depends on nothing
    assert results["generalization_gap"].agreement().startswith("No parameter stands out")
    # wall_seconds is 10 x noise_c: the forests single it out; PED-ANOVA, which compares the
    # top-quantile trials with all, cannot split ties of a 4-valued target, so the line does not
    # claim what one evaluator does not show
    wall = results["wall_seconds"]
    assert standing_out(wall.scores["fANOVA"]) == standing_out(wall.scores["MDI"]) == ["noise_c"]
    assert wall.standing_out() == [] or wall.standing_out() == ["noise_c"]


def test_bootstrap_is_seeded():
    study = synthetic(20)
    first, again = (
        importance(study, PARAMS, seed=3, resamples=10),
        importance(study, PARAMS, seed=3, resamples=10),
    )
    assert [r.scores for r in first] == [r.scores for r in again]
    other = importance(study, PARAMS, seed=4, resamples=10)
    assert [r.scores for r in other] != [r.scores for r in first]


def test_the_bootstrap_does_not_log_a_line_per_resample():
    study = synthetic(12)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    optuna.logging.set_verbosity(optuna.logging.INFO)  # as in a command that never lowered it
    try:
        importance(study, PARAMS, seed=0, resamples=5)
        optuna.create_study()  # the handler sees Optuna's INFO lines
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logger.removeHandler(handler)
    assert len(lines) == 1 and "created in memory" in lines[0], lines


def test_too_few_trials_are_declined_with_the_reason():
    assert min_trials(len(PARAMS)) == 10 and min_trials(6) == 12
    results = importance(synthetic(4), PARAMS, seed=0)
    for result in results:
        assert not result.shown and not result.scores
        assert result.declined.startswith("4 trial(s) with a finite")
        assert "needs at least 10 (2 per searched parameter, at least 10)" in result.declined


def test_the_rung_importance_uses_the_pruned_trials():
    # 16 complete (epochs 1, 3, 9), 12 pruned after epoch 3, 12 after epoch 1: 28 of 40 reach epoch 3
    study = synthetic(16, pruned_at=(3,) * 12 + (1,) * 12)
    assert rung(study.trials) == 3
    # 6 complete, 5 pruned after epoch 3, 5 after epoch 1: epoch 3 is the rung (11 of 16), but only
    # epoch 1 has the 12 trials importance needs for 6 parameters: the rung shown is epoch 1
    few = synthetic(6, pruned_at=(3,) * 5 + (1,) * 5)
    assert rung(few.trials) == 3 and rung(few.trials, at_least=12) == 1 and rung(few.trials, at_least=17) == 3
    results = by_target(importance(study, PARAMS, seed=0, resamples=10))
    at_rung = results["rung"]
    assert at_rung.target == "val_accuracy at epoch 3 (every trial that reached it)"
    assert at_rung.n_trials == 28 and at_rung.n_pruned == 12 and at_rung.shown
    assert results["val_accuracy"].n_trials == 16 and results["val_accuracy"].n_pruned == 0
    assert "signal" in at_rung.standing_out()


def test_constant_and_duplicate_targets_are_named_not_ranked():
    # a study without pruning: its wall seconds are all equal, its gap is minus the objective (the
    # same values once both are oriented lower-is-better), and its rung values are the objective's
    same = optuna.create_study(direction="maximize")
    for t in synthetic(12).trials:
        same.add_trial(
            create_trial(
                params=t.params,
                distributions=t.distributions,
                value=t.value,
                intermediate_values={9: t.value},
                user_attrs={"generalization_gap": -t.value, "wall_seconds": 30.0},
            )
        )
    results = by_target(importance(same, PARAMS, seed=0, resamples=5))
    assert results["val_accuracy"].shown
    assert results["generalization_gap"].declined == (
        "generalization_gap is identical to val_accuracy (objective) on the same 12 trials: see that table"
    )
    assert (
        results["wall_seconds"].declined
        == "wall_seconds is constant on its 12 trials: there is nothing to rank"
    )
    assert results["rung"].declined.startswith("no pruned trial reached that epoch: the 12 trials there")


def test_report_shows_intervals_and_the_agreement_line_or_declines(tmp_path):
    url = f"sqlite:///{tmp_path / 'i.db'}"
    synthetic(14, pruned_at=(3,) * 10 + (1,) * 16, storage=url)  # 24 of 40 reach epoch 3
    out = tmp_path / "r"
    proc = cli("analysis.report", "--study", "syn", "--storage", url, "--out", str(out), "--quiet", "--no-interactive",
               "--bootstrap", "10")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    markdown = (out / "report.md").read_text()
    assert "median and 90% interval over 10 bootstrap resamples" in markdown
    assert re.search(r"\| signal \| (\d\.\d\d \[\d\.\d\d, \d\.\d\d\] \|\s*){3}", markdown)
    assert (
        "signal stands out: its interval lies above every other parameter's under all three evaluators."
        in markdown
    )
    assert (
        "### Target: val_accuracy at epoch 3 (every trial that reached it) (24 trials, 10 of them pruned)"
        in markdown
    )
    assert (out / "figures" / "importance.png").is_file()

    small = f"sqlite:///{tmp_path / 's.db'}"
    synthetic(4, storage=small)
    proc = cli("analysis.report", "--study", "syn", "--storage", small, "--out", str(tmp_path / "s"), "--quiet",
               "--no-interactive")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    markdown = (tmp_path / "s" / "report.md").read_text()
    assert markdown.count("Not shown: 4 trial(s) with a finite") == 4  # objective, gap, wall seconds, rung
    assert (
        "| parameter | fANOVA" not in markdown
        and not (tmp_path / "s" / "figures" / "importance.png").exists()
    )


@pytest.mark.parametrize("value", ["1", "x"])
def test_bad_bootstrap_is_one_line_exit_2(tmp_path, value):
    url = f"sqlite:///{tmp_path / 'i.db'}"
    synthetic(4, storage=url)
    proc = cli(
        "analysis.report",
        "--study",
        "syn",
        "--storage",
        url,
        "--out",
        str(tmp_path / "r"),
        "--bootstrap",
        value,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--bootstrap" in proc.stderr


def test_a_pruned_search_too_small_is_told_how_many_trials_it_would_need():
    # 6 complete and 18 pruned: a quarter of the finished trials complete, so 10 completed ones take
    # about 40 trials at that rate
    results = importance(synthetic(6, pruned_at=(1,) * 18), PARAMS, seed=0, resamples=5)
    objective = results[0]
    assert not objective.shown
    assert objective.declined.endswith("at this study's rate (6 of 24 finished trials) that takes about 40 trials")
    assert "that takes" not in importance(synthetic(4), PARAMS, seed=0)[0].declined  # nothing pruned: no rate to tell
