"""The answer of a grid, as document blocks, and the committed outcome of an experiment.

``verdict_blocks`` is the one builder of the verdict's tables and sentences: the results report
(``write_results``), the study report (``analysis.report``) and ``python -m analysis.overfitting``
render the same blocks (``analysis.lib.document``), as markdown, HTML or text.

``write_results`` reads the studies of one experiment (grid, search, replicate) and writes
``results/DATASET-BUDGET/``:

* ``report.md`` with ``figures/*.png``: first the equivalence table (accumulation against the
  same update without it), then per lr-scaling arm the verdict, the predictions, the comparisons
  at matched training progress (equal training loss, best epoch), the comparisons at matched epochs
  and optimizer steps (progress, not generalization), the training time, the figures; whether
  scaling the lr and tuning recover the loss; the gradient noise scale when the grid measured it;
* ``verdict.json``: the same numbers, machine-readable, with the scale and the baseline's
  overfitting criterion;
* ``grid-runs.csv``, ``grid-history.csv``, ``search-trials.csv``, ``search-history.csv``,
  ``replicate-runs.csv``: the trials and their per-epoch histories (``analysis.lib.export``);
* ``records/*.jsonl``: every finished trial whole, from which ``study.experiment`` resumes on a
  machine without the database.

The answer is drawn from the designed runs only: the grid for the verdict, the unpruned replicates
of the best searched configurations for the tuning question. The storage is only read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.lib import noise_scale as noise
from analysis.lib.document import Block, Document, Heading, Paragraph, Table, write_markdown
from analysis.lib.export import history_rows, run_rows, write_csv, write_records
from analysis.lib.families import family_blocks, family_summary
from analysis.lib.figures import progress_figure, steps_figure, twins_figure
from analysis.lib.overfitting import (
    AT_EQUAL_LOSS,
    AT_MINIMUM,
    METRICS,
    PREDICTION_TEXT,
    ArmAnalysis,
    Row,
    Run,
    analyse,
    minimum,
    reason,
    recovery,
    runs_from_study,
    twins,
)
from analysis.lib.stats import MeanCI, mean_ci
from analysis.lib.tuning import pruning_fidelity, searches_of, tuned, tuning_blocks
from study.lib import records
from study.lib.config import validation_size
from study.lib.jsonsafe import finite_or_none
from study.lib.session import StudyError, load_studies
from study.lib.storage import open_storage, study_exists

# how a run's training seconds enter a time ratio (analysis.lib.overfitting._cost)
RUN_SECONDS = (
    "each run's median training seconds over its evaluation intervals, so that a pause or other work on "
    "the cores during part of a run does not count; runs made on different machines still differ"
)
LABELS = {
    "train_accuracy": "train acc",
    "val_accuracy": "val acc",
    "generalization_gap": "gap",
    "val_loss": "val loss",
    "rise": "rise after the minimum",
    "epoch_ratio": "epochs (x)",
    "steps_ratio": "steps (x)",
}


def cell(metric: str, ci: MeanCI) -> str:
    return ci.ratio() if metric.endswith("ratio") else ci.format()


def effect_table(rows: list[Row], metrics: tuple[str, ...]) -> Table:
    """One line per row: where, the pooled effects (mean [95% CI], n = seeds) and the pairs."""
    header = ["where", *(LABELS[m] for m in metrics), "pairs"]
    body = [[r.where, *(cell(m, r.effects[m]) for m in metrics),
             f"{r.pairs}" + (f" ({r.left_out} left out)" if r.left_out else "")] for r in rows]  # fmt: skip
    return Table(header, body)


def predictions_table(a: ArmAnalysis) -> Table:
    values = a.predictions.__dict__
    return Table(["prediction", "held"], [[PREDICTION_TEXT[k], {True: "yes", False: "no", None: "n/a"}[v]]
                                          for k, v in values.items()])  # fmt: skip


def arm_blocks(a: ArmAnalysis, runs: list[Run], *, prefix: str = "") -> list[Block]:
    """The blocks of one arm: verdict, predictions, the comparisons, time, figures."""
    blocks: list[Block] = [
        Heading(f"lr scaling `{a.arm}`, accumulation {a.accumulation_steps} vs 1 ({len(a.seeds)} seeds)", 3),
        Paragraph(f"**Verdict: {a.verdict}.** {reason(a)}."),
        predictions_table(a),
        Paragraph("At equal training loss (the baseline of the same seed interpolated at the accumulated run's "
                  "training loss, never extrapolated): accumulated minus baseline, mean [95% CI] over seeds."),
        effect_table(a.at_train_loss, AT_EQUAL_LOSS),
        Paragraph("At each run's best epoch (minimum validation loss): differences, and the ratios of the epochs "
                  "and optimizer steps at which it came; the rise is the validation loss at the most progress both "
                  "runs reached over the lowest one up to there (1.0 for a run still falling there)."),
        effect_table([a.at_minimum], AT_MINIMUM),
        effect_table([a.minimum_epoch], ("epoch_ratio",)),
        Paragraph("At matched epochs and at exactly matched optimizer steps: these measure progress, not "
                  "generalization (a run that is behind has a smaller gap by construction)."),
        effect_table(a.at_epochs + a.at_steps, METRICS),
        Paragraph(f"Training time, accumulation {a.accumulation_steps} / 1 at the same micro-batch: seconds per "
                  f"epoch {a.time['seconds_per_epoch'].ratio()}, per optimizer step {a.time['seconds_per_step'].ratio()} "
                  f"(geometric mean over seeds of {RUN_SECONDS}; `python -m benchmarks.budget_cost` measures costs side by side)."),
    ]  # fmt: skip
    for figure in (progress_figure, steps_figure):
        drawn = figure(runs, arm=a.arm, n=a.accumulation_steps,
                       name=f"{prefix}{figure.__name__.split('_')[0]}-{a.arm}-x{a.accumulation_steps}")  # fmt: skip
        if drawn is not None:
            blocks.append(drawn)
    return blocks


def equivalence_blocks(runs: list[Run]) -> list[Block]:
    """Accumulation is the larger batch: (b x N, unscaled) against (bN x 1), where both exist."""
    table = twins(runs)
    if not table:
        return []
    rows = [[f"{t.micro_batch} x {t.accumulation_steps} vs {t.micro_batch * t.accumulation_steps} x 1",
             ", ".join(map(str, t.seeds)), str(t.common_epochs), f"{t.max_train_loss_difference:.2e}",
             f"{t.max_val_accuracy_difference:.4f}", str(t.identical_through_epoch), t.seconds_per_epoch.ratio()]
            for t in table]  # fmt: skip
    header = ["runs", "seeds", "epochs compared", "largest train loss difference",
              "largest val acc difference", "train losses within 1e-4 through epoch", "seconds per epoch (x)"]  # fmt: skip
    return [
        Heading("Accumulation is the larger batch: (b x N) against (bN x 1)"),
        Paragraph("The same samples per step, the same learning rate: the same update, computed in N micro-batches "
                  "or in one. Differences are float round-off, amplified by training; the time ratio (geometric mean "
                  f"over seeds of {RUN_SECONDS}) is what accumulation itself costs."),
        Table(header, rows),
    ]  # fmt: skip


def baseline_blocks(runs: list[Run]) -> list[Block]:
    """Where the baselines end on their overfitting curves: the minimum validation loss, its epoch,
    the rise after it, the last train accuracy, per micro-batch (median over seeds)."""
    rows = []
    for batch in sorted({r.batch_size for r in runs if r.accumulation_steps == 1}):
        group = [r for r in runs if r.accumulation_steps == 1 and r.batch_size == batch]
        mins = [minimum(r) for r in group]
        rows.append([str(batch), str(len(group)), mean_ci([m.epoch for m in mins]).format(0, signed=False),
                     mean_ci([m.val_loss for m in mins]).format(3, signed=False),
                     mean_ci([r.series("val_loss")[-1] / m.val_loss for r, m in zip(group, mins, strict=True)]).ratio(),
                     mean_ci([r.series("train_accuracy")[-1] for r in group]).format(3, signed=False),
                     f"{sum(not m.reached for m in mins)}"])  # fmt: skip
    header = ["micro-batch", "runs", "epoch of the minimum", "minimum val loss", "last / minimum",
              "last train acc", "runs still falling"]  # fmt: skip
    return [
        Heading("The baselines: where each ends on its overfitting curve"),
        Paragraph("Accumulation-1 runs per micro-batch, mean [95% CI] over seeds; a run still falling has its "
                  "minimum at its last evaluated epoch."),
        Table(header, rows),
    ]  # fmt: skip


MIN_TRAIN_ACCURACY, MIN_RISE = 0.80, 1.25  # a baseline that clearly overfits by the last epoch point


def baseline_criterion(runs: list[Run], points: list[int], *, batch: int = 32) -> dict[str, Any]:
    """Does the micro-batch ``batch`` baseline clearly overfit by the last epoch point? Train
    accuracy >= 0.80 there, validation loss >= 1.25x its minimum, the minimum between the first and
    the last point: the numbers per seed and whether each holds for every seed."""
    group = [r for r in runs if r.accumulation_steps == 1 and r.batch_size == batch and r.has(points[-1])]
    per_seed = []
    for r in sorted(group, key=lambda r: r.seed):
        upto = [e for e in r.epochs if e <= points[-1]]
        losses = [r.at(e, "val_loss") for e in upto]
        best = min(range(len(losses)), key=losses.__getitem__)
        per_seed.append({"seed": r.seed, "train_accuracy": r.at(points[-1], "train_accuracy"),
                         "min_val_loss": losses[best], "min_epoch": upto[best], "rise": losses[-1] / losses[best]})  # fmt: skip
    return {
        "micro_batch": batch,
        "last_point": points[-1],
        "per_seed": per_seed,
        "train_accuracy >= 0.80": bool(per_seed) and all(s["train_accuracy"] >= MIN_TRAIN_ACCURACY for s in per_seed),
        "val loss >= 1.25x its minimum": bool(per_seed) and all(s["rise"] >= MIN_RISE for s in per_seed),
        "minimum between the first and last point": bool(per_seed) and all(points[0] < s["min_epoch"] < points[-1] for s in per_seed),
    }  # fmt: skip


def verdict_blocks(grid: optuna.Study, *, prefix: str = "", stop_at: int | None = None) -> list[Block]:
    """Everything the grid says: the equivalence table first, the baselines, the scaling recovery,
    the verdict per arm (figure names start with ``prefix``); ``stop_at``: the runs read as if they
    had stopped after that epoch (``analysis.lib.overfitting.analyse``)."""
    runs = runs_from_study(grid, stop_at=stop_at)
    analyses = analyse(grid, stop_at=stop_at)
    blocks = equivalence_blocks(runs) + baseline_blocks(runs)
    if recovered := recovery(analyses):
        blocks += [Heading("Does scaling the learning rate recover the loss?")] + [
            Paragraph(f"- {r}") for r in recovered
        ]
    blocks.append(Heading("The verdict per lr-scaling arm"))
    for a in analyses:
        blocks += arm_blocks(a, runs, prefix=prefix)
    return blocks


# --- the results folder ----------------------------------------------------------------------------
def scale(grid: optuna.Study) -> dict[str, Any]:
    """What the grid's finished runs measured at: preset, data, epoch points, seeds."""
    finished = grid.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    configs = [cfg for t in finished if (cfg := records.config(t))]
    first = configs[0] if configs else {}
    return {
        "dataset": grid.user_attrs.get(records.DATASET),
        "budget": grid.user_attrs.get(records.BUDGET),
        "model": first.get("model"),
        "train_subset": first.get("train_subset"),
        "validation_images": validation_size(first["dataset"], first["val_size"]) if "val_size" in first else None,
        "train_eval_size": first.get("train_eval_size"),
        "augment": first.get("augment"),
        "epoch_points": grid.user_attrs.get(records.EPOCH_POINTS),
        "micro_batches": sorted({c["batch_size"] for c in configs}),
        "accumulation": sorted({c["accumulation_steps"] for c in configs}),
        "seeds": sorted({c["seed"] for c in configs}),
        "base_lr": first.get("base_lr"),
        "optimizer": first.get("optimizer"),
        "finished_runs": len(finished),
    }


def headline(analyses: list[ArmAnalysis], where: dict[str, Any]) -> str:
    """A sentence a reader can quote."""
    words = ", ".join(f"{a.arm}: **{a.verdict}**" for a in analyses)
    if not words:
        return "No accumulated run has its accumulation-1 baseline yet: nothing to conclude."
    return (f"On {where['dataset']} ({where['model']}, {where['train_subset']} training images, "
            f"{len(where['seeds'])} seed(s), micro-batches {', '.join(map(str, where['micro_batches']))}), "
            f"accumulation {max(where['accumulation'])} against 1, judged at matched training progress, per "
            f"lr-scaling arm: {words}.")  # fmt: skip


def write_answer(studies: dict[str, optuna.Study], out: Path) -> list[Path]:
    """``verdict.json``, ``report.md`` and ``figures/*.png`` under ``out``."""
    grid = studies["grid"]
    analyses = analyse(grid)
    where = scale(grid)
    summary = headline(analyses, where)
    searches = searches_of(studies)
    tuning = tuned(studies.get("replicate"), searches, studies.get("search"))
    grid_runs = runs_from_study(grid)
    if tuning and searches:
        tuning["pruning_fidelity"] = pruning_fidelity(grid_runs, searches)
    blocks: list[Block] = [
        Paragraph(summary),
        Paragraph(f"Scale: {where['model']}, {where['train_subset']} training images, validation "
                  f"{where['validation_images']} images, train metrics on {where['train_eval_size']} training images (eval mode), "
                  f"epoch points {'/'.join(map(str, where['epoch_points'] or []))}, micro-batches "
                  f"{', '.join(map(str, where['micro_batches']))}, accumulation {' and '.join(map(str, where['accumulation']))}, "
                  f"{where['optimizer']} lr {where['base_lr']}, seeds {', '.join(map(str, where['seeds']))} "
                  f"({where['finished_runs']} finished grid runs). The unit of replication is the run: effects are "
                  "paired by seed, averaged over micro-batches within a seed, n = seeds."),
        *verdict_blocks(grid),
    ]  # fmt: skip
    verdict: dict[str, Any] = {
        "headline": summary.replace("**", ""),
        "scale": where,
        "arms": [{**a.to_dict(), "reason": reason(a)} for a in analyses],
        "equivalence": [t.__dict__ for t in twins(grid_runs)],
        "baseline_overfits": baseline_criterion(grid_runs, where["epoch_points"] or [])
        if where["epoch_points"]
        else None,
        "lr_scaling_recovery": recovery(analyses),
        "tuned_replicates": tuning,
    }
    if tuning:
        blocks += tuning_blocks(tuning, searches)
    controls = {role.removeprefix("grid-"): study for role, study in studies.items() if role.startswith("grid-")}
    if controls:  # the same grid for other model families (study.grid --models)
        summary_of_families = family_summary({"swin": grid, **controls}, {"swin": analyses})
        blocks += family_blocks(summary_of_families)
        drawn = twins_figure({"swin": grid_runs, **{family: runs_from_study(g) for family, g in controls.items()}})
        if drawn is not None:
            blocks.append(drawn)
        verdict["families"] = summary_of_families
    if measured := noise.noise_runs(grid):  # grid runs trained with --noise-scale
        search = list(searches.values()) or studies.get(
            "search"
        )  # the searches per value, or an older single one
        noise_summary = noise.summarize(where["dataset"], measured, search, where["epoch_points"])
        blocks += noise.blocks(noise_summary, measured)
        verdict["noise_scale"] = noise_summary
    (out / "verdict.json").write_text(json.dumps(finite_or_none(_plain(verdict)), indent=1) + "\n")
    title = f"Does gradient accumulation make the Swin overfit? {where['dataset']}, budget {where['budget']}"
    return [out / "verdict.json", *write_markdown(Document(title, tuple(blocks)), out)]


def _plain(value: Any) -> Any:
    """JSON-able: intervals and other dataclasses as dicts."""
    if isinstance(value, MeanCI):
        return {"mean": value.mean, "low": value.low, "high": value.high, "n": value.n}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _plain(value.__dict__)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


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
            write_csv(run_rows(study), out / f"{role}-{'trials' if role.startswith('search') else 'runs'}.csv")
        )
        if role != "replicate":
            written.append(write_csv(history_rows(study), out / f"{role}-history.csv"))
    return written


def write_results(url: str, names: dict[str, str], out: Path, *, tables_only: bool = False) -> list[Path]:
    """Write everything of the module docstring under ``out``; returns the paths written.

    ``names`` maps roles (``grid``, ``search``, ``replicate``) to study names, as
    ``study.lib.experiment.study_names`` gives them; the studies absent are skipped, except the
    grid. ``tables_only``: the records and CSV tables alone, no report, verdict or figures (what to
    commit of an experiment still running: its records let it resume on another machine, and a
    verdict on part of its seeds would read as an answer).

    Raises:
        StudyError: the storage is unusable, or holds no grid study ``names["grid"]``.
    """
    studies = existing(url, names)
    if "grid" not in studies:
        raise StudyError(f"no grid study {names['grid']!r} in the storage: run study.experiment first")
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(studies, out)
    if not tables_only:
        written += write_answer(studies, out)
    return written
