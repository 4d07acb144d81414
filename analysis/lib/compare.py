"""The search against the paper's grid: best validation accuracy and compute spent by each study.

A grid study (``records.GRID``, ``study.grid``) records every run whole at its epoch points, so
its best is taken over every epoch point of every run; any other study's best is its best trial's
value. Compute spent counts every finished trial, pruned and failed ones included: epochs trained
and wall seconds. ``best_so_far`` is the search's best validation accuracy against cumulative
compute (drawn by ``analysis.lib.figures.comparison_figure``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.lib import records


@dataclass
class StudySummary:
    name: str
    dataset: str
    trials: int
    best_val_accuracy: float
    best_test_accuracy: float
    best_where: str  # "trial 7" or "trial 2 at epoch 20"
    epochs_trained: int
    wall_seconds: float


def trial_seconds(trial: FrozenTrial) -> float:
    """Wall seconds of a trial (its duration when it recorded no metrics, as a failed one may)."""
    seconds = records.metric(trial, "wall_seconds")
    if seconds is None and trial.duration is not None:
        seconds = trial.duration.total_seconds()
    return float(seconds or 0.0)


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))


def _dataset(study: optuna.Study) -> str:
    for t in study.get_trials(deepcopy=False):
        if (config := records.config(t)) is not None:
            return config["dataset"]
    return str(study.user_attrs.get(records.DATASET, "?"))


def summarize(study: optuna.Study) -> StudySummary:
    """Best validation accuracy (a grid: over every recorded epoch point) and compute spent."""
    trials = _finished(study)
    designed = records.kind(study) == records.GRID
    best = (-math.inf, math.nan, "none")
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        if designed:
            for epoch, m in records.checkpoints(t).items():
                if m["val_accuracy"] > best[0]:
                    best = (
                        m["val_accuracy"],
                        m.get("test_accuracy", math.nan),
                        f"trial {t.number} at epoch {epoch}",
                    )
        elif t.values and t.values[0] > best[0]:
            test = records.metric(t, "test_accuracy")
            best = (t.values[0], math.nan if test is None else test, f"trial {t.number}")
    return StudySummary(
        name=study.study_name,
        dataset=_dataset(study),
        trials=len(trials),
        best_val_accuracy=best[0] if best[0] > -math.inf else math.nan,
        best_test_accuracy=best[1],
        best_where=best[2],
        epochs_trained=sum(records.epochs_trained(t) for t in trials),
        wall_seconds=sum(trial_seconds(t) for t in trials),
    )


def best_so_far(study: optuna.Study) -> list[tuple[float, int, float]]:
    """(cumulative wall seconds, cumulative epochs, best validation accuracy so far) per trial."""
    curve, seconds, epochs, best = [], 0.0, 0, -math.inf
    for t in _finished(study):
        seconds += trial_seconds(t)
        epochs += records.epochs_trained(t)
        if t.state == TrialState.COMPLETE and t.values:  # values[0]: validation accuracy
            best = max(best, t.values[0])
        curve.append((seconds, epochs, best if best > -math.inf else math.nan))
    return curve


def comparison(grid: StudySummary, search: StudySummary) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, one-line verdict) of the grid against the search."""
    header = [
        "",
        "study",
        "trials",
        "best val acc",
        "test acc there",
        "where",
        "epochs trained",
        "wall seconds",
    ]
    rows = [
        [role, s.name, str(s.trials), f"{s.best_val_accuracy:.4f}", f"{s.best_test_accuracy:.4f}", s.best_where,
         str(s.epochs_trained), f"{s.wall_seconds:.1f}"]
        for role, s in (("grid", grid), ("search", search))
    ]  # fmt: skip
    diff = search.best_val_accuracy - grid.best_val_accuracy
    ratio = search.wall_seconds / grid.wall_seconds if grid.wall_seconds else math.nan
    verdict = f"search - grid best validation accuracy: {diff:+.4f}; search compute / grid compute: {ratio:.2f}x (wall seconds)"
    return header, rows, verdict
