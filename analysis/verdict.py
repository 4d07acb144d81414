"""Overfitting or under-training? The verdict from designed runs, with the run as the unit.

Read from a grid study (``study.grid``, any number of seeds and lr-scaling arms). Each run is one
(micro-batch, accumulation, lr rule, seed); the accumulation-1 runs belong to every arm (their lr
is the base lr under every rule). An accumulated run and the accumulation-1 run of the same
micro-batch and seed share initialization and data order, so they are compared **paired by seed**.
Within a seed the per-micro-batch differences are averaged first, so n is always the number of
seeds (independent runs), never the number of epoch points or conditions.

For each arm, at each epoch point and at **exactly** matched optimizer steps (an accumulated
epoch whose step count equals an accumulation-1 epoch's; where none does, nothing is compared and
the point is listed as unmatched), the effect of accumulation (N minus 1) on train accuracy,
validation accuracy and the generalization gap, with Student-t 95% confidence intervals; and the
cost in training seconds per epoch and per optimizer step (ratio N / 1).

What each explanation predicts, and so the verdict (at the last epoch point; ``min_effect``, an
accuracy difference too small to matter, default 0.01):

* **overfitting**: the gap is larger with accumulation at matched epochs **and** still larger at
  matched optimizer steps;
* **under-training**: train accuracy is lower at matched epochs, the gap is not larger, and at
  matched optimizer steps neither train nor validation accuracy is lower;
* **no-difference**: no effect on train accuracy, validation accuracy or gap at matched epochs;
* **inconclusive**: fewer than 2 seeds, or a pattern that fits neither.

An lr-scaling arm **recovers** the accuracy lost with accumulation when its validation-accuracy
effect at matched epochs is not significantly negative; fewer steps predict recovery, overfitting
does not.

The figure that answers the question, accuracy against optimizer steps and against epochs, is
``analysis.figures.steps_figure``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.stats import MeanCI, mean_ci, run_level_mean_ci
from study import records

METRICS = ("train_accuracy", "val_accuracy", "generalization_gap")
OVERFITTING, UNDER_TRAINING, NO_DIFFERENCE, INCONCLUSIVE = (
    "overfitting",
    "under-training",
    "no-difference",
    "inconclusive",
)
DEFAULT_MIN_EFFECT = 0.01


@dataclass(frozen=True)
class Run:
    """One grid run: its design and its per-epoch history (index i = epoch i + 1)."""

    trial: int
    dataset: str
    batch_size: int
    accumulation_steps: int
    lr_scaling: str
    seed: int
    history: dict[str, list[float]] = field(repr=False)

    @property
    def epochs(self) -> int:
        return len(self.history["optimizer_steps"])

    def at(self, epoch: int, metric: str) -> float:
        return self.history[metric][epoch - 1]


def runs_from_study(study: optuna.Study) -> list[Run]:
    """The finished runs of a grid study (COMPLETE trials with a config and a history)."""
    runs = []
    for t in study.get_trials(deepcopy=False):
        cfg, history = records.config(t), records.history(t)
        if t.state != TrialState.COMPLETE or not cfg or not history:
            continue
        runs.append(
            Run(
                trial=t.number,
                dataset=cfg["dataset"],
                batch_size=cfg["batch_size"],
                accumulation_steps=cfg["accumulation_steps"],
                lr_scaling=cfg["lr_scaling"],
                seed=cfg["seed"],
                history=history,
            )
        )
    return runs


def ci_dict(m: MeanCI) -> dict[str, float]:
    return {"mean": float(m.mean), "low": float(m.low), "high": float(m.high), "n": m.n}


def lower(ci: dict[str, float], min_effect: float) -> bool:
    """Significantly below zero by at least ``min_effect``."""
    return bool(not math.isnan(ci["high"]) and ci["high"] < 0 and ci["mean"] <= -min_effect)


def higher(ci: dict[str, float], min_effect: float) -> bool:
    return bool(not math.isnan(ci["low"]) and ci["low"] > 0 and ci["mean"] >= min_effect)


@dataclass
class ArmAnalysis:
    """Everything measured for one (dataset, accumulation N, lr-scaling arm)."""

    dataset: str
    arm: str
    accumulation_steps: int
    seeds: list[int]
    batch_sizes: list[int]
    epoch_points: list[int]
    at_epochs: list[dict[str, Any]]  # per epoch point: pooled effects, then per micro-batch
    at_steps: list[dict[str, Any]]  # per exactly matched step count
    unmatched: list[dict[str, Any]]  # epoch points with no step-matched baseline epoch
    time: dict[str, dict[str, float]]  # ratio N / 1 of seconds per epoch and per optimizer step
    verdict: str
    predictions: dict[str, bool | None]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_runs(runs: list[Run], arm: str, n: int) -> dict[tuple[int, int], tuple[Run, Run]]:
    """(batch, seed) -> (accumulation-1 run, accumulation-N run of ``arm``)."""
    base = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == 1}
    acc = {(r.batch_size, r.seed): r for r in runs if r.accumulation_steps == n and r.lr_scaling == arm}
    return {key: (base[key], acc[key]) for key in sorted(base.keys() & acc.keys())}


def _effects(pairs: dict, pick) -> dict[str, Any]:
    """Pooled and per-micro-batch paired effects; ``pick(base, acc, metric)`` -> (b, a) or None."""
    out: dict[str, Any] = {}
    batches = sorted({b for b, _ in pairs})
    for metric in METRICS:
        diffs = {}
        for key, (base, acc) in pairs.items():
            values = pick(base, acc, metric)
            if values is not None:
                diffs[key] = values[1] - values[0]
        out[metric] = ci_dict(run_level_mean_ci(diffs))
        out[f"{metric}_by_batch"] = {
            str(b): ci_dict(mean_ci([d for (bb, _), d in sorted(diffs.items()) if bb == b])) for b in batches
        }
    return out


def matched_epochs(base: Run, acc: Run) -> list[tuple[int, int]]:
    """(accumulated epoch, baseline epoch) pairs with exactly equal optimizer step counts."""
    where = {int(s): e + 1 for e, s in enumerate(base.history["optimizer_steps"])}
    return [(e + 1, where[int(s)]) for e, s in enumerate(acc.history["optimizer_steps"]) if int(s) in where]


def _cost(run: Run, per: str) -> float:
    """Training seconds (evaluation excluded) per epoch or per optimizer step."""
    seconds = run.history["train_seconds"][-1]
    return seconds / (run.epochs if per == "epoch" else run.history["optimizer_steps"][-1])


def analyse_arm(
    runs: list[Run], *, arm: str, n: int, epoch_points: list[int], min_effect: float = DEFAULT_MIN_EFFECT
) -> ArmAnalysis | None:
    """The analysis of one arm, or None when no accumulated run of it has its baseline."""
    pairs = paired_runs(runs, arm, n)
    if not pairs:
        return None
    dataset = next(iter(pairs.values()))[0].dataset
    points = [e for e in epoch_points if all(e <= min(b.epochs, a.epochs) for b, a in pairs.values())]
    at_epochs = []
    for e in points:
        effects = _effects(pairs, lambda b, a, m, e=e: (b.at(e, m), a.at(e, m)))
        steps = {k: (b.at(e, "optimizer_steps"), a.at(e, "optimizer_steps")) for k, (b, a) in pairs.items()}
        at_epochs.append({"epoch": e, "optimizer_steps": {str(k): v for k, v in steps.items()}, **effects})

    # Exactly matched steps: per pair, the last accumulated epoch whose optimizer step count equals
    # a baseline epoch's (with a training subset divisible by the effective batches, the same
    # epochs for every micro-batch). A pair with no such epoch is not compared.
    last_match = {k: m[-1] for k, (b, a) in pairs.items() if (m := matched_epochs(b, a))}
    at_steps = []
    if last_match:
        matched_pairs = {k: pairs[k] for k in last_match}
        effects = _effects(
            matched_pairs,
            lambda b, a, m: (
                b.at(last_match[(b.batch_size, b.seed)][1], m),
                a.at(last_match[(b.batch_size, b.seed)][0], m),
            ),
        )
        at_steps.append(
            {
                "accumulated_epoch": sorted({e for e, _ in last_match.values()}),
                "baseline_epochs": sorted({e for _, e in last_match.values()}),
                "optimizer_steps": sorted(
                    {int(pairs[k][1].at(e, "optimizer_steps")) for k, (e, _) in last_match.items()}
                ),
                "pairs": len(last_match),
                **effects,
            }
        )
    matched_at = {k: {e for e, _ in matched_epochs(b, a)} for k, (b, a) in pairs.items()}
    unmatched = [
        {
            "epoch": e,
            "steps (baseline, accumulated)": sorted(
                {
                    (int(b.at(e, "optimizer_steps")), int(a.at(e, "optimizer_steps")))
                    for b, a in pairs.values()
                }
            ),
        }
        for e in points
        if not all(e in matched_at[k] for k in pairs)
    ]

    time = {
        name: ci_dict(
            run_level_mean_ci({key: _cost(a, per) / _cost(b, per) for key, (b, a) in pairs.items()})
        )
        for name, per in (("seconds_per_epoch", "epoch"), ("seconds_per_step", "step"))
    }

    seeds = sorted({s for _, s in pairs})
    verdict, predictions, reason = decide(at_epochs, at_steps, n_seeds=len(seeds), min_effect=min_effect)
    return ArmAnalysis(
        dataset=dataset,
        arm=arm,
        accumulation_steps=n,
        seeds=seeds,
        batch_sizes=sorted({b for b, _ in pairs}),
        epoch_points=points,
        at_epochs=at_epochs,
        at_steps=at_steps,
        unmatched=unmatched,
        time=time,
        verdict=verdict,
        predictions=predictions,
        reason=reason,
    )


def _fmt(ci: dict[str, float]) -> str:
    if math.isnan(ci["low"]):
        return f"{ci['mean']:+.3f} (n={ci['n']}, no interval)"
    return f"{ci['mean']:+.3f} (95% CI {ci['low']:+.3f} to {ci['high']:+.3f}, n={ci['n']})"


def decide(
    at_epochs: list[dict[str, Any]], at_steps: list[dict[str, Any]], *, n_seeds: int, min_effect: float
) -> tuple[str, dict[str, bool | None], str]:
    """The verdict at the last epoch point (and the last exactly step-matched epoch)."""
    if not at_epochs:
        return INCONCLUSIVE, {}, "no epoch point reached by every run"
    last = at_epochs[-1]
    steps = at_steps[-1] if at_steps else None
    gap_e, train_e, val_e = last["generalization_gap"], last["train_accuracy"], last["val_accuracy"]
    predictions: dict[str, bool | None] = {
        "gap larger at matched epochs (overfitting)": higher(gap_e, min_effect),
        "train accuracy lower at matched epochs (under-training)": lower(train_e, min_effect),
        "gap not larger at matched epochs (under-training)": not higher(gap_e, min_effect),
        "gap larger at matched steps (overfitting)": None
        if steps is None
        else higher(steps["generalization_gap"], min_effect),
        "no accuracy lost at matched steps (under-training)": None
        if steps is None
        else not (lower(steps["train_accuracy"], min_effect) or lower(steps["val_accuracy"], min_effect)),
    }
    where = f"at epoch {last['epoch']}"
    numbers = (
        f"{where}: validation accuracy {_fmt(val_e)}, train accuracy {_fmt(train_e)}, gap {_fmt(gap_e)}"
        + (
            f"; at exactly matched optimizer steps (accumulated epoch "
            f"{'/'.join(map(str, steps['accumulated_epoch']))} vs baseline epoch "
            f"{'/'.join(map(str, steps['baseline_epochs']))}): validation accuracy {_fmt(steps['val_accuracy'])}, "
            f"train accuracy {_fmt(steps['train_accuracy'])}, gap {_fmt(steps['generalization_gap'])}"
            if steps
            else "; no epoch of the accumulated runs has exactly the step count of a baseline epoch"
        )
    )
    if n_seeds < 2:
        return (
            INCONCLUSIVE,
            predictions,
            f"{n_seeds} seed: a single run per condition gives no interval; {numbers}",
        )
    p = list(predictions.values())
    if p[0] and p[3]:
        return (
            OVERFITTING,
            predictions,
            f"the gap grows with accumulation, at matched epochs and at matched steps; {numbers}",
        )
    if p[1] and p[2] and p[4]:
        return (
            UNDER_TRAINING,
            predictions,
            (
                f"train accuracy falls at matched epochs while the gap does not grow, and at matched optimizer "
                f"steps no accuracy is lost; {numbers}"
            ),
        )
    if not any(lower(c, min_effect) or higher(c, min_effect) for c in (gap_e, train_e, val_e)):
        return (
            NO_DIFFERENCE,
            predictions,
            f"no significant effect of at least {min_effect} at matched epochs; {numbers}",
        )
    return INCONCLUSIVE, predictions, f"the effects fit neither explanation; {numbers}"


def analyse(study: optuna.Study, *, min_effect: float = DEFAULT_MIN_EFFECT) -> list[ArmAnalysis]:
    """One analysis per lr-scaling arm of a grid study (arms from the study, else from its runs)."""
    runs = runs_from_study(study)
    n_values = sorted({r.accumulation_steps for r in runs if r.accumulation_steps != 1})
    points = study.user_attrs.get(records.EPOCH_POINTS) or sorted({r.epochs for r in runs})
    arms = study.user_attrs.get(records.ARMS) or sorted(
        {r.lr_scaling for r in runs if r.accumulation_steps != 1}
    )
    out = []
    for n in n_values:
        for arm in arms:
            analysis = analyse_arm(runs, arm=arm, n=n, epoch_points=list(points), min_effect=min_effect)
            if analysis is not None:
                out.append(analysis)
    return out


def recovery(analyses: list[ArmAnalysis], *, min_effect: float = DEFAULT_MIN_EFFECT) -> list[str]:
    """One sentence per scaled arm: does scaling the lr recover the validation accuracy lost?"""
    unscaled = {a.accumulation_steps: a for a in analyses if a.arm == "none"}
    lines = []
    for a in analyses:
        if a.arm == "none" or not a.at_epochs:
            continue
        val = a.at_epochs[-1]["val_accuracy"]
        ref = unscaled.get(a.accumulation_steps)
        ref_text = f" (unscaled: {_fmt(ref.at_epochs[-1]['val_accuracy'])})" if ref and ref.at_epochs else ""
        if math.isnan(val["low"]):
            outcome = "not determined (one seed: no interval)"
        elif lower(val, min_effect) or val["high"] < 0:
            outcome = "a loss remains"
        elif val["low"] >= -min_effect:
            outcome = f"recovered (the interval excludes a loss of more than {min_effect})"
        else:
            outcome = f"not determined (the interval includes no loss and a loss of more than {min_effect})"
        factor = a.accumulation_steps if a.arm == "linear" else math.sqrt(a.accumulation_steps)
        lines.append(
            f"lr scaled {a.arm} (x{factor:g}): validation accuracy effect at epoch {a.at_epochs[-1]['epoch']} "
            f"{_fmt(val)}{ref_text}: {outcome}"
        )
    return lines
