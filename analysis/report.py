"""``python -m analysis.report --study NAME``: a study's report, as files and inside optuna-dashboard.

Writes ``index.html`` (self-contained: figures embedded, plotly.js inline, opens offline) and
``report.md`` (figures beside it under ``figures/``) to ``--out`` (default ``reports/NAME``):

* summary: trials by state, compute spent, the best trial (or, for an accuracy-and-time study,
  its Pareto front) with its parameters and metrics;
* parameter importance by fANOVA, PED-ANOVA and mean decrease impurity side by side, for the
  objective and for ``generalization_gap`` and ``wall_seconds`` as targets;
* optimization history, intermediate values (pruned trials visible), slice and parallel-coordinate
  plots, as PNG and as interactive plotly figures;
* a warning for every parameter whose best values sit at the edge of its range;
* the overfitting verdict and the comparison with the paper's grid when a grid study of the same
  dataset is in the storage.

The summary is also saved as the study's note, and the key figures as plotly graph objects, in the
storage (``optuna_dashboard.save_note`` / ``save_plotly_graph_object``), so the dashboard shows
them next to the trials; ``--no-dashboard`` leaves the storage untouched.
"""

from __future__ import annotations

import base64
import html
import math
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from analysis import answer, compare, verdict
from analysis.common import AnalysisError, load_studies
from search_spaces import Param
from study.storage import STORAGE_ENV

PROG = "analysis.report"
EDGE_FRACTION = 0.1  # a value in the outer 10% of its range (log-aware) is "at the edge"
NOTE_FIGURES = ("importance", "history", "parallel")  # saved into the dashboard


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
    out.append(Target("generalization_gap", lambda t: t.user_attrs.get("generalization_gap"), False))
    out.append(Target("wall_seconds", lambda t: t.user_attrs.get("wall_seconds"), False))
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


# --- the document: blocks rendered to markdown and to HTML ----------------------------------------
@dataclass
class Figure:
    name: str  # file stem under figures/
    title: str
    png: bytes
    plotly: Any = None  # a plotly Figure, when an interactive version helps


@dataclass
class Report:
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("h2", text) ("p", text) ("warn", text)
    # ("table", header, rows) ("figure", Figure) ("code", text)

    def add(self, *block: Any) -> None:
        self.blocks.append(block)


def to_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""] if report.title else []
    for kind, *rest in report.blocks:
        if kind == "h2":
            out += [f"## {rest[0]}", ""]
        elif kind == "h3":
            out += [f"### {rest[0]}", ""]
        elif kind == "p":
            out += [rest[0], ""]
        elif kind == "warn":
            out += [f"> **Warning:** {rest[0]}", ""]
        elif kind == "code":
            out += ["```", rest[0], "```", ""]
        elif kind == "table":
            header, rows = rest
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
        elif kind == "figure":
            fig = rest[0]
            out += [f"![{fig.title}](figures/{fig.name}.png)", ""]
    return "\n".join(out)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
.scroll { overflow-x: auto; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 0.8em; margin: 0.6em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
details { margin: 0.4em 0 1.4em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


def to_html(report: Report, *, interactive: bool) -> str:
    esc = html.escape
    body = [f"<h1>{esc(report.title)}</h1>"]
    for kind, *rest in report.blocks:
        if kind in ("h2", "h3"):
            body.append(f"<{kind}>{esc(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(rest[0])}</p>")
        elif kind == "warn":
            body.append(f'<div class="warn"><strong>Warning:</strong> {esc(rest[0])}</div>')
        elif kind == "code":
            body.append(f"<pre>{esc(rest[0])}</pre>")
        elif kind == "table":
            header, rows = rest
            body.append(
                '<div class="scroll"><table><thead><tr>'
                + "".join(f"<th>{esc(h)}</th>" for h in header)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                + "</tbody></table></div>"
            )
        elif kind == "figure":
            fig = rest[0]
            data = base64.b64encode(fig.png).decode("ascii")
            body.append(
                f'<figure id="{fig.name}-figure"><img src="data:image/png;base64,{data}" '
                f'alt="{esc(fig.title)}"><figcaption>{esc(fig.title)}</figcaption></figure>'
            )
            if interactive and fig.plotly is not None:
                div = fig.plotly.to_html(full_html=False, include_plotlyjs=False, div_id=f"{fig.name}-plotly")
                body.append(f"<details><summary>interactive version</summary>{div}</details>")
    script = ""
    if interactive:
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>"  # inline: the file opens offline, no CDN
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(report.title)}</title><style>{CSS}</style>{script}</head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


# --- figures --------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def importance_figure(results: list[Importance], params: list[str]) -> Figure:
    plt = _pyplot()
    import plotly.graph_objects as go

    fig, axes = plt.subplots(
        1, len(results), figsize=(4.2 * len(results), 0.5 * len(params) + 1.8), sharey=True
    )
    names = list(results[0].scores)
    height = 0.8 / len(names)
    for ax, result in zip(axes, results, strict=True):
        for i, name in enumerate(names):
            ys = [j + (i - (len(names) - 1) / 2) * height for j in range(len(params))]
            ax.barh(ys, [result.scores[name][p] for p in params], height=height, label=name)
        ax.set_yticks(range(len(params)), params)
        ax.invert_yaxis()
        ax.set_title(f"{result.target}\n({_trials(result.n_trials)})", fontsize=9)
        ax.set_xlabel("normalized importance")
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    objective = results[0]
    interactive = go.Figure(
        [
            go.Bar(name=name, y=params, x=[objective.scores[name][p] for p in params], orientation="h")
            for name in names
        ]
    )
    interactive.update_layout(
        barmode="group",
        title=f"Parameter importance for {objective.target} ({_trials(objective.n_trials)})",
        xaxis_title="normalized importance",
        yaxis={"autorange": "reversed"},
    )
    return Figure("importance", "Parameter importance by fANOVA, PED-ANOVA and MDI", _png(fig), interactive)


def history_figure(study: optuna.Study) -> Figure:
    plt = _pyplot()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        for on_front, style in ((False, {"color": "tab:gray", "alpha": 0.6}), (True, {"color": "tab:red"})):
            chosen = [t for t in complete if (t.number in front) == on_front]
            ax.scatter(
                [t.values[1] for t in chosen],
                [t.values[0] for t in chosen],
                label="Pareto front" if on_front else "other trials",
                **style,
            )
        ax.set_xlabel("training seconds")
        ax.set_ylabel("validation accuracy")
        ax.set_title("Accuracy against training time")
        interactive = optuna.visualization.plot_pareto_front(
            study, target_names=["val_accuracy", "train_seconds"]
        )
        title = "Pareto front: validation accuracy up, training seconds down"
    else:
        ordered = sorted(complete, key=lambda t: t.number)
        best, best_so_far = -math.inf, []
        for t in ordered:
            best = max(best, t.value)
            best_so_far.append(best)
        ax.scatter([t.number for t in ordered], [t.value for t in ordered], label="completed trial")
        ax.step([t.number for t in ordered], best_so_far, where="post", color="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation accuracy (last epoch)")
        ax.set_title("Optimization history")
        interactive = optuna.visualization.plot_optimization_history(study)
        title = "Optimization history"
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure("history", title, _png(fig), interactive)


def intermediate_figure(study: optuna.Study) -> Figure | None:
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colors = {TrialState.COMPLETE: "tab:blue", TrialState.PRUNED: "tab:orange", TrialState.FAIL: "tab:red"}
    labelled = set()
    for t in trials:
        steps = sorted(t.intermediate_values)
        label = None if t.state in labelled else t.state.name.lower()
        labelled.add(t.state)
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            marker="o",
            markersize=3,
            color=colors.get(t.state, "tab:gray"),
            alpha=0.8,
            label=label,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Intermediate values (pruned trials stop early)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure(
        "intermediate",
        "Validation accuracy per epoch, by trial state",
        _png(fig),
        optuna.visualization.plot_intermediate_values(study),
    )


def _axis_position(param: Param, value: Any) -> float:
    """A value's place on a [0, 1] axis (log-aware; categories evenly spaced)."""
    if param.type == "categorical":
        return param.choices.index(value) / max(len(param.choices) - 1, 1)
    lo, hi, v = float(param.low), float(param.high), float(value)
    if param.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return (v - lo) / (hi - lo) if hi > lo else 0.5


def _plotly_target(study: optuna.Study) -> dict[str, Any]:
    return (
        {"target": lambda t: t.values[0], "target_name": "val_accuracy"} if len(study.directions) > 1 else {}
    )


def slice_figure(study: optuna.Study, params: list[str], spec: dict[str, Param]) -> Figure:
    plt = _pyplot()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, params, strict=False):
        param = spec[name]
        xs = [t.params[name] for t in complete if name in t.params]
        ys = [t.values[0] for t in complete if name in t.params]
        if param.type == "categorical":
            positions = [param.choices.index(x) for x in xs]
            ax.scatter(positions, ys, c=[t.number for t in complete if name in t.params], cmap="viridis")
            ax.set_xticks(range(len(param.choices)), [str(c) for c in param.choices])
        else:
            ax.scatter(xs, ys, c=[t.number for t in complete if name in t.params], cmap="viridis")
            if param.log:
                ax.set_xscale("log")
            ax.set_xlim(param.low, param.high)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy")
    for ax in list(axes.flat)[len(params) :]:
        ax.set_visible(False)
    fig.suptitle("Slice: validation accuracy against each parameter (colour: trial number)", fontsize=10)
    fig.tight_layout()
    interactive = optuna.visualization.plot_slice(study, params=params, **_plotly_target(study))
    return Figure("slice", "Slice plot (colour: trial number)", _png(fig), interactive)


def parallel_figure(study: optuna.Study, params: list[str], spec: dict[str, Param]) -> Figure:
    plt = _pyplot()
    from matplotlib import cm, colors

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if set(params) <= set(t.params)
    ]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(params) + 2), 4.2))
    values = [t.values[0] for t in complete]
    norm = colors.Normalize(min(values, default=0.0), max(values, default=1.0))
    for t in sorted(complete, key=lambda t: t.values[0]):  # best drawn last, on top
        ax.plot(
            range(len(params)),
            [_axis_position(spec[p], t.params[p]) for p in params],
            color=cm.viridis(norm(t.values[0])),
            alpha=0.8,
        )
    for i, name in enumerate(params):  # each axis's range, bottom and top
        p = spec[name]
        low, high = (p.choices[0], p.choices[-1]) if p.type == "categorical" else (p.low, p.high)
        for y, value, va in ((0, low, "top"), (1, high, "bottom")):
            ax.annotate(_fmt(value), (i, y), xytext=(0, -4 if va == "top" else 4), textcoords="offset points",
                        ha="center", va=va, fontsize=7)  # fmt: skip
    ax.set_ylim(-0.12, 1.12)
    ax.set_xticks(range(len(params)), params, rotation=20)
    ax.set_yticks([0, 1], ["low / first choice", "high / last choice"])
    ax.grid(axis="x")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="validation accuracy")
    ax.set_title("Parallel coordinates (log axes for log-scaled parameters)")
    fig.tight_layout()
    interactive = optuna.visualization.plot_parallel_coordinate(study, params=params, **_plotly_target(study))
    return Figure("parallel", "Parallel-coordinate plot", _png(fig), interactive)


# --- assembling the report -----------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def searched_params(study: optuna.Study) -> tuple[list[str], dict[str, Param]]:
    """Every parameter the trials were sampled over, in first-seen order, with its range."""
    spec: dict[str, Param] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            spec.setdefault(name, Param.from_distribution(name, dist))
    return list(spec), spec


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


def _trial_row(t: FrozenTrial, params: list[str]) -> list[str]:
    return [
        str(t.number),
        *(_fmt(t.params.get(p)) for p in params),
        *(_fmt(t.user_attrs.get(m)) for m in TRIAL_METRICS),
    ]


def summary_blocks(study: optuna.Study, params: list[str]) -> list[tuple]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    finished = [t for t in trials if t.state.is_finished()]
    epochs = sum(compare.trial_epochs(t) for t in finished)
    seconds = sum(compare.trial_seconds(t) for t in finished)
    attrs = study.user_attrs
    blocks: list[tuple] = [
        ("h2", "Summary"),
        (
            "p",
            f"Study {study.study_name}: dataset {attrs.get('dataset', '?')}, space {attrs.get('space', '?')}, "
            f"budget {attrs.get('budget', '?')}, kind {attrs.get('kind', '?')}, "
            f"objectives {attrs.get('objectives', 'accuracy')} "
            f"({', '.join(d.name.lower() for d in study.directions)}).",
        ),
        (
            "table",
            ["state", "trials"],
            [[s, str(n)] for s, n in sorted(counts.items())] + [["all", str(len(trials))]],
        ),
        (
            "p",
            f"Compute spent (finished trials, pruned and failed included): {epochs} epochs trained, "
            f"{seconds:.1f} wall seconds ({seconds / 3600:.2f} hours).",
        ),
    ]
    header = ["trial", *params, *TRIAL_METRICS]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        blocks.append(("p", "No completed trial yet."))
    elif len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: -t.values[0])
        blocks.append(
            (
                "p",
                f"Pareto-optimal trials ({len(front)}): no other trial has both higher validation "
                "accuracy and fewer training seconds.",
            )  # fmt: skip
        )
        blocks.append(("table", header, [_trial_row(t, params) for t in front]))
    else:
        blocks.append(("p", f"Best trial: {study.best_trial.number} (last-epoch validation accuracy)."))
        blocks.append(("table", header, [_trial_row(study.best_trial, params)]))
    return blocks


def importance_blocks(results: list[Importance], params: list[str], seed: int) -> list[tuple]:
    blocks: list[tuple] = [
        ("h2", "Parameter importance"),
        (
            "p",
            "Normalized importance (each column sums to 1) over completed trials, by fANOVA "
            f"(random forest, seed {seed}), PED-ANOVA (deterministic; top-quantile trials against all) "
            f"and mean decrease impurity (random forest, seed {seed}). Few trials make all three noisy: "
            "read agreement between the columns, not the third decimal.",
        ),
    ]
    if not results:
        blocks.append(("p", "No sampled parameters yet: nothing to rank."))
    for result in results:
        names = list(result.scores)
        blocks.append(("h3", f"Target: {result.target} ({_trials(result.n_trials)})"))
        rows = [[p, *(f"{result.scores[n][p]:.3f}" for n in names)] for p in params]
        blocks.append(("table", ["parameter", *names], rows))
        blocks += [("p", f"Note: {note}") for note in dict.fromkeys(result.notes)]
    return blocks


def verdict_blocks(study: optuna.Study, grids: list[optuna.Study], out: Path) -> list[tuple]:
    """The overfitting verdict and the grid comparison, when grid studies of the dataset exist."""
    blocks: list[tuple] = [("h2", "Overfitting verdict and the paper's grid")]
    if not grids:
        blocks.append(
            (
                "p",
                "No grid study of this dataset in the storage: run python -m study.grid "
                f"--dataset {study.user_attrs.get('dataset', 'DATASET')} for the verdict and the comparison.",
            )  # fmt: skip
        )
        return blocks
    # The verdict comes from the grid's designed runs only (analysis.verdict): a search's trials are
    # selected, not sampled, and pruned at equal epochs.
    for grid_study in grids:
        analyses = verdict.analyse(grid_study)
        runs = verdict.runs_from_study(grid_study)
        blocks += [("p", line) for line in verdict.recovery(analyses)]
        for a in analyses:
            blocks.append(
                ("h3", f"{grid_study.study_name}: lr scaling {a.arm}, accumulation {a.accumulation_steps} vs 1 "
                       f"({len(a.seeds)} seed(s))")
            )  # fmt: skip
            blocks.append(("p", f"Verdict: {a.verdict}. {a.reason}."))
            rows = [[f"epoch {r['epoch']}", *(answer.fmt(r[m]) for m in verdict.METRICS)] for r in a.at_epochs]
            rows += [
                [f"matched steps (epoch {'/'.join(map(str, r['accumulated_epoch']))} vs "
                 f"{'/'.join(map(str, r['baseline_epochs']))})", *(answer.fmt(r[m]) for m in verdict.METRICS)]
                for r in a.at_steps
            ]  # fmt: skip
            blocks.append(("p", "Effect of accumulation (N minus 1), paired by seed, mean [95% CI], n = seeds:"))
            blocks.append(("table", ["where", "train acc", "val acc", "gap"], rows))
            png = out / "figures" / f"steps-{grid_study.study_name}-{a.arm}-x{a.accumulation_steps}.png"
            if verdict.plot_steps(runs, arm=a.arm, n=a.accumulation_steps, path=png):
                caption = f"Accuracy against optimizer steps and epochs, lr scaling {a.arm}"
                blocks.append(("figure", Figure(png.stem, caption, png.read_bytes())))
    if study.user_attrs.get("kind") == "grid":
        return blocks
    search = compare.summarize(study)
    for grid_study in grids:
        grid = compare.summarize(grid_study)
        if math.isnan(grid.best_val_accuracy) or math.isnan(search.best_val_accuracy):
            continue
        header, rows, line = compare.comparison(grid, search)
        blocks += [("h3", f"Search against grid {grid.name}"), ("table", header, rows), ("p", line)]
        png = out / "figures" / f"compare-{grid.name}.png"
        compare.plot(compare.best_so_far(study), grid, search, png)
        blocks.append(
            ("figure", Figure(png.stem, f"Best so far against compute, grid {grid.name}", png.read_bytes()))
        )
    return blocks


def matching_grids(study: optuna.Study) -> list[optuna.Study]:
    dataset = study.user_attrs.get("dataset")
    found = []
    for info in study._storage.get_all_studies():
        if info.user_attrs.get("kind") == "grid" and info.user_attrs.get("dataset") == dataset:
            found.append(optuna.load_study(study_name=info.study_name, storage=study._storage))
    return found


def build(
    study: optuna.Study, out: Path, *, seed: int = 0, log: Callable[[str], None] = lambda _: None
) -> tuple[Report, str]:
    """The report of ``study`` (figures written under ``out/figures``) and its summary note."""
    params, spec = searched_params(study)
    report = Report(f"Study report: {study.study_name}")
    report.blocks += summary_blocks(study, params)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    warnings_ = edge_warnings(study, params)
    log(f"importance: {len(params)} parameters, {len(complete)} completed trials, 3 evaluators")
    results = importance(study, params, seed=seed) if params else []
    figures = []
    if results and complete:
        log("figures")
        figures.append(importance_figure(results, params))
        figures.append(history_figure(study))
        figures += [f for f in (intermediate_figure(study),) if f is not None]
        figures += [slice_figure(study, params, spec), parallel_figure(study, params, spec)]

    report.add("h2", "Edge warnings")
    if warnings_:
        report.blocks += [("warn", w) for w in warnings_]
    else:
        report.add(
            "p",
            "No numeric parameter has most (and at least 2) of the top trials in the outer 10% of its range.",
        )
    note = to_markdown(Report(f"Report summary: {study.study_name}", [*report.blocks]))
    report.blocks += importance_blocks(results, params, seed)
    if results:
        note += "\n" + to_markdown(Report("", importance_blocks(results[:1], params, seed)))
    report.add("h2", "Figures")
    report.blocks += [("figure", f) for f in figures]
    if not figures:
        report.add("p", "No figures: the study has no completed trial yet.")
    log("verdict and grid comparison")
    report.blocks += verdict_blocks(study, matching_grids(study), out)
    note += (
        f"\n\nFull report (figures, importance for every target, verdict): `{out / 'index.html'}`, "
        f"written by `python -m analysis.report --study {study.study_name}`.\n"
    )
    return report, note


def check_writable(out: Path) -> None:
    """Refuse an --out where the report cannot be written, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise AnalysisError(f"cannot write the report to {out}: {exc.strerror or exc}") from None


def write(report: Report, out: Path, *, interactive: bool) -> list[Path]:
    written = []
    for kind, *rest in report.blocks:
        if kind == "figure":
            path = out / "figures" / f"{rest[0].name}.png"
            path.write_bytes(rest[0].png)
            written.append(path)
    for name, text in (
        ("report.md", to_markdown(report)),
        ("index.html", to_html(report, interactive=interactive)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def save_to_dashboard(study: optuna.Study, report: Report, note: str) -> int:
    """The summary as the study's note, the key figures as plotly graph objects; returns how many
    figures were saved."""
    import optuna_dashboard

    optuna_dashboard.save_note(study, note)
    figures = [b[1] for b in report.blocks if b[0] == "figure" and b[1].name in NOTE_FIGURES and b[1].plotly]
    for figure in figures:
        optuna_dashboard.save_plotly_graph_object(
            study, figure.plotly, graph_object_id=f"report-{figure.name}"
        )
    return len(figures)


def main(argv: list[str] | None = None) -> int:
    from study.cli import ArgumentParser, fail

    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument(
        "--storage", help=f"SQLAlchemy URL (default: ${STORAGE_ENV} or sqlite:///storage/studies.db)"
    )
    parser.add_argument("--out", help="output folder (default: reports/STUDY)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fANOVA and MDI forests (default: 0)")
    parser.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not save the summary note and figures into the storage for optuna-dashboard",
    )
    parser.add_argument(
        "--no-interactive",
        action="store_true",
        help="PNG figures only (index.html without plotly.js, ~4 MB smaller)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out or f"reports/{args.study}")
    log = (lambda _: None) if args.quiet else (lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True))
    try:
        (study,) = load_studies([args.study], args.storage)
        check_writable(out)
    except AnalysisError as exc:
        fail(PROG, str(exc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        report, note = build(study, out, seed=args.seed, log=log)
        try:
            written = write(report, out, interactive=not args.no_interactive)
        except OSError as exc:
            fail(PROG, f"cannot write the report to {out}: {exc.strerror or exc}")
        saved = None if args.no_dashboard else save_to_dashboard(study, report, note)
    print(f"report: {out / 'index.html'}")
    print(f"        {out / 'report.md'} ({len(written) - 2} figures under {out / 'figures'})")
    if saved is not None:
        print(f"dashboard: the summary note and {saved} figure(s) are saved in the study")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
