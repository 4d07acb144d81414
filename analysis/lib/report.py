"""A study's report as a document (``analysis.lib.document``), section by section; nothing is written.

``build`` returns the report and its summary note:

* **Summary**: trials by state, compute spent, the best trial (or, for an accuracy-and-time study,
  its Pareto front) with its parameters and metrics;
* **Edge warnings** (``importance.edge_warnings``);
* **Parameter importance** by fANOVA, PED-ANOVA and MDI for every target (``importance``);
* **Figures**: history (or Pareto front), intermediate values, slice, parallel coordinates, the
  importance bars (``analysis.lib.figures``);
* **Overfitting verdict and the paper's grid**, when a grid study of the same dataset is in the
  storage: the verdict of its designed runs (``analysis.lib.overfitting``) and the comparison of the search
  with it (``analysis.lib.compare``).

The note is the summary, the edge warnings and the objective's importance, for the dashboard
(``analysis.lib.publish``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from analysis.lib import compare as comparison
from analysis.lib import figures
from analysis.lib import noise_scale as noise
from analysis.lib import results as answer
from analysis.lib.document import (
    Alert,
    Block,
    Document,
    Heading,
    Paragraph,
    Table,
    cell,
    render_markdown,
)
from analysis.lib.importance import (
    BOOTSTRAP,
    Importance,
    edge_warnings,
    importance,
    importance_blocks,
    searched_params,
)
from search_spaces import Param
from study.lib import records
from study.lib.session import load_studies

TRIAL_METRICS = (
    "val_accuracy",
    "test_accuracy",
    "train_accuracy",
    "generalization_gap",
    "train_seconds",
    "wall_seconds",
    "effective_batch_size",
    "lr",
)


@dataclass(frozen=True)
class StudyReport:
    document: Document  # the whole report
    note: str  # its summary as markdown, for the dashboard's note


def _trial_row(t: FrozenTrial, params: list[str]) -> list[str]:
    return [
        str(t.number),
        *(cell(t.params.get(p)) for p in params),
        *(cell(records.metric(t, m)) for m in TRIAL_METRICS),
    ]


def summary_blocks(study: optuna.Study, params: list[str]) -> list[Block]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    finished = [t for t in trials if t.state.is_finished()]
    epochs = sum(records.epochs_trained(t) for t in finished)
    seconds = sum(comparison.trial_seconds(t) for t in finished)
    attrs = study.user_attrs
    blocks: list[Block] = [
        Heading("Summary"),
        Paragraph(
            f"Study {study.study_name}: dataset {attrs.get(records.DATASET, '?')}, "
            f"space {attrs.get(records.SPACE, '?')}, budget {attrs.get(records.BUDGET, '?')}, "
            f"kind {records.kind(study) or '?'}, objectives {attrs.get(records.OBJECTIVES, 'accuracy')} "
            f"({', '.join(d.name.lower() for d in study.directions)})."
        ),
        Table(
            ["state", "trials"],
            [[s, str(n)] for s, n in sorted(counts.items())] + [["all", str(len(trials))]],
        ),
        Paragraph(
            f"Compute spent (finished trials, pruned and failed included): {epochs} epochs trained, "
            f"{seconds:.1f} wall seconds ({seconds / 3600:.2f} hours)."
        ),
    ]
    header = ["trial", *params, *TRIAL_METRICS]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        blocks.append(Paragraph("No completed trial yet."))
    elif len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: -t.values[0])
        blocks.append(
            Paragraph(
                f"Pareto-optimal trials ({len(front)}): no other trial has both higher validation "
                "accuracy and fewer training seconds."
            )
        )
        blocks.append(Table(header, [_trial_row(t, params) for t in front]))
    else:
        blocks.append(Paragraph(f"Best trial: {study.best_trial.number} (last-epoch validation accuracy)."))
        blocks.append(Table(header, [_trial_row(study.best_trial, params)]))
    return blocks


def edge_blocks(study: optuna.Study, params: list[str]) -> list[Block]:
    blocks: list[Block] = [Heading("Edge warnings")]
    warnings_ = edge_warnings(study, params)
    if warnings_:
        return blocks + [Alert(w) for w in warnings_]
    return blocks + [
        Paragraph(
            "No numeric parameter has most (and at least 2) of the top trials in the outer 10% of its range."
        )
    ]


def figure_blocks(
    study: optuna.Study, results: list[Importance], params: list[str], spec: dict[str, Param]
) -> list[Block]:
    blocks: list[Block] = [Heading("Figures")]
    if not results or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return blocks + [Paragraph("No figures: the study has no completed trial yet.")]
    shown = [r for r in results if r.shown]
    if shown:
        blocks.append(figures.importance_figure(shown, params))
    blocks.append(figures.history_figure(study))
    if (intermediate := figures.intermediate_figure(study)) is not None:
        blocks.append(intermediate)
    return blocks + [figures.slice_figure(study, params, spec), figures.parallel_figure(study, params, spec)]


def verdict_blocks(study: optuna.Study, grids: list[optuna.Study]) -> list[Block]:
    """The overfitting verdict and the grid comparison, when grid studies of the dataset exist."""
    blocks: list[Block] = [Heading("Overfitting verdict and the paper's grid")]
    if not grids:
        blocks.append(
            Paragraph(
                "No grid study of this dataset in the storage: run python -m study.grid "
                f"--dataset {study.user_attrs.get(records.DATASET, 'DATASET')} for the verdict and the comparison."
            )
        )
        return blocks
    # The verdict comes from the grid's designed runs only (analysis.lib.overfitting): a search's trials are
    # selected, not sampled, and pruned at equal epochs.
    for grid_study in grids:
        blocks.append(Heading(f"Grid {grid_study.study_name}", 3))
        blocks += [demote(b) for b in answer.verdict_blocks(grid_study, prefix=f"{grid_study.study_name}-")]
    blocks += noise_blocks(grids, None if records.kind(study) == records.GRID else study)
    if records.kind(study) == records.GRID:
        return blocks
    search = comparison.summarize(study)
    for grid_study in grids:
        grid = comparison.summarize(grid_study)
        if math.isnan(grid.best_val_accuracy) or math.isnan(search.best_val_accuracy):
            continue
        header, rows, line = comparison.comparison(grid, search)
        blocks += [Heading(f"Search against grid {grid.name}", 3), Table(header, rows), Paragraph(line)]
        curve = comparison.best_so_far(study)
        blocks.append(figures.comparison_figure(curve, grid, search, name=f"compare-{grid.name}"))
    return blocks


def demote(block: Block) -> Block:
    """A heading one level lower (the verdict's sections sit under the report's)."""
    return Heading(block.text, 3) if isinstance(block, Heading) else block


def noise_blocks(grids: list[optuna.Study], search: optuna.Study | None) -> list[Block]:
    """The gradient noise scale of the grids that measured it (analysis.lib.noise_scale)."""
    blocks: list[Block] = []
    for grid_study in grids:
        if runs := noise.noise_runs(grid_study):
            summary = noise.summarize(
                grid_study.user_attrs.get(records.DATASET, "?"),
                runs,
                search,
                grid_study.user_attrs.get(records.EPOCH_POINTS),
            )
            title = f"{grid_study.study_name}: the gradient noise scale"
            blocks += [
                demote(b)
                for b in noise.blocks(summary, runs, name=f"noise-{grid_study.study_name}", title=title)
            ]
    return blocks


def matching_grids(study: optuna.Study, url: str) -> list[optuna.Study]:
    """The grid studies of the study's dataset in the storage at ``url``."""
    dataset = study.user_attrs.get(records.DATASET)
    names = [
        s.study_name
        for s in optuna.get_all_study_summaries(storage=url, include_best_trial=False)
        if records.kind(s) == records.GRID and s.user_attrs.get(records.DATASET) == dataset
    ]
    return load_studies(names, url) if names else []


def build(
    study: optuna.Study,
    url: str,
    out: Path,
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP,
    log: Callable[[str], None] = lambda _: None,
) -> StudyReport:
    """The report of ``study`` and its summary note. Grid studies of the same dataset are looked
    for in the storage at ``url``; ``out`` is the folder the caller will write the report to (the
    note names it); ``resamples`` bootstrap resamples per importance target."""
    params, spec = searched_params(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    head = summary_blocks(study, params) + edge_blocks(study, params)
    log(
        f"importance: {len(params)} parameters, {len(complete)} completed trials, 3 evaluators, "
        f"{resamples} bootstrap resamples per target"
    )
    results = importance(study, params, seed=seed, resamples=resamples) if params else []
    if results and complete:
        log("figures")
    figure_part = figure_blocks(study, results, params, spec)
    log("verdict and grid comparison")
    blocks = [*head, *importance_blocks(results, params, seed, resamples), *figure_part]
    blocks += verdict_blocks(study, matching_grids(study, url))
    document = Document(f"Study report: {study.study_name}", tuple(blocks))

    note = render_markdown(Document(f"Report summary: {study.study_name}", tuple(head)))
    if results:  # the objective over completed trials, and at the rung over every trial that reached it
        objective = [results[0], *(r for r in results if " at epoch " in r.target)]
        note += "\n" + render_markdown(
            Document("", tuple(importance_blocks(objective, params, seed, resamples)))
        )
    note += (
        f"\n\nFull report (figures, importance for every target, verdict): `{out / 'index.html'}`, "
        f"written by `python -m analysis.report --study {study.study_name}`.\n"
    )
    return StudyReport(document, note)
