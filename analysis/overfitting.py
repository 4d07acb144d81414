"""``python -m analysis.overfitting``: does accumulation cause overfitting or under-training?

The two explanations predict different things (DESIGN.md):

* **overfitting**: the generalization gap (train accuracy - validation accuracy) grows with
  accumulation;
* **under-training**: train accuracy itself falls with accumulation (fewer optimizer steps at a
  fixed number of epochs) while the gap does not grow.

For every dataset and learning-rate scaling rule, this command fits, within each condition (micro
batch size and epoch point), the slope of the gap and of train accuracy against
log2(accumulation steps), i.e. the change per doubling, with a 95% confidence interval
(``analysis.stats.within_condition_slope``). The verdict:

* ``overfitting``: the gap slope is significantly positive (interval above zero, at least
  ``--min-effect`` per doubling);
* ``under-training``: train accuracy's slope is significantly negative and the gap's is not
  significantly positive;
* ``no-difference``: neither.

Samples are the seeds of a grid study, or the top-k trials (by validation accuracy) of each
accumulation value in a search study. Only finished (COMPLETE) trials count. The comparison is
shown at matched epochs (the paper's comparison, and the one the verdict uses) and at matched
optimizer steps (the baseline's history at the step count the accumulated run reached).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.common import AnalysisError, load_studies
from analysis.stats import MeanCI, Slope, mean_ci, within_condition_slope
from study.jsonsafe import finite_or_none

METRICS = ("train_accuracy", "val_accuracy", "generalization_gap")
FORMATS = ("table", "markdown", "json", "csv")
OVERFITTING, UNDER_TRAINING, NO_DIFFERENCE = "overfitting", "under-training", "no-difference"
DEFAULT_MIN_EFFECT = 0.005  # accuracy per doubling of accumulation: smaller changes do not count


@dataclass
class Point:
    """One measurement: a trial at one epoch point."""

    study: str
    trial: int
    dataset: str
    lr_scaling: str
    batch_size: int
    epochs: int
    accumulation_steps: int
    seed: int
    train_accuracy: float
    val_accuracy: float
    generalization_gap: float
    optimizer_steps: int
    history: dict[str, list[float]] = field(repr=False, default_factory=dict)

    @property
    def condition(self) -> tuple[int, int]:
        return (self.batch_size, self.epochs)


def points_from_trial(study_name: str, trial: optuna.trial.FrozenTrial) -> list[Point]:
    """A grid trial gives one point per recorded epoch (``checkpoints``), any other trial one."""
    attrs = trial.user_attrs
    cfg = attrs.get("config")
    if trial.state != TrialState.COMPLETE or not cfg:
        return []
    history = attrs.get("history", {})
    base = dict(
        study=study_name,
        trial=trial.number,
        dataset=cfg["dataset"],
        lr_scaling=cfg["lr_scaling"],
        batch_size=cfg["batch_size"],
        accumulation_steps=cfg["accumulation_steps"],
        seed=cfg["seed"],
    )
    checkpoints = attrs.get("checkpoints")
    if checkpoints:
        return [
            Point(
                **base,
                epochs=int(epoch),
                train_accuracy=m["train_accuracy"],
                val_accuracy=m["val_accuracy"],
                generalization_gap=m["generalization_gap"],
                optimizer_steps=m["optimizer_steps"],
                history={k: v[: int(epoch)] for k, v in history.items()},
            )
            for epoch, m in sorted(checkpoints.items(), key=lambda kv: int(kv[0]))
        ]
    return [
        Point(
            **base,
            epochs=cfg["epochs"],
            train_accuracy=attrs["train_accuracy"],
            val_accuracy=attrs["val_accuracy"],
            generalization_gap=attrs["generalization_gap"],
            optimizer_steps=attrs["optimizer_steps"],
            history=history,
        )
    ]


def select(points: list[Point], *, top_k: int | None) -> list[Point]:
    """All points (seeds of a grid), or the best ``top_k`` by validation accuracy per
    (dataset, rule, condition, accumulation) group (a search)."""
    if top_k is None:
        return points
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.dataset, p.lr_scaling, p.condition, p.accumulation_steps)].append(p)
    chosen = []
    for members in groups.values():
        chosen += sorted(members, key=lambda p: p.val_accuracy, reverse=True)[:top_k]
    return chosen


def _ci(m: MeanCI) -> dict[str, float]:
    return {"mean": m.mean, "low": m.low, "high": m.high}


def _at_steps(history: dict[str, list[float]], steps: float) -> dict[str, float] | None:
    """The history entry whose optimizer step count is closest to ``steps``."""
    counts = history.get("optimizer_steps") or []
    if not counts or not all(k in history for k in METRICS):
        return None
    i = min(range(len(counts)), key=lambda j: abs(counts[j] - steps))
    return {"optimizer_steps": counts[i], "epoch": i + 1} | {k: history[k][i] for k in METRICS}


def verdict(gap: Slope, train: Slope, *, min_effect: float) -> tuple[str, str]:
    """The verdict and the sentence that says which test decided it."""

    def describe(name: str, s: Slope) -> str:
        return (
            f"{name} changes by {s.estimate:+.4f} per doubling of accumulation "
            f"(95% CI {s.low:+.4f} to {s.high:+.4f}, p={s.p_value:.3g}, n={s.n})"
        )

    if math.isnan(gap.estimate) or math.isnan(train.estimate):
        return NO_DIFFERENCE, (
            "not enough data for a test (needs at least two accumulation values and more "
            "points than conditions)"
        )
    if gap.significant(min_effect) > 0:
        return OVERFITTING, describe("the generalization gap", gap) + ": the gap grows with accumulation"
    if train.significant(min_effect) < 0:
        return UNDER_TRAINING, (
            describe("train accuracy", train)
            + " while "
            + describe("the gap", gap)
            + ": train accuracy falls and the gap does not grow"
        )
    return NO_DIFFERENCE, (
        describe("the gap", gap)
        + "; "
        + describe("train accuracy", train)
        + f": neither moves significantly by at least {min_effect} per doubling"
    )


def analyse(points: list[Point], *, min_effect: float = DEFAULT_MIN_EFFECT) -> list[dict[str, Any]]:
    """One analysis per (dataset, lr-scaling rule)."""
    by_key: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for p in points:
        by_key[(p.dataset, p.lr_scaling)].append(p)
    analyses = []
    for (dataset, rule), members in sorted(by_key.items()):
        groups: dict[tuple[int, int, int], list[Point]] = defaultdict(list)
        for p in members:
            groups[(*p.condition, p.accumulation_steps)].append(p)
        rows = []
        for (batch, epochs, steps), group in sorted(groups.items()):
            row: dict[str, Any] = {
                "batch_size": batch,
                "epochs": epochs,
                "accumulation_steps": steps,
                "n": len(group),
                "optimizer_steps": sum(p.optimizer_steps for p in group) / len(group),
            }
            for metric in METRICS:
                row[metric] = _ci(mean_ci([getattr(p, metric) for p in group]))
            rows.append(row)
        matched = []
        for (batch, epochs, steps), group in sorted(groups.items()):
            baseline = groups.get((batch, epochs, 1))
            if steps == 1 or not baseline:
                continue
            target = sum(p.optimizer_steps for p in group) / len(group)
            at = [m for p in baseline if (m := _at_steps(p.history, target)) is not None]
            if not at:
                continue
            matched.append(
                {
                    "batch_size": batch,
                    "epochs": epochs,
                    "accumulation_steps": steps,
                    "optimizer_steps": target,
                    "baseline_epoch": sum(m["epoch"] for m in at) / len(at),
                    **{m: _ci(mean_ci([getattr(p, m) for p in group])) for m in METRICS},
                    **{f"baseline_{k}": _ci(mean_ci([m[k] for m in at])) for k in METRICS},
                }
            )
        xs = [(p.condition, math.log2(p.accumulation_steps)) for p in members]
        gap = within_condition_slope(
            [(c, x, p.generalization_gap) for (c, x), p in zip(xs, members, strict=True)]
        )
        train = within_condition_slope(
            [(c, x, p.train_accuracy) for (c, x), p in zip(xs, members, strict=True)]
        )
        name, reason = verdict(gap, train, min_effect=min_effect)
        analyses.append(
            {
                "dataset": dataset,
                "lr_scaling": rule,
                "studies": sorted({p.study for p in members}),
                "points": len(members),
                "groups": rows,
                "matched_steps": matched,
                "tests": {"gap_slope": asdict(gap), "train_accuracy_slope": asdict(train)},
                "min_effect": min_effect,
                "verdict": name,
                "reason": reason,
            }
        )
    return analyses


def collect(studies: Iterable[optuna.Study], *, top_k: int) -> list[Point]:
    points = []
    for s in studies:
        is_grid = s.user_attrs.get("kind") == "grid"
        study_points = [p for t in s.get_trials(deepcopy=False) for p in points_from_trial(s.study_name, t)]
        points += select(study_points, top_k=None if is_grid else top_k)
    return points


# --- rendering -----------------------------------------------------------------------------------
def _fmt(ci: dict[str, float]) -> str:
    if math.isnan(ci["low"]):
        return f"{ci['mean']:.4f}"
    return f"{ci['mean']:.4f} ± {(ci['high'] - ci['low']) / 2:.4f}"


def tables(analysis: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of one analysis: at matched epochs and at matched optimizer steps."""
    groups = [
        [
            str(r["batch_size"]),
            str(r["epochs"]),
            str(r["accumulation_steps"]),
            str(r["n"]),
            f"{r['optimizer_steps']:.0f}",
            *(_fmt(r[m]) for m in METRICS),
        ]
        for r in analysis["groups"]
    ]
    matched = [
        [
            str(r["batch_size"]),
            str(r["epochs"]),
            str(r["accumulation_steps"]),
            f"{r['optimizer_steps']:.0f}",
            f"{r['baseline_epoch']:.1f}",
            *(f"{_fmt(r[m])} vs {_fmt(r['baseline_' + m])}" for m in METRICS),
        ]
        for r in analysis["matched_steps"]
    ]
    return [
        (
            "at matched epochs (mean ± 95% CI half-width)",
            ["batch", "epochs", "accum", "n", "steps", "train acc", "val acc", "gap"],
            groups,
        ),
        (
            "at matched optimizer steps (accumulated run vs accumulation 1 at the same step count)",
            ["batch", "epochs", "accum", "steps", "baseline epoch", "train acc", "val acc", "gap"],
            matched,
        ),
    ]


def title(a: dict[str, Any]) -> str:
    return f"{a['dataset']}, lr scaling {a['lr_scaling']} (studies: {', '.join(a['studies'])}; {a['points']} points)"


def render_table(analyses: list[dict[str, Any]]) -> str:
    out = []
    for a in analyses:
        out.append(title(a))
        for caption, header, rows in tables(a):
            if not rows:
                continue
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            out.append(f"  {caption}")
            out.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
            out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        out.append(f"  verdict: {a['verdict']}: {a['reason']}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_markdown(analyses: list[dict[str, Any]]) -> str:
    out = []
    for a in analyses:
        out.append(f"### {title(a)}\n")
        out.append(f"**Verdict: {a['verdict']}.** {a['reason']}.\n")
        for caption, header, rows in tables(a):
            if not rows:
                continue
            out.append(f"{caption}:\n")
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
    return "\n".join(out)


def render_json(analyses: list[dict[str, Any]]) -> str:
    return json.dumps({"analyses": finite_or_none(analyses)}, indent=2) + "\n"


def render_csv(analyses: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["dataset", "lr_scaling", "batch_size", "epochs", "accumulation_steps", "n", "optimizer_steps"]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"]
    writer.writerow([*header, "verdict"])
    for a in analyses:
        for r in a["groups"]:
            row = [
                a["dataset"],
                a["lr_scaling"],
                r["batch_size"],
                r["epochs"],
                r["accumulation_steps"],
                r["n"],
            ]
            row.append(r["optimizer_steps"])
            for m in METRICS:
                row += [r[m]["mean"], r[m]["low"], r[m]["high"]]
            writer.writerow([*row, a["verdict"]])
    return buffer.getvalue()


RENDERERS = {"table": render_table, "markdown": render_markdown, "json": render_json, "csv": render_csv}


def main(argv: list[str] | None = None) -> int:
    from study.cli import ArgumentParser, fail

    parser = ArgumentParser(
        prog="analysis.overfitting",
        description="Overfitting or under-training? Train accuracy, validation accuracy and the "
        "generalization gap per accumulation value, with 95%% confidence intervals and a verdict.",
    )
    parser.add_argument("--study", action="append", required=True, help="study name (repeatable)")
    parser.add_argument(
        "--storage", help="SQLAlchemy URL (default: $STUDY_STORAGE or sqlite:///storage/studies.db)"
    )
    parser.add_argument(
        "--top-k", type=int, default=5, help="trials per accumulation value of a search (default: 5)"
    )
    parser.add_argument(
        "--min-effect",
        type=float,
        default=DEFAULT_MIN_EFFECT,
        help=f"smallest change per doubling of accumulation that counts (default: {DEFAULT_MIN_EFFECT})",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        fail(parser.prog, f"--top-k must be >= 1; got {args.top_k}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        studies = load_studies(args.study, args.storage)
        points = collect(studies, top_k=args.top_k)
        if not points:
            raise AnalysisError(f"no finished trials with recorded metrics in {', '.join(args.study)}")
    except AnalysisError as exc:
        fail(parser.prog, str(exc))
    sys.stdout.write(RENDERERS[args.format](analyse(points, min_effect=args.min_effect)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
