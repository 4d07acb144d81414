"""What was searched and what mattered: the searched parameters, their importance, edge warnings.

* ``searched_params``: every parameter the trials were sampled over, with its range;
* ``importance``: normalized importance of each parameter for each target (the objective(s), the
  generalization gap, the wall seconds over completed trials; the objective at a Hyperband rung
  over every trial that reached it, pruned or not), by fANOVA, PED-ANOVA and mean decrease impurity
  side by side, each as the median and 90% interval of a seeded bootstrap over trials, with a
  one-line reading of what stands out under all three; declined, with the reason, below
  ``min_trials`` trials or for a constant or duplicate target;
* ``edge_warnings``: a numeric parameter where most (and at least 2) of the top 10% of trials (at
  least 3) sit in the outer 10% of its range (log-aware): the optimum may lie outside it.
"""

from __future__ import annotations

import math
import random
import statistics
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from analysis.lib.document import Block, Heading, Paragraph, Table, plural
from search_spaces import Param
from study.lib import records

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


# Bootstrap resamples per target. fANOVA dominates the cost, so its forest has 16 trees per resample
# (40 resamples fit 640 trees in all): a report of a 100-trial study stays under a minute on 2 CPU
# cores (docs/benchmarks.md, benchmarks.report_time).
BOOTSTRAP = 40
LEVEL = 0.90  # the interval's coverage: the 5th to the 95th percentile of the resamples


def min_trials(n_params: int) -> int:
    """Fewest trials with a finite target for which importance is shown: 2 per searched parameter,
    and at least 10. A random forest over d parameters fit to fewer than about 2d points, or
    PED-ANOVA's top quantile of 5 trials out of fewer than 10, ranks noise (a 6-trial study with 2
    completed trials gave the same precise-looking numbers for three different targets)."""
    return max(10, 2 * n_params)


TOP_TRIALS = 10  # PED-ANOVA's top quantile holds at least this many trials


def evaluators(seed: int, n_trials: int) -> dict[str, optuna.importance.BaseImportanceEvaluator]:
    """The evaluators of one bootstrap resample. fANOVA and MDI are random forests, seeded. PED-ANOVA is deterministic;
    its top quantile holds at least TOP_TRIALS trials where the study is small: its documentation
    advises at least 5, and a bootstrap resample repeats about a third of its draws, so 10 draws
    hold about 6 distinct trials (with 5, one lucky noise parameter looked as important as the
    only parameter that mattered in a 40-trial test)."""
    quantile = min(0.5, max(0.1, TOP_TRIALS / max(n_trials, 1)))
    return {
        "fANOVA": optuna.importance.FanovaImportanceEvaluator(n_trees=16, max_depth=64, seed=seed),
        "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile),
        "MDI": optuna.importance.MeanDecreaseImpurityImportanceEvaluator(n_trees=64, max_depth=64, seed=seed),
    }


@dataclass(frozen=True)
class Interval:
    """A bootstrap distribution's median and its LEVEL interval."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        if math.isnan(self.median):
            return "-"
        return f"{self.median:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass
class Importance:
    """The importance of the searched parameters for one target, or why it is not shown."""

    target: str
    n_trials: int  # trials with a finite value of the target
    scores: dict[str, dict[str, Interval]] = field(default_factory=dict)  # evaluator -> param -> interval
    notes: list[str] = field(default_factory=list)
    declined: str | None = None  # the reason importance is not shown
    n_pruned: int = 0  # pruned trials among n_trials (the rung target uses them)

    @property
    def shown(self) -> bool:
        return self.declined is None

    def standing_out(self) -> list[str]:
        """The parameters whose intervals lie above every other parameter's under **every**
        evaluator (empty when none does)."""
        common = None
        for scores in self.scores.values():
            chosen = set(standing_out(scores))
            common = chosen if common is None else common & chosen
        return sorted(
            common or (), key=lambda p: -statistics.median(s[p].median for s in self.scores.values())
        )

    def agreement(self) -> str:
        names = self.standing_out()
        evaluators_ = " and ".join(self.scores) if len(self.scores) < 3 else "all three evaluators"
        if not names:
            return f"No parameter stands out: no interval lies above the others' under {evaluators_}."
        return (
            f"{', '.join(names)} {'stands' if len(names) == 1 else 'stand'} out: "
            f"{'its interval lies' if len(names) == 1 else 'their intervals lie'} above every other "
            f"parameter's under {evaluators_}."
        )


def standing_out(scores: dict[str, Interval]) -> list[str]:
    """The smallest set of top parameters (by median) whose lowest interval bound lies above the
    highest upper bound of all the others; empty when no such set exists."""
    ordered = sorted(scores, key=lambda p: -scores[p].median)
    for k in range(1, len(ordered)):
        top, rest = ordered[:k], ordered[k:]
        if min(scores[p].low for p in top) > max(scores[q].high for q in rest):
            return top
    return []


def _target_view(
    trials: list[FrozenTrial], value: Callable[[FrozenTrial], float | None], sign: float
) -> tuple[list[FrozenTrial], dict[int, float]]:
    """The trials with a finite target, as new COMPLETE trials whose value is the target oriented
    so that lower is better (PED-ANOVA looks at the lowest values), and those values by the
    original trial number."""
    view, values = [], {}
    for t in trials:
        v = value(t)
        if v is not None and math.isfinite(v):
            values[t.number] = sign * float(v)
            view.append(
                optuna.trial.create_trial(
                    params=t.params, distributions=t.distributions, value=values[t.number]
                )
            )
    return view, values


def _scratch_study() -> optuna.Study:
    """An in-memory study for one resample, without the line Optuna logs for each new study."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(previous)


def bootstrap(
    view: list[FrozenTrial], params: list[str], *, seed: int, resamples: int = BOOTSTRAP
) -> tuple[dict[str, dict[str, Interval]], list[str]]:
    """Importance of ``params`` over ``resamples`` resamples of the trials with replacement: per
    evaluator and parameter, the median and the LEVEL interval. Seeded: the same trials and seed
    give the same intervals. A resample whose target is constant has no importance and is skipped."""
    rng = random.Random(seed)
    draws: dict[str, dict[str, list[float]]] = {}
    notes: list[str] = []
    for b in range(resamples):
        sample = [view[rng.randrange(len(view))] for _ in view]
        if len({t.value for t in sample}) < 2:
            continue
        study = _scratch_study()
        study.add_trials(sample)
        for name, evaluator in evaluators(seed + b, len(sample)).items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # No ``params=``: Optuna 5.0's mean-decrease-impurity evaluator labels its scores in
                # the order of ``params`` but computes them in its own (sorted) order, so a list in
                # any other order swaps the names. The view holds exactly ``params``, so all of them.
                scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
            for p in params:
                draws.setdefault(name, {}).setdefault(p, []).append(scores.get(p, 0.0))
            notes += [f"{name}: {w.message}" for w in caught if "experimental" not in str(w.message)]
    tail = (1 - LEVEL) / 2 * 100
    out = {}
    for name, per_param in draws.items():
        out[name] = {}
        for p, values in per_param.items():
            low, median, high = np.percentile(values, [tail, 50, 100 - tail])
            out[name][p] = Interval(float(median), float(low), float(high))
    return out, list(dict.fromkeys(notes))


def rung(trials: list[FrozenTrial], *, at_least: int = 0) -> int | None:
    """The last epoch that at least half of the trials (pruned ones included) reported a value at:
    a Hyperband rung, where pruned and surviving trials are compared on the same footing. Among
    those, the last one that ``at_least`` trials reached, when one did (the evidence importance
    needs): a later rung with too few trials would only be declined."""
    reported = [t for t in trials if t.intermediate_values]
    if not reported:
        return None
    counts = Counter(step for t in reported for step in t.intermediate_values)
    reached = [step for step, n in counts.items() if 2 * n >= len(reported)]
    enough = [step for step in reached if counts[step] >= at_least]
    return max(enough or reached) if reached else None


def _trials_needed(have: int, finished: int, needed: int) -> str:
    """How many finished trials would give ``needed`` usable ones at the study's rate so far (a
    pruned search completes only some of its trials)."""
    if have == 0 or have >= finished:
        return ""
    return (f"; at this study's rate ({have} of {finished} finished trials) that takes about "
            f"{math.ceil(needed * finished / have)} trials")  # fmt: skip


def importance(
    study: optuna.Study, params: list[str], *, seed: int, resamples: int = BOOTSTRAP
) -> list[Importance]:
    """Importance of ``params`` with bootstrap intervals for every target: the objective(s), the
    generalization gap and the wall seconds over completed trials, then the objective at a rung
    over every trial that reached it, pruned or not. A target with too few trials (``min_trials``),
    a constant one, or one identical to an earlier target on the same trials is declined, with
    the reason."""
    usable = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if set(params) <= set(t.params)
    ]
    complete = [t for t in usable if t.state == TrialState.COMPLETE]
    views: list[tuple[str, tuple[list[FrozenTrial], dict[int, float]], int]] = []
    for target in targets(study):
        views.append(
            (target.name, _target_view(complete, target.value, -1.0 if target.higher_is_better else 1.0), 0)
        )
    if len(study.directions) == 1 and (epoch := rung(usable, at_least=min_trials(len(params)))) is not None:
        at_rung = [t for t in usable if epoch in t.intermediate_values]
        pruned = sum(t.state == TrialState.PRUNED for t in at_rung)
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        view = _target_view(at_rung, lambda t, e=epoch: t.intermediate_values[e], sign)
        views.append((f"val_accuracy at epoch {epoch} (every trial that reached it)", view, pruned))
    needed = min_trials(len(params))
    results: list[Importance] = []
    seen: dict[str, dict[int, float]] = {}
    for name, (view, values), pruned in views:
        result = Importance(name, len(view), n_pruned=pruned)
        twin = next((other for other, vals in seen.items() if vals == values), None)
        if len(view) < needed:
            result.declined = (
                f"{len(view)} trial(s) with a finite {name}: importance needs at least {needed} "
                f"(2 per searched parameter, at least 10), so none is shown" + _trials_needed(len(view), len(usable), needed)
            )
        elif len(set(values.values())) < 2:
            result.declined = f"{name} is constant on its {len(view)} trials: there is nothing to rank"
        elif " at epoch " in name and pruned == 0:
            result.declined = (
                f"no pruned trial reached that epoch: the {len(view)} trials there are the completed ones, "
                "whose importance the objective's table shows"
            )
        elif twin is not None:
            result.declined = f"{name} is identical to {twin} on the same {len(view)} trials: see that table"
        else:
            result.scores, result.notes = bootstrap(view, params, seed=seed, resamples=resamples)
        seen.setdefault(name, values)
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


# --- the section of a report -----------------------------------------------------------------
def importance_blocks(
    results: list[Importance], params: list[str], seed: int, resamples: int = BOOTSTRAP
) -> list[Block]:
    """The importance section: how it is computed, then per target its table and reading, or why
    it is not shown (with the trials it would need)."""
    blocks: list[Block] = [
        Heading("Parameter importance"),
        Paragraph(
            f"Normalized importance, as the median and {LEVEL:.0%} interval over {resamples} bootstrap "
            f"resamples of the trials (seed {seed}), by fANOVA (random forest), PED-ANOVA (top-quantile "
            "trials against all) and mean decrease impurity (random forest). A parameter matters where "
            "its interval lies above the others' under all three evaluators; overlapping intervals mean "
            f"the study cannot tell. Importance is shown from {min_trials(len(params))} trials with a "
            "finite target on (2 per searched parameter, at least 10). The objective is also ranked at "
            "a Hyperband rung, over every trial that reached it, pruned or not: pruned trials are most "
            "of what a pruned study paid for."
        ),
    ]
    if not results:
        blocks.append(Paragraph("No sampled parameters yet: nothing to rank."))
    for result in results:
        names = list(result.scores)
        pruned = f", {result.n_pruned} of them pruned" if result.n_pruned else ""
        blocks.append(Heading(f"Target: {result.target} ({plural(result.n_trials, 'trial')}{pruned})", 3))
        if not result.shown:
            blocks.append(Paragraph(f"Not shown: {result.declined}."))
            continue
        rows = [[p, *(str(result.scores[n][p]) for n in names)] for p in params]
        blocks.append(Table(["parameter", *names], rows))
        blocks.append(Paragraph(result.agreement()))
        blocks += [Paragraph(f"Note: {note}") for note in dict.fromkeys(result.notes)]
    return blocks
