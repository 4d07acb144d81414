"""The gradient noise scale of a grid, and what it predicts for accumulation.

Runs trained with ``--noise-scale`` (``study.lib.noise``) record, at each evaluated epoch, the mean
estimates of |G|^2 and tr(Sigma) over the steps since the previous one. Each run's B_simple =
tr(Sigma) / |G|^2 per epoch is summarized over the grid's runs (every micro-batch, accumulation and
seed) as the **median and a 95% interval of the runs' values** (their 2.5th and 97.5th
percentiles): a ratio of means pooled over runs would weight each run by its |G|^2. A run whose
|G|^2 estimate is not positive at an epoch has no value there. The reading (first and last epoch)
and the table use the epochs at which at least half the runs have a value, so that a few longer
runs (the step-matched ones) do not stand for the grid; every epoch is in ``per_epoch``. Beside it,
each run configuration (the runs that differ only by seed) gets its B_simple at the grid's epoch
points: the geometric mean over its seeds with a 95% interval. B_simple grows as training proceeds
(the gradient shrinks faster than its noise).

What it predicts (McCandlish et al. 2018): an effective batch well **below** B_simple scales almost
perfectly, so accumulating with a scaled lr loses nothing per epoch and an unscaled lr only makes
fewer steps; well **above** it, examples per step are wasted and a fixed number of epochs must cost
accuracy whatever the lr. "Near" means within a factor of 2 of the median. The large-batch
generalization account predicts a loss that grows with the batch as well, so the noise scale says
*where* accumulation costs steps, not which explanation holds: that is the verdict's job
(``analysis.lib.overfitting``, at matched training progress).

The report (``analysis.report``) and the results (``analysis.results``) add this section when their
grid measured the noise scale; ``python -m analysis.noise_scale`` prints it for any grid study.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.lib.document import (
    Block,
    Document,
    Figure,
    Heading,
    Paragraph,
    Table,
    render_markdown,
    write_png,
)
from analysis.lib.figures import png, pyplot
from analysis.lib.overfitting import runs_from_study
from analysis.lib.stats import EMPTY, MeanCI, percentile_interval, ratio_ci
from study.lib import records
from study.lib.jsonsafe import finite_or_none

NEAR = 2.0  # an effective batch within this factor of the median B_simple is "near" it
SHARED = 0.5  # an epoch enters the reading and the table where at least this share of the runs has a value


@dataclass(frozen=True)
class NoiseRun:
    """One grid run's noise measurement at its evaluated epochs."""

    trial: int
    effective_batch: int
    seed: int
    epochs: list[int] = field(repr=False)
    norm_sq: list[float] = field(repr=False)  # |G|^2 estimate per evaluated epoch
    trace: list[float] = field(repr=False)  # tr(Sigma) estimate per evaluated epoch
    train_loss: list[float] = field(repr=False)  # the progress measure at those epochs
    accumulation_steps: int = 1
    configuration: str = ""  # "b x N" (with the lr rule of an accumulated run): runs that differ only by seed

    def b_simple(self, epoch: int) -> float:
        if epoch not in self.epochs:
            return math.nan
        i = self.epochs.index(epoch)
        g2, trace = self.norm_sq[i], self.trace[i]
        return trace / g2 if g2 is not None and trace is not None and g2 > 0 else math.nan


def noise_runs(study: optuna.Study) -> list[NoiseRun]:
    """The finished runs of grid study ``study`` that measured the noise scale (grid runs follow
    the paper protocol: effective batch = micro-batch x accumulation steps)."""
    return [
        NoiseRun(
            r.trial,
            r.effective_batch,
            r.seed,
            r.epochs,
            r.history["grad_norm_sq"],
            r.history["grad_trace_sigma"],
            r.series(r.progress),
            r.accumulation_steps,
            f"{r.batch_size} x {r.accumulation_steps}"
            + (f" {r.lr_scaling}" if r.accumulation_steps > 1 else ""),
        )  # fmt: skip
        for r in runs_from_study(study)
        if "grad_noise_scale" in r.history
    ]


def per_epoch(runs: list[NoiseRun]) -> list[dict[str, Any]]:
    """Per epoch that some run evaluated: the median and 95% interval of the runs' B_simple, and
    how many runs had a value."""
    rows = []
    for epoch in sorted({e for r in runs for e in r.epochs}):
        values = [v for r in runs if math.isfinite(v := r.b_simple(epoch))]
        median, low, high = percentile_interval(values)
        rows.append({"epoch": epoch, "b_simple": median, "low": low, "high": high, "runs": len(values)})
    return rows


def position(batch: int, b_simple: float) -> str:
    """``below``, ``near`` (within a factor NEAR) or ``above`` B_simple."""
    if not math.isfinite(b_simple) or b_simple <= 0:
        return "unknown"
    if batch * NEAR < b_simple:
        return "below"
    if batch > b_simple * NEAR:
        return "above"
    return "near"


def best_search_batches(search: optuna.Study | list[optuna.Study] | None) -> dict[int, int]:
    """The effective batch of the best completed search trial per accumulation value (over one
    search, or over the searches of the values)."""
    searches = [] if search is None else search if isinstance(search, list) else [search]
    best: dict[int, optuna.trial.FrozenTrial] = {}
    trials = [t for s in searches for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    for t in trials:
        cfg = records.config(t)
        if not cfg or t.value is None:
            continue
        n = cfg["accumulation_steps"]
        if n not in best or t.value > best[n].value:
            best[n] = t
    return {n: records.config(t)["effective_batch_size"] for n, t in sorted(best.items())}


def per_configuration(runs: list[NoiseRun], epochs: list[int]) -> list[dict[str, Any]]:
    """B_simple of each run configuration (the runs that differ only by seed) at ``epochs``: the
    geometric mean over its seeds with a 95% interval (``ratio_ci``: B_simple is a positive scale),
    ordered by effective batch, the (bN x 1) run before its (b x N) twins."""
    groups: dict[str, list[NoiseRun]] = {}
    for r in sorted(runs, key=lambda r: (r.effective_batch, r.accumulation_steps, r.configuration)):
        groups.setdefault(r.configuration, []).append(r)
    rows = []
    for name, group in groups.items():
        at = {e: [v for r in group if math.isfinite(v := r.b_simple(e))] for e in epochs}
        cis = {e: ratio_ci(values) if values else EMPTY for e, values in at.items()}
        rows.append({"configuration": name, "effective_batch": group[0].effective_batch,
                     "at_epoch": [{"epoch": e, **asdict(ci)} for e, ci in cis.items()]})  # fmt: skip
    return rows


def shared_epochs(curve: list[dict[str, Any]], n_runs: int) -> list[dict[str, Any]]:
    """The rows of ``curve`` at which at least half of the ``n_runs`` runs have a value: the
    reading and the table stop where most runs stop, so that one longer run (a step-matched one)
    does not stand for the grid."""
    return [row for row in curve if row["runs"] > 0 and row["runs"] >= SHARED * n_runs]


def summarize(
    dataset: str,
    runs: list[NoiseRun],
    search: optuna.Study | list[optuna.Study] | None = None,
    epoch_points: list[int] | None = None,
) -> dict[str, Any]:
    """Everything the report says about the noise scale, as plain data (``verdict.json``); the
    per-configuration table is read at the grid's ``epoch_points`` that most runs reached (else at
    the first and last such epoch)."""
    curve = per_epoch(runs)
    grid_batches = sorted({r.effective_batch for r in runs})
    searched = best_search_batches(search)
    shared = [row for row in shared_epochs(curve, len(runs)) if math.isfinite(row["b_simple"])]
    first, last = (shared[0], shared[-1]) if shared else (None, None)
    reached = [row["epoch"] for row in shared]
    columns = [e for e in epoch_points or [] if e in reached] or sorted(
        {reached[0], reached[-1]} if reached else ()
    )
    at_last = {b: position(b, last["b_simple"]) for b in grid_batches} if last else {}
    at_first = {b: position(b, first["b_simple"]) for b in grid_batches} if first else {}
    return {
        "dataset": dataset,
        "runs": len(runs),
        "per_epoch": curve,
        "shared_epochs": reached,
        "per_configuration": per_configuration(runs, columns),
        "grid_effective_batches": grid_batches,
        "best_search_effective_batches": {str(n): b for n, b in searched.items()},
        "last_epoch": last["epoch"] if last else None,
        "positions_at_last_epoch": {str(b): p for b, p in at_last.items()},
        "positions_at_first_epoch": {str(b): p for b, p in at_first.items()},
        "sentence": sentence(dataset, len(runs), first, last, at_first, at_last, searched),
    }


def sentence(
    dataset: str,
    n_runs: int,
    first: dict[str, Any] | None,
    last: dict[str, Any] | None,
    at_first: dict[int, str],
    at_last: dict[int, str],
    searched: dict[int, int],
) -> str:
    """The reading a report quotes: how B_simple changes over training (grows, falls, or changes little:
    within 10%), and which effective batches sit where."""
    if last is None or first is None:
        return f"{dataset}: no positive |G|^2 estimate in {n_runs} run(s); the noise scale is not measured."

    def where(positions: dict[int, str]) -> str:
        groups = {p: [b for b, q in positions.items() if q == p] for p in ("below", "near", "above")}
        return "; ".join(f"{', '.join(map(str, batches))} {p}" for p, batches in groups.items() if batches)

    ratio = last["b_simple"] / first["b_simple"]
    trend = "grows" if ratio > 1.1 else "falls" if ratio < 1 / 1.1 else "changes little"
    text = (
        f"{dataset}: the gradient noise scale B_simple, the median of {n_runs} run(s), {trend} from "
        f"{first['b_simple']:.0f} at epoch {first['epoch']} (95% of runs {first['low']:.0f} to {first['high']:.0f}) "
        f"to {last['b_simple']:.0f} at epoch {last['epoch']} ({last['low']:.0f} to {last['high']:.0f}). "
        f"The grid's effective batches are, at epoch {first['epoch']}: {where(at_first)}; at epoch "
        f"{last['epoch']}: {where(at_last)} (near = within a factor {NEAR:g} of the median)."
    )
    if searched:
        text += (
            " The best searched trials used effective batches "
            + ", ".join(
                f"{b} (accumulation {n}, {position(b, last['b_simple'])})" for n, b in searched.items()
            )
            + "."
        )
    text += (
        " Below B_simple a larger batch with a scaled lr loses nothing per epoch, so an unscaled lr only "
        "makes fewer steps; above it a fixed number of epochs must cost accuracy whatever the lr. This "
        "says where accumulation costs optimizer steps; which explanation holds is read at matched "
        "training progress (the verdict)."
    )
    return text


def noise_figure(runs: list[NoiseRun], summary: dict[str, Any], *, name: str = "noise-scale") -> Figure:
    """B_simple of every run against epochs (left: the median and 95% interval over runs, each run
    faint; the grid's effective batches dashed, the best searched trials' as markers) and against
    the run's training loss (right), on log axes."""
    plt = pyplot()
    fig, (ax, by_loss) = plt.subplots(1, 2, figsize=(12, 4.6))
    for r in runs:
        values = [r.b_simple(e) for e in r.epochs]
        ax.plot(r.epochs, values, color="tab:gray", alpha=0.25, lw=0.8)
        by_loss.plot(r.train_loss, values, color="tab:gray", alpha=0.35, lw=0.8)
    shared = set(summary["shared_epochs"])  # the median where at least half the runs have a value
    curve = [row for row in summary["per_epoch"] if row["epoch"] in shared]
    epochs = [row["epoch"] for row in curve]
    ax.plot(
        epochs, [row["b_simple"] for row in curve], color="black", lw=2, label=f"median of {len(runs)} runs"
    )
    ax.fill_between(epochs, [row["low"] for row in curve], [row["high"] for row in curve], color="black",
                    alpha=0.12, label="95% of runs")  # fmt: skip
    last = max((row["epoch"] for row in summary["per_epoch"]), default=1)
    for batch in summary["grid_effective_batches"]:  # labelled at the right edge, not in the legend
        for axis in (ax, by_loss):
            axis.axhline(batch, ls="--", lw=0.9, color="tab:blue", alpha=0.6)
        ax.annotate(f"grid {batch}", (last * 1.12, batch), fontsize=7, color="tab:blue", va="center")
    for i, (n, batch) in enumerate(summary["best_search_effective_batches"].items()):
        ax.plot([last * 1.03], [batch], marker="<", ms=8, color="tab:purple", ls="none",
                label="best search trial per accumulation value" if i == 0 else None)  # fmt: skip
        ax.annotate(f"x{n}", (last * 1.05, batch), fontsize=7, color="tab:purple", va="center")
    ax.set_xlim(0, last * 1.25)
    ax.set_xlabel("epoch")
    by_loss.set_xscale("log")
    by_loss.invert_xaxis()
    by_loss.set_xlabel("training loss (each run)")
    for axis in (ax, by_loss):
        axis.set_yscale("log")
        axis.set_ylabel("examples per optimizer step (log)")
    ax.set_title(f"{summary['dataset']}: B_simple per run against epochs")
    by_loss.set_title("B_simple per run against training loss")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return Figure(
        name, "Gradient noise scale B_simple per run, with the effective batches", png(fig, dpi=100)
    )


TABLE_HEADER = ["epoch", "B_simple (median of runs)", "95% of runs", "runs"]


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per epoch that at least half the runs evaluated (every epoch is in ``per_epoch``)."""
    shared = set(summary["shared_epochs"])
    return [
        [
            str(row["epoch"]),
            f"{row['b_simple']:.1f}",
            f"{row['low']:.1f} to {row['high']:.1f}",
            str(row["runs"]),
        ]
        for row in summary["per_epoch"]
        if row["epoch"] in shared
    ]


def configuration_table(summary: dict[str, Any]) -> Table:
    """One row per run configuration: B_simple at the chosen epochs, geometric mean [95% CI] (seeds)."""
    rows = summary["per_configuration"]
    epochs = [at["epoch"] for at in rows[0]["at_epoch"]] if rows else []

    def cell(at: dict[str, Any]) -> str:
        ci = MeanCI(at["mean"], at["low"], at["high"], at["n"])
        if math.isnan(ci.mean):
            return "-"
        interval = f" [{ci.low:.0f}, {ci.high:.0f}]" if ci.has_interval else ""
        return f"{ci.mean:.0f}{interval} ({ci.n})"

    return Table(["run", "effective batch", *(f"epoch {e}" for e in epochs)],
                 [[r["configuration"], str(r["effective_batch"]), *map(cell, r["at_epoch"])] for r in rows])  # fmt: skip


def blocks(
    summary: dict[str, Any],
    runs: list[NoiseRun],
    *,
    name: str = "noise-scale",
    title: str = "The gradient noise scale: where accumulation costs optimizer steps",
) -> list[Block]:
    """The section: the sentence, B_simple per run configuration, the per-epoch table and the figure."""
    return [
        Heading(title),
        Paragraph(summary["sentence"]),
        Paragraph(
            "Per run configuration (the runs that differ only by seed): B_simple, geometric mean over "
            "the seeds [95% CI] (seeds)."
        ),
        configuration_table(summary),
        Paragraph(
            "Per epoch that at least half the runs evaluated: the median over all runs and the range of 95% "
            "of them."
        ),
        Table(TABLE_HEADER, table_rows(summary)),
        noise_figure(runs, summary, name=name),
    ]


def write(summary: dict[str, Any], runs: list[NoiseRun], out: Path) -> list[Path]:
    """``noise-scale.md``, ``noise-scale.json`` and ``figures/noise-scale.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    document = Document("", tuple(blocks(summary, runs)))
    figure = write_png(document.figures()[0], out / "figures")
    (out / "noise-scale.json").write_text(json.dumps(finite_or_none(summary), indent=1) + "\n")
    (out / "noise-scale.md").write_text(render_markdown(document))
    return [out / "noise-scale.md", out / "noise-scale.json", figure]
