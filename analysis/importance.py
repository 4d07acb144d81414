"""What was searched and what mattered: the searched parameters, their importance, edge warnings.

* ``searched_params``: every parameter the trials were sampled over, with its range;
* ``importance``: normalized importance of each parameter for each target (the objective(s), the
  generalization gap, the wall seconds), by fANOVA, PED-ANOVA and mean decrease impurity side by
  side, over completed trials; the forests are seeded, so the result is reproducible;
* ``edge_warnings``: a numeric parameter where most (and at least 2) of the top 10% of trials (at
  least 3) sit in the outer 10% of its range (log-aware): the optimum may lie outside it.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search_spaces import Param
from study import records

EDGE_FRACTION = 0.1  # a value in the outer 10% of its range (log-aware) is "at the edge"


def searched_params(study: optuna.Study) -> tuple[list[str], dict[str, Param]]:
    """Every parameter the trials were sampled over, in first-seen order, with its range."""
    spec: dict[str, Param] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            spec.setdefault(name, Param.from_distribution(name, dist))
    return list(spec), spec


# --- targets and importance ----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A quantity whose parameter importance is reported."""

    name: str
    value: Callable[[FrozenTrial], float | None]
    higher_is_better: bool


def targets(study: optuna.Study) -> list[Target]:
    """The objective(s), then the generalization gap and the wall seconds of each trial."""
    out = [Target("val_accuracy (objective)", lambda t: t.values[0], True)]
    if len(study.directions) > 1:
        out.append(Target("train_seconds (objective)", lambda t: t.values[1], False))
    out.append(Target("generalization_gap", lambda t: records.metric(t, "generalization_gap"), False))
    out.append(Target("wall_seconds", lambda t: records.metric(t, "wall_seconds"), False))
    return out


def evaluators(seed: int, n_trials: int) -> dict[str, optuna.importance.BaseImportanceEvaluator]:
    """Explicit evaluators. fANOVA and MDI are random forests, seeded. PED-ANOVA is deterministic;
    its top quantile holds at least 5 trials where the study is small (its documentation's advice),
    so on a 12-trial study it compares the best 5 with all 12 rather than the best 2."""
    quantile = min(0.5, max(0.1, 5 / max(n_trials, 1)))
    return {
        "fANOVA": optuna.importance.FanovaImportanceEvaluator(n_trees=64, max_depth=64, seed=seed),
        "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile),
        "MDI": optuna.importance.MeanDecreaseImpurityImportanceEvaluator(n_trees=64, max_depth=64, seed=seed),
    }


@dataclass
class Importance:
    target: str
    n_trials: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # evaluator -> param -> score
    notes: list[str] = field(default_factory=list)


def _target_view(trials: list[FrozenTrial], target: Target) -> optuna.Study:
    """An in-memory single-objective study holding the trials with a finite target, its value
    oriented so that lower is better (PED-ANOVA looks at the lowest values)."""
    view = optuna.create_study(direction="minimize")
    sign = -1.0 if target.higher_is_better else 1.0
    for t in trials:
        value = target.value(t)
        if value is not None and math.isfinite(value):
            view.add_trial(
                optuna.trial.create_trial(
                    params=t.params, distributions=t.distributions, value=sign * float(value)
                )
            )
    return view


def importance(study: optuna.Study, params: list[str], *, seed: int) -> list[Importance]:
    """Normalized importances of ``params`` for every target, by every evaluator."""
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if set(params) <= set(t.params)
    ]
    results = []
    for target in targets(study):
        view = _target_view(complete, target)
        n = len(view.trials)
        result = Importance(target.name, n)
        for name, evaluator in evaluators(seed, n).items():
            if n < 2:
                result.scores[name] = {p: math.nan for p in params}
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scores = optuna.importance.get_param_importances(view, evaluator=evaluator, params=params)
            result.scores[name] = {p: scores.get(p, 0.0) for p in params}
            result.notes += [f"{name}: {w.message}" for w in caught if "experimental" not in str(w.message)]
        if n < 2:
            result.notes.append(
                f"{n} completed trial(s) with a finite {target.name}: importance needs 2 or more"
            )
        results.append(result)
    return results


# --- edges ---------------------------------------------------------------------------------------
def top_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The top 10% (at least 3) completed trials by validation accuracy (the first objective)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    k = max(3, math.ceil(0.1 * len(complete)))
    return sorted(complete, key=lambda t: -t.values[0])[:k]


def edge_warnings(study: optuna.Study, params: list[str]) -> list[str]:
    """One line per numeric parameter where most (and at least 2) of the top trials sit in the
    outer 10% of its range: the optimum may lie outside the searched range."""
    best = top_trials(study)
    out = []
    for name in params:
        located = [t for t in best if name in t.params]
        if not located or isinstance(located[0].distributions[name], CategoricalDistribution):
            continue
        param = Param.from_distribution(name, located[0].distributions[name])
        edges = Counter(param.at_edge(t.params[name], fraction=EDGE_FRACTION) for t in located)
        for edge in ("low", "high"):
            if edges[edge] >= 2 and edges[edge] * 2 > len(located):
                values = ", ".join(f"{t.params[name]:.3g}" for t in located)
                out.append(
                    f"{name}: {edges[edge]} of the {len(located)} best trials sit at the {edge} edge of "
                    f"its range [{param.low:.3g}, {param.high:.3g}]{' (log)' if param.log else ''} "
                    f"(values {values}); the optimum may lie outside it: widen the range"
                )
    return out
