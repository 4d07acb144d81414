"""The committed outcome of an experiment: ``results/DATASET-BUDGET/``, written by ``write_results``.

``write_results`` reads the studies of one experiment (grid, search, replicate) and writes:

* ``report.md``: the answer (the verdict per lr-scaling arm with its numbers, at matched epochs and
  at exactly matched optimizer steps; training time with and without accumulation; whether tuning
  recovers the accuracy lost with accumulation; the gradient noise scale when the grid measured
  it, ``analysis.noise``), with ``figures/*.png``;
* ``verdict.json``: the same numbers, machine-readable;
* ``grid-runs.csv``, ``grid-history.csv``, ``search-trials.csv``, ``search-history.csv``,
  ``replicate-runs.csv``: the trials and their per-epoch histories (``analysis.export``);
* ``records/*.jsonl``: every settled trial whole, from which ``study.experiment`` resumes on a
  machine without the database.

The answer is drawn from the designed runs only: the grid (every seed, every lr-scaling arm) for
the verdict, the unpruned replicates of the best searched configurations for the tuning question.
The search's own trials are selected, not sampled, and Hyperband prunes accumulated trials at equal
epochs, so they feed no claim here. The storage is only read.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from scipy import stats

from analysis import noise
from analysis.document import write_png
from analysis.export import history_rows, run_rows, write_csv, write_records
from analysis.figures import steps_figure
from analysis.stats import mean_ci
from analysis.verdict import METRICS, ArmAnalysis, analyse, ci_dict, recovery, runs_from_study
from study import records
from study.cli import render_table
from study.jsonsafe import finite_or_none
from study.session import StudyError, load_studies
from study.storage import open_storage, study_exists

LABELS = {"train_accuracy": "train acc", "val_accuracy": "val acc", "generalization_gap": "gap"}


def fmt(ci: dict[str, float], digits: int = 3) -> str:
    if ci["mean"] is None or math.isnan(ci["mean"]):
        return "-"
    if math.isnan(ci["low"]):
        return f"{ci['mean']:+.{digits}f}"
    return f"{ci['mean']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]"


def ratio(ci: dict[str, float]) -> str:
    if math.isnan(ci["low"]):
        return f"{ci['mean']:.2f}x"
    return f"{ci['mean']:.2f}x [{ci['low']:.2f}, {ci['high']:.2f}]"


def welch(a: list[float], b: list[float]) -> dict[str, float]:
    """mean(b) - mean(a) with a Welch t 95% interval (independent runs, unequal variances)."""
    if len(a) < 2 or len(b) < 2:
        diff = (sum(b) / len(b) - sum(a) / len(a)) if a and b else math.nan
        return {"mean": diff, "low": math.nan, "high": math.nan, "n": min(len(a), len(b))}
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"mean": mb - ma, "low": mb - ma, "high": mb - ma, "n": min(len(a), len(b))}
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * se
    return {"mean": mb - ma, "low": mb - ma - half, "high": mb - ma + half, "n": min(len(a), len(b))}


def tuned(replicate: optuna.Study | None) -> dict[str, Any] | None:
    """Validation accuracy of the replicated best configurations, per accumulation value."""
    if replicate is None:
        return None
    by_value: dict[int, list[float]] = defaultdict(list)
    configs: dict[int, dict[str, Any]] = {}
    for t in replicate.get_trials(deepcopy=False):
        cfg, val = records.config(t), records.metric(t, "val_accuracy")
        if t.state == TrialState.COMPLETE and cfg and val is not None:
            by_value[cfg["accumulation_steps"]].append(val)
            configs[cfg["accumulation_steps"]] = {
                k: cfg[k] for k in ("lr_scaling", "base_lr", "lr", "weight_decay", "dropout", "drop_path")
            }
    if not by_value:
        return None
    values = sorted(by_value)
    out: dict[str, Any] = {
        "val_accuracy": {str(v): ci_dict(mean_ci(by_value[v])) for v in values},
        "configs": {str(v): configs[v] for v in values},
    }
    if 1 in by_value and len(values) > 1:
        out["difference"] = {str(v): welch(by_value[1], by_value[v]) for v in values if v != 1}
    return out


def scale(grid: optuna.Study) -> dict[str, Any]:
    """What the grid measured at: preset, data, epoch points, seeds."""
    configs = [cfg for t in grid.get_trials(deepcopy=False) if (cfg := records.config(t))]
    first = configs[0] if configs else {}
    return {
        "dataset": grid.user_attrs.get(records.DATASET),
        "budget": grid.user_attrs.get(records.BUDGET),
        "model": first.get("model"),
        "train_subset": first.get("train_subset"),
        "epoch_points": grid.user_attrs.get(records.EPOCH_POINTS),
        "micro_batches": sorted({c["batch_size"] for c in configs}),
        "accumulation": sorted({c["accumulation_steps"] for c in configs}),
        "seeds": sorted({c["seed"] for c in configs}),
        "base_lr": first.get("base_lr"),
        "finished_runs": sum(t.state == TrialState.COMPLETE for t in grid.get_trials(deepcopy=False)),
    }


def headline(analyses: list[ArmAnalysis], where: dict[str, Any]) -> str:
    """A sentence a reader can quote."""
    none = next((a for a in analyses if a.arm == "none"), None)
    if none is None or not none.at_epochs:
        return "No accumulated run has its accumulation-1 baseline yet: nothing to conclude."
    last = none.at_epochs[-1]
    text = (
        f"On {where['dataset']} ({where['model']}, {where['train_subset']} training images, "
        f"{len(none.seeds)} seed(s), micro-batches {', '.join(map(str, none.batch_sizes))}), accumulating "
        f"{none.accumulation_steps} micro-batches changed validation accuracy by {fmt(last['val_accuracy'])} "
        f"and the generalization gap by {fmt(last['generalization_gap'])} after {last['epoch']} epochs"
    )
    if none.at_steps:
        s = none.at_steps[-1]
        text += (
            f"; at exactly matched optimizer steps validation accuracy changed by {fmt(s['val_accuracy'])} "
            f"and the gap by {fmt(s['generalization_gap'])}"
        )
    return text + f" (95% CIs over seeds). Verdict: **{none.verdict}**."


def effect_rows(a: ArmAnalysis) -> list[list[str]]:
    """One row per epoch point and per exactly matched step count: where, then the effect of
    accumulation on each of METRICS (mean [95% CI])."""
    rows = [[f"epoch {row['epoch']}", *(fmt(row[m]) for m in METRICS)] for row in a.at_epochs]
    rows += [
        [f"matched steps (accumulated epoch {'/'.join(map(str, row['accumulated_epoch']))} = baseline epoch "
         f"{'/'.join(map(str, row['baseline_epochs']))})", *(fmt(row[m]) for m in METRICS)]
        for row in a.at_steps
    ]  # fmt: skip
    return rows


def arm_markdown(a: ArmAnalysis, figure: str | None) -> list[str]:
    """The markdown of one arm; ``figure`` is the link to its steps figure, if any."""
    lines = [f"### lr scaling `{a.arm}`, accumulation {a.accumulation_steps} vs 1", ""]
    lines += [f"**Verdict: {a.verdict}.** {a.reason}.", ""]
    header = ["where", *(LABELS[m] for m in METRICS)]
    rows = effect_rows(a)
    lines += ["Effect of accumulation (N minus 1), paired by seed, mean [95% CI], n = seeds:", ""]
    lines += [render_table(header, rows, markdown=True)]
    if a.at_epochs:
        last = a.at_epochs[-1]
        lines += [f"Per micro-batch at epoch {last['epoch']}:", ""]
        per_batch = [
            [batch, *(fmt(last[f"{m}_by_batch"][batch]) for m in METRICS)]
            for batch in map(str, a.batch_sizes)
        ]
        lines += [render_table(["micro-batch", *(LABELS[m] for m in METRICS)], per_batch, markdown=True)]
    if a.unmatched:
        lines += [
            "Epoch points with no exactly step-matched baseline epoch (not compared at matched steps): "
            + ", ".join(str(u["epoch"]) for u in a.unmatched)
            + ".",
            "",
        ]
    lines += [
        f"Training time, accumulation {a.accumulation_steps} / 1 at the same micro-batch: "
        f"seconds per epoch {ratio(a.time['seconds_per_epoch'])}, seconds per optimizer step "
        f"{ratio(a.time['seconds_per_step'])} (95% CI over seeds; more than 1x means slower with accumulation).",
        "",
    ]
    lines += [
        "Predictions: "
        + "; ".join(
            f"{k}: {'yes' if v else 'no' if v is not None else 'n/a'}" for k, v in a.predictions.items()
        )
        + ".",
        "",
    ]
    if figure is not None:
        lines += [f"![accuracy against optimizer steps and epochs, arm {a.arm}]({figure})", ""]
    return lines


def write_answer(studies: dict[str, optuna.Study], out: Path) -> list[Path]:
    """``verdict.json``, ``report.md`` and ``figures/steps-*.png`` (and ``figures/noise-scale.png``
    when the grid measured the noise scale) under ``out``; ``verdict.json`` is written once."""
    grid = studies["grid"]
    analyses = analyse(grid)
    runs = runs_from_study(grid)
    where = scale(grid)
    figures = {}
    for a in analyses:
        figure = steps_figure(
            runs, arm=a.arm, n=a.accumulation_steps, name=f"steps-{a.arm}-x{a.accumulation_steps}"
        )
        figures[(a.arm, a.accumulation_steps)] = (
            None if figure is None else write_png(figure, out / "figures")
        )
    recovered = recovery(analyses)
    tuning = tuned(studies.get("replicate"))
    summary = headline(analyses, where)
    verdict = {
        "headline": summary.replace("**", ""),
        "scale": where,
        "arms": [a.to_dict() for a in analyses],
        "lr_scaling_recovery": recovered,
        "tuned_replicates": tuning,
    }
    noise_summary = None
    if measured := noise.noise_runs(grid):  # grid runs trained with --noise-scale
        noise_summary = noise.summarize(where["dataset"], measured, studies.get("search"))
        figures["noise"] = write_png(noise.noise_figure(measured, noise_summary), out / "figures")
        verdict["noise_scale"] = noise_summary
    written = [out / "verdict.json"]
    written[0].write_text(json.dumps(finite_or_none(verdict), indent=1) + "\n")

    lines = [
        f"# Does gradient accumulation make the Swin overfit? {where['dataset']}, budget {where['budget']}",
        "",
    ]
    lines += [summary, ""]
    lines += [
        f"Scale: {where['model']}, {where['train_subset']} training images, epoch points "
        f"{'/'.join(map(str, where['epoch_points'] or []))}, micro-batches {', '.join(map(str, where['micro_batches']))}, "
        f"accumulation {' and '.join(map(str, where['accumulation']))}, Adam lr {where['base_lr']}, seeds "
        f"{', '.join(map(str, where['seeds']))} ({where['finished_runs']} finished grid runs). The unit of replication "
        "is the run: effects are paired by seed, averaged over micro-batches within a seed, n = seeds.",
        "",
    ]
    if recovered:
        lines += (
            ["## Does scaling the learning rate recover the loss?", ""] + [f"- {r}" for r in recovered] + [""]
        )
    lines += ["## The verdict per lr-scaling arm", ""]
    for a in analyses:
        figure = figures[(a.arm, a.accumulation_steps)]
        lines += arm_markdown(a, None if figure is None else f"figures/{figure.name}")
    if tuning:
        lines += ["## Can tuning recover it? The best searched configurations, re-run without pruning", ""]
        rows = []
        for value, ci in tuning["val_accuracy"].items():
            cfg = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in tuning["configs"][value].items()
            )
            rows.append([value, f"{ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}], n={ci['n']}", cfg])
        header = ["accumulation", "val acc (mean [95% CI], n)", "configuration"]
        lines.append(render_table(header, rows, markdown=True).rstrip("\n"))
        for value, diff in tuning.get("difference", {}).items():
            lines.append("")
            lines.append(
                f"Tuned accumulation {value} minus tuned accumulation 1: {fmt(diff)} (Welch 95% CI)."
            )
        lines.append("")
    if noise_summary is not None:
        lines += noise.markdown(noise_summary, f"figures/{figures['noise'].name}")
    (out / "report.md").write_text("\n".join(lines))
    written.append(out / "report.md")
    return written + [p for p in figures.values() if p is not None]


# --- the results folder ----------------------------------------------------------------------------
def existing(url: str, names: dict[str, str]) -> dict[str, optuna.Study]:
    """The studies of ``names`` (role -> name) that exist in the storage."""
    storage = open_storage(url, create=False)
    present = {role: name for role, name in names.items() if study_exists(storage, name)}
    studies = load_studies(list(present.values()), url) if present else []
    return dict(zip(present, studies, strict=True))


def write_tables(studies: dict[str, optuna.Study], out: Path) -> list[Path]:
    """Records and CSV tables of every study present."""
    written = []
    for role, study in studies.items():
        written.append(write_records(study, out / "records" / f"{role}.jsonl"))
        written.append(
            write_csv(run_rows(study), out / f"{role}-{'trials' if role == 'search' else 'runs'}.csv")
        )
        if role != "replicate":
            written.append(write_csv(history_rows(study), out / f"{role}-history.csv"))
    return written


def write_results(url: str, names: dict[str, str], out: Path) -> list[Path]:
    """Write everything of the module docstring under ``out``; returns the paths written.

    ``names`` maps roles (``grid``, ``search``, ``replicate``) to study names, as
    ``study.session.experiment_study_names`` gives them; the studies absent are skipped, except the
    grid.

    Raises:
        StudyError: the storage is unusable, or holds no grid study ``names["grid"]``.
    """
    studies = existing(url, names)
    if "grid" not in studies:
        raise StudyError(f"no grid study {names['grid']!r} in the storage: run study.experiment first")
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(studies, out)
    written += write_answer(studies, out)  # the verdict, the figures and report.md
    return written
