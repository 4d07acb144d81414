"""The gradient noise scale of a grid, and what it predicts for accumulation (issue 13).

Runs trained with ``--noise-scale`` (``study.noise``) record per epoch the mean estimates of |G|^2
and tr(Sigma). Here they become B_simple = tr(Sigma) / |G|^2 per epoch, **pooled over the grid's
runs** (both estimates averaged over runs before the ratio, as within a run over steps: a single
epoch's |G|^2 estimate is noisy and may be negative), with the range of the runs' own values
beside it. B_simple grows as training proceeds (the gradient shrinks faster than its noise).

What it predicts (McCandlish et al. 2018): an effective batch well **below** B_simple scales almost
perfectly, so accumulating with a scaled lr loses nothing per epoch and an unscaled lr only makes
fewer steps (under-training); well **above** it, examples per step are wasted and a fixed number
of epochs must cost accuracy whatever the lr. "Near" means within a factor of 2. So an accuracy
loss at matched epochs that appears only where the effective batch exceeds B_simple is the
under-training mechanism, not overfitting.

The report (``analysis.report``) and the results (``analysis.results``) add this section when their
grid measured the noise scale; ``python -m analysis.noise_scale`` prints it for any grid study.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.document import Figure, write_png
from analysis.figures import png, pyplot
from analysis.verdict import runs_from_study
from study import records
from study.cli import render_table
from study.jsonsafe import finite_or_none

NEAR = 2.0  # an effective batch within this factor of B_simple is "near" it


@dataclass(frozen=True)
class NoiseRun:
    """One grid run's per-epoch noise measurement."""

    trial: int
    effective_batch: int
    norm_sq: list[float] = field(repr=False)  # |G|^2 estimate per epoch
    trace: list[float] = field(repr=False)  # tr(Sigma) estimate per epoch

    def b_simple(self, epoch: int) -> float:
        g2, trace = self.norm_sq[epoch - 1], self.trace[epoch - 1]
        return trace / g2 if g2 is not None and trace is not None and g2 > 0 else math.nan


def noise_runs(study: optuna.Study) -> list[NoiseRun]:
    """The finished runs of grid study ``study`` that measured the noise scale (grid runs follow
    the paper protocol: effective batch = micro-batch x accumulation steps)."""
    return [
        NoiseRun(
            trial=r.trial,
            effective_batch=r.batch_size * r.accumulation_steps,
            norm_sq=r.history["grad_norm_sq"],
            trace=r.history["grad_trace_sigma"],
        )
        for r in runs_from_study(study)
        if "grad_noise_scale" in r.history
    ]


def _finite(values: list[Any]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def per_epoch(runs: list[NoiseRun]) -> list[dict[str, Any]]:
    """Per epoch: B_simple pooled over the runs that reached it, and the runs' own range."""
    rows = []
    for epoch in range(1, max((len(r.norm_sq) for r in runs), default=0) + 1):
        reached = [r for r in runs if len(r.norm_sq) >= epoch]
        g2 = _finite([r.norm_sq[epoch - 1] for r in reached])
        trace = _finite([r.trace[epoch - 1] for r in reached])
        own = _finite([r.b_simple(epoch) for r in reached])
        pooled = (
            statistics.fmean(trace) / statistics.fmean(g2)
            if g2 and trace and statistics.fmean(g2) > 0
            else math.nan
        )
        rows.append(
            {
                "epoch": epoch,
                "b_simple": pooled,
                "runs": len(reached),
                "low": min(own, default=math.nan),
                "high": max(own, default=math.nan),
            }
        )
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


def best_search_batches(search: optuna.Study | None) -> dict[int, int]:
    """The effective batch of the best completed search trial per accumulation value."""
    if search is None:
        return {}
    best: dict[int, optuna.trial.FrozenTrial] = {}
    for t in search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cfg = records.config(t)
        if not cfg or t.value is None:
            continue
        n = cfg["accumulation_steps"]
        if n not in best or t.value > best[n].value:
            best[n] = t
    return {n: records.config(t)["effective_batch_size"] for n, t in sorted(best.items())}


def summarize(dataset: str, runs: list[NoiseRun], search: optuna.Study | None = None) -> dict[str, Any]:
    """Everything the report says about the noise scale, as plain data (``verdict.json``)."""
    curve = per_epoch(runs)
    grid_batches = sorted({r.effective_batch for r in runs})
    searched = best_search_batches(search)
    last = next((row for row in reversed(curve) if math.isfinite(row["b_simple"])), None)
    first = next((row for row in curve if math.isfinite(row["b_simple"])), None)
    at_last = {b: position(b, last["b_simple"]) for b in grid_batches} if last else {}
    at_first = {b: position(b, first["b_simple"]) for b in grid_batches} if first else {}
    return {
        "dataset": dataset,
        "runs": len(runs),
        "per_epoch": curve,
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
    """The reading a report quotes: B_simple's growth, and which effective batches sit where."""
    if last is None or first is None:
        return f"{dataset}: no positive |G|^2 estimate in {n_runs} run(s); the noise scale is not measured."

    def where(positions: dict[int, str]) -> str:
        groups = {p: [b for b, q in positions.items() if q == p] for p in ("below", "near", "above")}
        return "; ".join(f"{', '.join(map(str, batches))} {p}" for p, batches in groups.items() if batches)

    text = (
        f"{dataset}: the gradient noise scale B_simple, pooled over {n_runs} run(s), grows from "
        f"{first['b_simple']:.0f} at epoch {first['epoch']} to {last['b_simple']:.0f} at epoch {last['epoch']} "
        f"(runs {last['low']:.0f} to {last['high']:.0f}). The grid's effective batches are, at epoch "
        f"{first['epoch']}: {where(at_first)}; at epoch {last['epoch']}: {where(at_last)} "
        f"(near = within a factor {NEAR:g})."
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
        "makes fewer steps; above it a fixed number of epochs must cost accuracy whatever the lr. An "
        "accuracy loss at matched epochs that appears only where the effective batch exceeds B_simple "
        "is that under-training mechanism, not overfitting."
    )
    return text


def noise_figure(runs: list[NoiseRun], summary: dict[str, Any], *, name: str = "noise-scale") -> Figure:
    """B_simple against epochs (pooled, with the runs' own curves faint), the grid's effective
    batches as dashed lines and the best searched trials' (one per accumulation value) as markers
    at the right edge, on one log axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for r in runs:
        epochs = range(1, len(r.norm_sq) + 1)
        ax.plot(epochs, [r.b_simple(e) for e in epochs], color="tab:gray", alpha=0.25, lw=0.8)
    curve = summary["per_epoch"]
    ax.plot(
        [row["epoch"] for row in curve],
        [row["b_simple"] for row in curve],
        color="black",
        lw=2.2,
        marker="o",
        ms=3,
        label=f"B_simple, pooled over {len(runs)} runs (grey: each run)",
    )
    last = max((row["epoch"] for row in curve), default=1)
    for batch in summary["grid_effective_batches"]:  # labelled at the right edge, not in the legend
        ax.axhline(batch, ls="--", lw=0.9, color="tab:blue", alpha=0.6)
        ax.annotate(f"grid {batch}", (last + 0.3, batch), fontsize=7, color="tab:blue", va="center")
    searched = summary["best_search_effective_batches"]
    for i, (n, batch) in enumerate(searched.items()):
        ax.plot(
            [last + 1.6],
            [batch],
            marker="<",
            ms=8,
            color="tab:purple",
            ls="none",
            label="best search trial per accumulation value" if i == 0 else None,
        )
        ax.annotate(f"x{n}", (last + 1.9, batch), fontsize=7, color="tab:purple", va="center")
    ax.set_xlim(0.5, last + 2.6)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("examples per optimizer step (log)")
    ax.set_title(f"{summary['dataset']}: gradient noise scale against the batches used")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return Figure(
        name, "Gradient noise scale B_simple against epochs, with the effective batches", png(fig, dpi=110)
    )


TABLE_HEADER = ["epoch", "B_simple (pooled)", "runs' range", "runs"]


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(row["epoch"]),
            f"{row['b_simple']:.1f}",
            f"{row['low']:.1f} to {row['high']:.1f}",
            str(row["runs"]),
        ]
        for row in summary["per_epoch"]
    ]


def markdown(summary: dict[str, Any], figure: str | None) -> list[str]:
    """The report section: the sentence, the per-epoch table and the figure."""
    lines = [
        "## The gradient noise scale: where accumulation must cost accuracy",
        "",
        summary["sentence"],
        "",
    ]
    lines.append(render_table(TABLE_HEADER, table_rows(summary), markdown=True).rstrip("\n"))
    lines.append("")
    if figure is not None:
        lines += [f"![gradient noise scale against epochs]({figure})", ""]
    return lines


def write(summary: dict[str, Any], runs: list[NoiseRun], out: Path) -> list[Path]:
    """``noise-scale.md``, ``noise-scale.json`` and ``figures/noise-scale.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figure = write_png(noise_figure(runs, summary), out / "figures")
    (out / "noise-scale.json").write_text(json.dumps(finite_or_none(summary), indent=1) + "\n")
    (out / "noise-scale.md").write_text("\n".join(markdown(summary, f"figures/{figure.name}")))
    return [out / "noise-scale.md", out / "noise-scale.json", figure]
