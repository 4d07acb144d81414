"""Overfitting or under-training? The verdict from designed runs, compared at matched progress.

Read from a grid study (``study.grid``: seeds, lr-scaling arms, step-matched runs, twins). Each run
is one (micro-batch, accumulation, lr rule, seed); the accumulation-1 runs belong to every arm. An
accumulated run and the accumulation-1 run of the same micro-batch and seed share initialization
and data order, so they are compared **paired by seed**; within a seed the micro-batches'
differences are averaged first, so n is always the number of seeds, never epoch points.

A run that is behind has a smaller generalization gap by construction (the baseline's own gap grows
with training), so comparisons at matched epochs or steps measure *progress*, not generalization.
The comparisons that can tell the explanations apart are made at matched training progress:

* **at equal training loss**: each seed's baseline curve (validation loss, validation accuracy and
  gap against log training loss, the loss measured in eval mode on a fixed training subset) is
  interpolated at the accumulated run's training loss, inside the range both runs cover (never
  extrapolated), at each of the accumulated run's epoch points;
* **at each run's best epoch** (its minimum validation loss): that loss, the validation accuracy
  there, the epoch and the optimizer steps at which it came, and the rise of the validation loss
  after it (last / minimum: the amount of overfitting). A run whose minimum is its last evaluated
  epoch has not reached it; such pairs are counted and left out.

Each explanation is judged on its own predictions (``Predictions``), with intervals:

* **overfitting** (the paper's mechanism, or the large-batch generalization gap) predicts a worse
  validation loss at equal training loss, a worse best validation loss, or a larger rise after the
  minimum: any of them, significantly;
* **under-training** predicts lower train and validation accuracy at matched epochs (at the first
  epoch point, where being behind shows most) and the minimum reached after more epochs; with it
  alone, the accumulated runs lie on the baseline's curve (no difference at equal training loss,
  the same best validation loss).

The verdict is ``both``, ``overfitting``, ``under-training`` (its predictions hold and no
overfitting prediction does; whether the runs also lie on the baseline's curve, the "alone"
predictions, is reported beside it, with the smallest overfitting effect the data could have
detected), ``neither`` (every comparison's interval lies inside the smallest effect that counts,
``Thresholds``: at equal training loss, the best validation loss, the rise after it, the epoch of
the minimum and the accuracies at the first epoch point; one not measured is not enough) or
``inconclusive`` (fewer than 2 seeds, or intervals too wide to tell; the reason then names the
smallest effect the data could have detected).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.lib.stats import EMPTY, MeanCI, mean_ci, ratio_ci, run_level_mean_ci, run_level_ratio_ci
from study.lib import records

METRICS = ("train_accuracy", "val_accuracy", "generalization_gap")  # at matched epochs and steps
AT_EQUAL_LOSS = ("val_loss", "val_accuracy", "generalization_gap")  # at equal training loss
AT_MINIMUM = ("val_loss", "val_accuracy", "rise", "epoch_ratio", "steps_ratio")
PROGRESS, RUNNING_LOSS = "train_eval_loss", "train_loss"
OVERFITTING, UNDER_TRAINING, BOTH, NEITHER, INCONCLUSIVE = (
    "overfitting",
    "under-training",
    "both",
    "neither",
    "inconclusive",
)
IDENTICAL = 1e-4  # train-loss difference below which two runs count as the same update


@dataclass(frozen=True)
class Thresholds:
    """The smallest effects that count: accuracy (and gap), loss in nats, rise (last / minimum of
    the validation loss) and the ratio of the epochs at the minimum."""

    accuracy: float = 0.01
    loss: float = 0.02
    rise: float = 0.05
    epoch_ratio: float = 0.1

    def of(self, metric: str) -> float:
        if metric.endswith("loss"):
            return self.loss
        if metric == "rise":
            return self.rise
        if metric.endswith("ratio"):
            return self.epoch_ratio
        return self.accuracy


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Run:
    """One grid run: its design and the history of its evaluated epochs."""

    trial: int
    dataset: str
    batch_size: int
    accumulation_steps: int
    lr_scaling: str
    seed: int
    history: dict[str, list[float]] = field(repr=False)

    @property
    def epochs(self) -> list[int]:
        return self.history["epoch"]

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1]

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulation_steps

    @property
    def progress(self) -> str:
        """The training-progress measure: the eval-mode loss on the fixed training subset, or, in
        records made before it was measured, the running training loss (train mode)."""
        return PROGRESS if self.history.get(PROGRESS) else RUNNING_LOSS

    def has(self, epoch: int) -> bool:
        return epoch in self.epochs

    def at(self, epoch: int, metric: str) -> float:
        return self.history[metric][self.epochs.index(epoch)]

    def series(self, metric: str) -> list[float]:
        return self.history[metric]

    def until(self, epoch: int) -> Run:
        """The run as if it had stopped after ``epoch``: its evaluated epochs up to there."""
        return self.only([e for e in self.epochs if e <= epoch])

    def only(self, epochs: list[int]) -> Run:
        """The run as if it had been evaluated at ``epochs`` (of its evaluated epochs) alone."""
        wanted = set(epochs)
        keep, evaluated = [i for i, e in enumerate(self.epochs) if e in wanted], len(self.epochs)
        history = {k: [v[i] for i in keep] if isinstance(v, list) and len(v) == evaluated else v
                   for k, v in self.history.items()}  # fmt: skip
        return replace(self, history=history)


def runs_from_study(study: optuna.Study, *, stop_at: int | None = None) -> list[Run]:
    """The finished runs of a grid study (COMPLETE trials with a config and a history); with
    ``stop_at``, each read as if it had stopped after that epoch (``Run.until``)."""
    runs = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cfg, history = records.config(t), records.history(t)
        if cfg and history:
            runs.append(Run(t.number, cfg["dataset"], cfg["batch_size"], cfg["accumulation_steps"],
                            cfg["lr_scaling"], cfg["seed"], history))  # fmt: skip
    if stop_at is not None:
        runs = [r.until(stop_at) for r in runs if r.epochs[0] <= stop_at]
    return runs


def paired_runs(runs: list[Run], arm: str, n: int) -> dict[tuple[int, int], tuple[Run, Run]]:
    """(micro-batch, seed) -> (accumulation-1 run, accumulation-N run of ``arm``)."""
    base = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == 1}
    acc = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == n and r.lr_scaling == arm}
    return {key: (base[key], acc[key]) for key in sorted(base.keys() & acc.keys())}


# --- one table row: paired differences, pooled within a seed ----------------------------------
@dataclass
class Row:
    """Paired effects of accumulation (accumulated minus baseline, or their ratio) at one place."""

    where: str
    effects: dict[str, MeanCI]  # n = seeds: micro-batches averaged within a seed first
    by_batch: dict[int, dict[str, MeanCI]]
    pairs: int
    left_out: int = 0  # pairs with nothing to compare here (out of range, minimum not reached)


def effect_row(
    where: str, diffs: dict[tuple[int, int], dict[str, float]], metrics, *, left_out: int = 0
) -> Row:
    """A row from ``diffs``: (micro-batch, seed) -> metric -> difference."""
    batches = sorted({b for b, _ in diffs})
    effects = {m: run_level_mean_ci({k: d[m] for k, d in diffs.items()}) for m in metrics}
    by_batch = {b: {m: mean_ci([d[m] for (bb, _), d in sorted(diffs.items()) if bb == b]) for m in metrics}
                for b in batches}  # fmt: skip
    return Row(where, effects, by_batch, len(diffs), left_out)


def matched_epochs(base: Run, acc: Run) -> list[tuple[int, int]]:
    """(accumulated epoch, baseline epoch) pairs of evaluated epochs with equal optimizer steps."""
    where = {int(s): e for e, s in zip(base.epochs, base.series("optimizer_steps"), strict=True)}
    return [
        (e, where[int(s)])
        for e, s in zip(acc.epochs, acc.series("optimizer_steps"), strict=True)
        if int(s) in where
    ]


def at_epoch_rows(pairs, points: list[int]) -> list[Row]:
    """Matched epochs: the effect on METRICS at each epoch point both runs of every pair reached."""
    rows = []
    for e in points:
        if all(b.has(e) and a.has(e) for b, a in pairs.values()):
            diffs = {k: {m: a.at(e, m) - b.at(e, m) for m in METRICS} for k, (b, a) in pairs.items()}
            rows.append(effect_row(f"epoch {e}", diffs, METRICS))
    return rows


def at_step_rows(pairs, points: list[int]) -> list[Row]:
    """Matched optimizer steps: for each baseline epoch point, the accumulated epoch with exactly
    its steps (where every pair has one; none is stood in for by a nearest epoch)."""
    rows = []
    for p in points:
        matches = {k: dict((be, ae) for ae, be in matched_epochs(b, a)).get(p) for k, (b, a) in pairs.items()}
        if any(m is None for m in matches.values()):
            continue
        diffs = {k: {m: a.at(matches[k], m) - b.at(p, m) for m in METRICS} for k, (b, a) in pairs.items()}
        where = f"matched steps: accumulated epoch {'/'.join(map(str, sorted(set(matches.values()))))} = baseline epoch {p}"
        rows.append(effect_row(where, diffs, METRICS))
    return rows


# --- at equal training loss ----------------------------------------------------------------------
def pair_progress(base: Run, acc: Run) -> str:
    """The training-progress measure both runs of a pair have: the eval-mode loss, or else the
    running loss of both (never one of each)."""
    return PROGRESS if base.progress == acc.progress == PROGRESS else RUNNING_LOSS


def _crossing(run: Run, loss: float, measure: str) -> tuple[int, float] | None:
    """Where ``run``'s training loss (``measure``) first reached ``loss``: (i, t), between its
    evaluated epochs i and i + 1 at fraction t, linear in log loss. None outside its range."""
    xs = [math.log(v) if v and v > 0 else math.nan for v in run.series(measure)]
    if not (loss > 0):
        return None
    target = math.log(loss)
    for i in range(len(xs) - 1):
        a, b = xs[i], xs[i + 1]
        if min(a, b) <= target <= max(a, b):
            return i, 0.0 if a == b else (a - target) / (a - b)
    return (0, 0.0) if len(xs) == 1 and xs[0] == target else None


def _value(ys: list[float], i: int, t: float) -> float:
    return ys[i] if t == 0.0 else ys[i] + t * (ys[i + 1] - ys[i])


def interpolate_at_loss(run: Run, loss: float, metric: str, measure: str | None = None) -> float | None:
    """``metric`` of ``run`` where its training loss (``measure``, by default ``run.progress``)
    first reached ``loss``: linear in log loss between the two evaluated epochs around it. None
    outside the run's range: never extrapolated."""
    ys = run.series(metric)
    where = None if ys is None else _crossing(run, loss, measure or run.progress)
    return None if where is None else _value(ys, *where)


def rise_until(run: Run, loss: float, measure: str) -> float | None:
    """How far ``run``'s validation loss had risen after its lowest point by the time its training
    loss first reached ``loss``: the validation loss there over the lowest one up to there (1.0
    when it was still falling). None outside the run's range."""
    where = _crossing(run, loss, measure)
    if where is None:
        return None
    i, t = where
    ys = run.series("val_loss")
    at = _value(ys, i, t)
    return at / min(*ys[: i + 1], at)


def at_loss_rows(pairs, points: list[int]) -> list[Row]:
    """At equal training loss, at each accumulated epoch point: the accumulated run's validation
    loss, accuracy and gap minus the baseline's at the same training loss."""
    rows = []
    for e in points:
        diffs, out = {}, 0
        for k, (b, a) in pairs.items():
            if not a.has(e):
                continue
            measure = pair_progress(b, a)
            loss = a.at(e, measure)
            values = {m: interpolate_at_loss(b, loss, m, measure) for m in AT_EQUAL_LOSS}
            if any(v is None for v in values.values()):
                out += 1
                continue
            diffs[k] = {m: a.at(e, m) - values[m] for m in AT_EQUAL_LOSS}
        if diffs:
            rows.append(
                effect_row(f"equal train loss: accumulated epoch {e}", diffs, AT_EQUAL_LOSS, left_out=out)
            )
    return rows


# --- at each run's best epoch --------------------------------------------------------------------
@dataclass(frozen=True)
class Minimum:
    """A run's minimum validation loss and what came with it."""

    epoch: int
    steps: int
    val_loss: float
    val_accuracy: float
    reached: bool  # False when the minimum is the last evaluated epoch (still falling)


def minimum(run: Run) -> Minimum:
    losses = run.series("val_loss")
    i = min(range(len(losses)), key=losses.__getitem__)
    return Minimum(run.epochs[i], int(run.series("optimizer_steps")[i]), losses[i],
                   run.series("val_accuracy")[i], i < len(losses) - 1)  # fmt: skip


def rises(base: Run, acc: Run) -> tuple[float, float] | None:
    """The rise of each run's validation loss after its lowest point, up to the most training
    progress both runs reached (the higher of their final training losses): validation loss there
    over the lowest one before it (``rise_until``). Measured at that common point, so that a run
    trained further past its minimum does not rise more by that alone, and a run whose minimum
    lies beyond that point counts as not yet rising (1.0). None when a run never reached it."""
    measure = pair_progress(base, acc)
    end = max(base.series(measure)[-1], acc.series(measure)[-1])
    out = [rise_until(run, end, measure) for run in (base, acc)]
    return None if None in out else (out[0], out[1])


def on_one_schedule(base: Run, acc: Run) -> tuple[Run, Run]:
    """The two runs read on one evaluation schedule: up to the shorter run's end, at the epochs both
    evaluated; after it, the longer run's own. A step-matched run evaluates N times less often per
    epoch, and a minimum read every 20 epochs lies above the same run's minimum read every 5 by
    sampling alone."""
    end, shared = min(base.last_epoch, acc.last_epoch), set(base.epochs) & set(acc.epochs)
    base, acc = (run.only([e for e in run.epochs if e in shared or e > end]) for run in (base, acc))
    return base, acc


def at_minimum_row(pairs) -> Row:
    """At each run's best epoch: differences in the minimum validation loss, the accuracy there and
    the rise after it (``rises``), and the ratios of the epochs and steps at which it came
    (accumulated / 1), on one evaluation schedule (``on_one_schedule``). Pairs in which a run has
    not reached its minimum (on its own schedule) are left out."""
    diffs, out = {}, 0
    for k, pair in pairs.items():
        b, a = on_one_schedule(*pair)
        rise = rises(b, a)
        if not all(minimum(run).reached for run in pair) or rise is None:
            out += 1
            continue
        mb, ma = minimum(b), minimum(a)
        diffs[k] = {"val_loss": ma.val_loss - mb.val_loss, "val_accuracy": ma.val_accuracy - mb.val_accuracy,
                    "rise": rise[1] - rise[0], "epoch_ratio": ma.epoch / mb.epoch, "steps_ratio": ma.steps / mb.steps}  # fmt: skip
    if not diffs:
        return Row("best epoch (minimum validation loss)", dict.fromkeys(AT_MINIMUM, EMPTY), {}, 0, out)
    return effect_row("best epoch (minimum validation loss)", diffs, AT_MINIMUM, left_out=out)


def later_row(pairs) -> Row:
    """When the minimum comes: accumulated / baseline epochs of the minimum, over the pairs whose
    baseline reached its minimum. An accumulated run still falling at its end counts with its last
    epoch, a lower bound of when its minimum will come, so runs too short to show it weigh against
    'later', never for it. On one evaluation schedule (``on_one_schedule``); whether the baseline
    reached its minimum, on its own."""
    diffs, out = {}, 0
    for k, pair in pairs.items():
        if not minimum(pair[0]).reached:
            out += 1
            continue
        b, a = on_one_schedule(*pair)
        diffs[k] = {"epoch_ratio": minimum(a).epoch / minimum(b).epoch}
    if not diffs:
        return Row("minimum epoch, accumulated / baseline", {"epoch_ratio": EMPTY}, {}, 0, out)
    return effect_row("minimum epoch, accumulated / baseline", diffs, ("epoch_ratio",), left_out=out)


# --- the predictions and the verdict -------------------------------------------------------------
@dataclass(frozen=True)
class Predictions:
    """What each explanation predicts, and whether the data show it (None: not measurable here)."""

    # overfitting: the paper's mechanism, or the large-batch generalization gap
    worse_val_loss_at_equal_train_loss: bool | None
    worse_best_val_loss: bool | None
    larger_rise_after_minimum: bool | None
    # under-training: fewer optimizer steps, the same curve reached later
    behind_at_matched_epochs: bool | None
    minimum_later: bool | None
    same_curve_at_equal_train_loss: bool | None
    same_best_val_loss: bool | None
    same_rise_after_minimum: bool | None
    same_minimum_epoch: bool | None
    # neither: no effect at all at matched epochs (train and validation accuracy equivalent)
    same_accuracy_at_matched_epochs: bool | None

    def overfitting(self) -> bool:
        return any(
            (
                self.worse_val_loss_at_equal_train_loss,
                self.worse_best_val_loss,
                self.larger_rise_after_minimum,
            )
        )

    def under_training(self) -> bool:
        return bool(self.behind_at_matched_epochs) and self.minimum_later is not False


def _effect(ci: MeanCI | None, metric: str) -> MeanCI | None:
    """``ci`` as an effect around zero (a ratio's no-effect value is 1); None without an interval."""
    if ci is None or not ci.has_interval:
        return None
    base = 1.0 if metric.endswith("ratio") else 0.0
    return MeanCI(ci.mean - base, ci.low - base, ci.high - base, ci.n)


def _significant(ci: MeanCI | None, metric: str, t: Thresholds, *, direction: int) -> bool | None:
    if (effect := _effect(ci, metric)) is None:
        return None
    return effect.above(t.of(metric)) if direction > 0 else effect.below(t.of(metric))


def _equivalent(ci: MeanCI | None, metric: str, t: Thresholds) -> bool | None:
    return None if (effect := _effect(ci, metric)) is None else effect.within(t.of(metric))


def deciding_loss_row(at_loss: list[Row], n_seeds: int) -> Row | None:
    """The equal-loss row the predictions read: the most progressed one in which every seed has a
    pair inside the baseline's range (else the most progressed one)."""
    full = [r for r in at_loss if r.effects["val_loss"].n == n_seeds]
    return (full or at_loss or [None])[-1]


def predictions(
    at_epochs: list[Row], at_loss: Row | None, best: Row, later: Row, t: Thresholds
) -> Predictions:
    """The predictions, from the first epoch point (being behind shows most early), the deciding
    equal-loss row, the best-epoch row and the row of when the minimum comes."""
    first = at_epochs[0].effects if at_epochs else {}
    loss = at_loss.effects if at_loss else {}
    minimum_ = best.effects if best.pairs else {}
    behind = same = None
    if first:
        accuracies = ("train_accuracy", "val_accuracy")
        lower = [_significant(first.get(m), m, t, direction=-1) for m in accuracies]
        behind = None if None in lower else all(lower)
        equal = [_equivalent(first.get(m), m, t) for m in accuracies]
        same = None if None in equal else all(equal)
    return Predictions(
        worse_val_loss_at_equal_train_loss=_significant(loss.get("val_loss"), "val_loss", t, direction=+1),
        worse_best_val_loss=_significant(minimum_.get("val_loss"), "val_loss", t, direction=+1),
        larger_rise_after_minimum=_significant(minimum_.get("rise"), "rise", t, direction=+1),
        behind_at_matched_epochs=behind,
        minimum_later=_significant(later.effects["epoch_ratio"], "epoch_ratio", t, direction=+1),
        same_curve_at_equal_train_loss=_equivalent(loss.get("val_loss"), "val_loss", t),
        same_best_val_loss=_equivalent(minimum_.get("val_loss"), "val_loss", t),
        same_rise_after_minimum=_equivalent(minimum_.get("rise"), "rise", t),
        same_minimum_epoch=_equivalent(later.effects["epoch_ratio"], "epoch_ratio", t),
        same_accuracy_at_matched_epochs=same,
    )


def decide(p: Predictions, *, n_seeds: int) -> str:
    """One word from the predictions (module docstring)."""
    if n_seeds < 2:
        return INCONCLUSIVE
    overfit, behind = p.overfitting(), p.under_training()
    if overfit and behind:
        return BOTH
    if overfit:
        return OVERFITTING
    if behind:
        return UNDER_TRAINING
    if all(  # every interval inside its smallest effect that counts: None (not measured) is not enough
        v is True
        for v in (
            p.same_curve_at_equal_train_loss,
            p.same_best_val_loss,
            p.same_rise_after_minimum,
            p.same_minimum_epoch,
            p.same_accuracy_at_matched_epochs,
        )
    ):
        return NEITHER
    return INCONCLUSIVE


def detectable(at_loss: Row | None, best: Row, t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, float]:
    """The smallest effects the data could have told from zero and counted: the half-width of the
    interval each overfitting prediction is read from, or the smallest effect that counts
    (``Thresholds``) where that is larger."""
    out = {}
    if at_loss:
        out["val_loss at equal train loss"] = max(at_loss.effects["val_loss"].half_width, t.loss)
    if best.pairs:
        out["best val_loss"] = max(best.effects["val_loss"].half_width, t.loss)
        out["rise after the minimum"] = max(best.effects["rise"].half_width, t.rise)
    return {k: v for k, v in out.items() if math.isfinite(v)}


@dataclass
class ArmAnalysis:
    """Everything measured for one (dataset, accumulation N, lr-scaling arm)."""

    dataset: str
    arm: str
    accumulation_steps: int
    seeds: list[int]
    batch_sizes: list[int]
    epoch_points: list[int]
    progress_measure: str  # what "training loss" means for this arm's records
    at_epochs: list[Row]  # progress, not generalization
    at_steps: list[Row]  # progress, not generalization
    at_train_loss: list[Row]
    at_minimum: Row
    minimum_epoch: Row  # when the minimum comes (a lower bound for accumulated runs still falling)
    unmatched: list[int]  # baseline epoch points with no exactly step-matched accumulated epoch
    time: dict[str, MeanCI]  # ratio N / 1 of training seconds per epoch and per step (geometric mean)
    predictions: Predictions
    verdict: str
    detectable: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cost(run: Run, per: str) -> float:
    """Training seconds (evaluation excluded) per epoch or per optimizer step: the median over the
    run's evaluation intervals, so that a pause (SIGSTOP) or other work on the same cores during
    part of a run changes it only if it lasted through half of the run's intervals."""
    seconds = [0.0, *run.series("train_seconds")]
    done = [0, *(run.epochs if per == "epoch" else run.series("optimizer_steps"))]
    intervals = zip(pairwise(seconds), pairwise(done), strict=True)
    rates = [(s1 - s0) / (d1 - d0) for (s0, s1), (d0, d1) in intervals if d1 > d0]
    return statistics.median(rates)


def analyse_arm(
    runs: list[Run], *, arm: str, n: int, epoch_points: list[int], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> ArmAnalysis | None:
    """The analysis of one arm, or None when no accumulated run of it has its baseline."""
    pairs = paired_runs(runs, arm, n)
    if not pairs:
        return None
    at_epochs = at_epoch_rows(pairs, epoch_points)
    at_steps = at_step_rows(pairs, epoch_points)
    acc_points = sorted({p * k for p in epoch_points for k in (1, n)})
    at_loss = at_loss_rows(pairs, acc_points)
    best = at_minimum_row(pairs)
    later = later_row(pairs)
    time = {name: run_level_ratio_ci({k: _cost(a, per) / _cost(b, per) for k, (b, a) in pairs.items()})
            for name, per in (("seconds_per_epoch", "epoch"), ("seconds_per_step", "step"))}  # fmt: skip
    seeds = sorted({s for _, s in pairs})
    deciding = deciding_loss_row(at_loss, len(seeds))
    p = predictions(at_epochs, deciding, best, later, thresholds)
    matched = {int(r.where.rsplit(" ", 1)[-1]) for r in at_steps}
    progress = {a.progress for pair in pairs.values() for a in pair}
    return ArmAnalysis(
        dataset=next(iter(pairs.values()))[0].dataset, arm=arm, accumulation_steps=n, seeds=seeds,
        batch_sizes=sorted({b for b, _ in pairs}), epoch_points=epoch_points,
        progress_measure=PROGRESS if progress == {PROGRESS} else RUNNING_LOSS,
        at_epochs=at_epochs, at_steps=at_steps, at_train_loss=at_loss, at_minimum=best, minimum_epoch=later,
        unmatched=[e for e in epoch_points if e not in matched], time=time, predictions=p,
        verdict=decide(p, n_seeds=len(seeds)), detectable=detectable(deciding, best, thresholds),
    )  # fmt: skip


def analyse(
    study: optuna.Study,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    batch_sizes: list[int] | None = None,
    stop_at: int | None = None,
) -> list[ArmAnalysis]:
    """One analysis per lr-scaling arm of a grid study (arms from the study, else from its runs);
    ``batch_sizes``: only the pairs of these micro-batches (all when None); ``stop_at``: every run
    read as if it had stopped after that epoch, and the epoch points after it dropped."""
    runs = runs_from_study(study, stop_at=stop_at)
    runs = [r for r in runs if batch_sizes is None or r.batch_size in batch_sizes]
    values = sorted({r.accumulation_steps for r in runs if r.accumulation_steps != 1})
    points = study.user_attrs.get(records.EPOCH_POINTS) or sorted({r.last_epoch for r in runs})
    points = [p for p in points if stop_at is None or p <= stop_at]
    arms = study.user_attrs.get(records.ARMS) or sorted(
        {r.lr_scaling for r in runs if r.accumulation_steps != 1}
    )
    analyses = [analyse_arm(runs, arm=arm, n=n, epoch_points=list(points), thresholds=thresholds)
                for n in values for arm in arms]  # fmt: skip
    return [a for a in analyses if a is not None]


# --- words ---------------------------------------------------------------------------------------
PREDICTION_TEXT = {
    "worse_val_loss_at_equal_train_loss": "validation loss higher at equal training loss (overfitting)",
    "worse_best_val_loss": "best validation loss higher (overfitting)",
    "larger_rise_after_minimum": "validation loss rises more after its minimum (overfitting)",
    "behind_at_matched_epochs": "train and validation accuracy lower at the first epoch point (under-training)",
    "minimum_later": "minimum reached after more epochs (under-training)",
    "same_curve_at_equal_train_loss": "same validation loss at equal training loss (under-training alone)",
    "same_best_val_loss": "same best validation loss (under-training alone)",
    "same_rise_after_minimum": "same rise after the minimum (under-training alone)",
    "same_minimum_epoch": "minimum at the same epoch (neither)",
    "same_accuracy_at_matched_epochs": "same train and validation accuracy at the first epoch point (neither)",
}


def reason(a: ArmAnalysis) -> str:
    """The verdict's reason: the predictions that held and the numbers they rest on."""
    held = [PREDICTION_TEXT[k] for k, v in asdict(a.predictions).items() if v]
    parts = [f"held: {'; '.join(held) if held else 'none'}"]
    row = deciding_loss_row(a.at_train_loss, len(a.seeds))
    if row is not None:
        parts.append(f"at equal training loss ({row.where.split(': ', 1)[1]}): validation loss "
                     f"{row.effects['val_loss'].sentence()}, accuracy {row.effects['val_accuracy'].sentence()}")  # fmt: skip
    if a.at_minimum.pairs:
        m = a.at_minimum.effects
        parts.append(f"at the best epoch: validation loss {m['val_loss'].sentence()}, rise {m['rise'].sentence()}, "
                     f"epochs x{m['epoch_ratio'].mean:.2f}, steps x{m['steps_ratio'].mean:.2f}")  # fmt: skip
    later = a.minimum_epoch.effects["epoch_ratio"]
    if a.minimum_epoch.pairs:
        parts.append(f"minimum at x{later.mean:.2f} the baseline's epochs ({later.ratio()}, a lower bound where "
                     "the accumulated run still falls)")  # fmt: skip
    if a.at_minimum.left_out:
        parts.append(f"{a.at_minimum.left_out} pair(s) had not reached a minimum")
    if len(a.seeds) < 2:
        parts.append("one seed: no interval")
    elif a.verdict in (INCONCLUSIVE, UNDER_TRAINING) and a.detectable:
        parts.append("overfitting effects smaller than "
                     + ", ".join(f"{v:.3f} ({k})" for k, v in a.detectable.items()) + " could not have been detected")  # fmt: skip
    if a.progress_measure == RUNNING_LOSS:
        parts.append(
            "training loss is the running train-mode loss: these records have no eval-mode train loss"
        )
    return "; ".join(parts)


def recovery(analyses: list[ArmAnalysis], *, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """One sentence per scaled arm: does scaling the lr recover the validation accuracy lost at
    the last epoch point? (Fewer steps predict recovery; overfitting does not.)"""
    unscaled = {a.accumulation_steps: a for a in analyses if a.arm == "none"}
    lines = []
    for a in analyses:
        if a.arm == "none" or not a.at_epochs:
            continue
        val = a.at_epochs[-1].effects["val_accuracy"]
        ref = unscaled.get(a.accumulation_steps)
        ref_text = (
            f" (unscaled: {ref.at_epochs[-1].effects['val_accuracy'].sentence()})"
            if ref and ref.at_epochs
            else ""
        )
        m = thresholds.accuracy
        if not val.has_interval:
            outcome = "not determined (one seed: no interval)"
        elif val.high < 0:
            outcome = "a loss remains"
        elif val.low >= -m:
            outcome = f"recovered (the interval excludes a loss of more than {m})"
        else:
            outcome = f"not determined (the interval includes no loss and a loss of more than {m})"
        factor = a.accumulation_steps if a.arm == "linear" else math.sqrt(a.accumulation_steps)
        lines.append(f"lr scaled {a.arm} (x{factor:g}): validation accuracy effect at {a.at_epochs[-1].where} "
                     f"{val.sentence()}{ref_text}: {outcome}")  # fmt: skip
    return lines


# --- accumulation is the larger batch: (b x N) against (bN x 1) ----------------------------------
@dataclass
class Twins:
    """(b x N, unscaled) against its twin (bN x 1), over the seeds that have both."""

    micro_batch: int
    accumulation_steps: int
    seeds: list[int]
    common_epochs: int  # evaluated epochs both runs have (the shorter run's length)
    max_train_loss_difference: float  # largest |difference| over those epochs and seeds
    max_val_accuracy_difference: float
    identical_through_epoch: int  # last epoch through which every seed's train losses agree within IDENTICAL
    seconds_per_epoch: MeanCI  # (b x N) / (bN x 1): what accumulation itself costs
    # (b x N) - (bN x 1) at the last common epoch, paired by seed: signed, so that with BatchNorm it
    # says whether the micro-batches' own statistics help (> 0) or hurt
    val_accuracy_difference: MeanCI = EMPTY


def twin_pairs(runs: list[Run]) -> dict[tuple[int, int], list[tuple[Run, Run]]]:
    """Every (b x N, unscaled) run with the (bN x 1) run of the same seed, by (b, N)."""
    plain = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == 1}
    groups: dict[tuple[int, int], list[tuple[Run, Run]]] = {}
    for r in runs:
        twin = plain.get((r.effective_batch, r.seed))
        if r.accumulation_steps > 1 and r.lr_scaling == "none" and twin is not None:
            groups.setdefault((r.batch_size, r.accumulation_steps), []).append((r, twin))
    return dict(sorted(groups.items()))


def twin_loss(acc: Run, twin: Run) -> str:
    """The training loss two twins are compared in: the eval-mode loss where both measured it."""
    return PROGRESS if acc.progress == twin.progress == PROGRESS else RUNNING_LOSS


def twins(runs: list[Run]) -> list[Twins]:
    """The equivalence table: every (b x N, unscaled) with a (bN x 1) run of the same seed."""
    return [_twins(b, n, pairs) for (b, n), pairs in twin_pairs(runs).items()]


def _twins(batch: int, n: int, pairs: list[tuple[Run, Run]]) -> Twins:
    """The training losses are compared in eval mode on the fixed training subset where both runs
    measured it: the running train-mode loss averages the steps since the previous evaluation, so
    two identical runs evaluated on different schedules (a step-matched run evaluates N times less
    often per epoch) differ in it without differing in their parameters."""
    loss_diff, acc_diff, through, common = 0.0, 0.0, math.inf, math.inf
    for acc, twin in pairs:
        epochs = [e for e in twin.epochs if acc.has(e)]
        common = min(common, len(epochs))
        loss = twin_loss(acc, twin)
        losses = [abs(acc.at(e, loss) - twin.at(e, loss)) for e in epochs]
        loss_diff = max(loss_diff, *losses)
        acc_diff = max(
            acc_diff, *(abs(acc.at(e, "val_accuracy") - twin.at(e, "val_accuracy")) for e in epochs)
        )
        first_bad = next((i for i, d in enumerate(losses) if d >= IDENTICAL), len(losses))
        through = min(through, epochs[first_bad - 1] if first_bad else 0)
    ratio = ratio_ci([_cost(acc, "epoch") / _cost(twin, "epoch") for acc, twin in pairs])
    last = [max(e for e in twin.epochs if acc.has(e)) for acc, twin in pairs]
    signed = mean_ci([acc.at(e, "val_accuracy") - twin.at(e, "val_accuracy") for (acc, twin), e in zip(pairs, last, strict=True)])
    return Twins(
        batch, n, sorted(a.seed for a, _ in pairs), int(common), loss_diff, acc_diff, int(through), ratio, signed
    )
