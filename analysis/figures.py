"""Every figure of the analysis, drawn with matplotlib as PNG bytes in memory (``document.Figure``),
most with an interactive plotly version (Optuna's ``optuna.visualization``).

The caller writes each PNG once (``document.write`` for a report, ``document.write_png`` for one
figure);
the HTML report embeds the same bytes, never reading them back.

* a study's report: ``importance_figure``, ``history_figure`` (or the Pareto front),
  ``intermediate_figure`` (pruned trials visible), ``slice_figure``, ``parallel_figure``;
* the verdict: ``steps_figure``, train and validation accuracy against optimizer steps and epochs;
* the comparison: ``comparison_figure``, the search's best so far against compute, with the grid's.
"""

from __future__ import annotations

import io
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.comparison import StudySummary
from analysis.document import Figure, cell, plural
from analysis.importance import Importance
from analysis.stats import mean_ci
from analysis.verdict import Run, paired_runs
from search_spaces import Param


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any, *, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()


# --- a study's report ----------------------------------------------------------------------------
def importance_figure(results: list[Importance], params: list[str]) -> Figure:
    """Bars at the bootstrap medians with their intervals as error bars, one panel per target shown."""
    plt = pyplot()
    import plotly.graph_objects as go

    fig, axes = plt.subplots(
        1, len(results), figsize=(4.2 * len(results), 0.5 * len(params) + 1.8), sharey=True, squeeze=False
    )
    names = list(results[0].scores)
    height = 0.8 / len(names)

    def bars(result: Importance, name: str) -> tuple[list[float], list[list[float]]]:
        cells = [result.scores[name][p] for p in params]
        medians = [c.median for c in cells]
        return medians, [[c.median - c.low for c in cells], [c.high - c.median for c in cells]]

    for ax, result in zip(axes[0], results, strict=True):
        for i, name in enumerate(names):
            ys = [j + (i - (len(names) - 1) / 2) * height for j in range(len(params))]
            medians, errors = bars(result, name)
            ax.barh(ys, medians, height=height, xerr=errors, capsize=2, error_kw={"lw": 0.8}, label=name)
        ax.set_yticks(range(len(params)), params)
        ax.invert_yaxis()
        pruned = f", {result.n_pruned} pruned" if result.n_pruned else ""
        ax.set_title(f"{result.target}\n({plural(result.n_trials, 'trial')}{pruned})", fontsize=9)
        ax.set_xlabel("normalized importance (median, 90% interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    first = results[0]
    traces = []
    for name in names:
        medians, errors = bars(first, name)
        traces.append(
            go.Bar(
                name=name,
                y=params,
                x=medians,
                orientation="h",
                error_x={"type": "data", "symmetric": False, "array": errors[1], "arrayminus": errors[0]},
            )
        )
    interactive = go.Figure(traces)
    interactive.update_layout(
        barmode="group",
        title=f"Parameter importance for {first.target} ({plural(first.n_trials, 'trial')}): median, 90% interval",
        xaxis_title="normalized importance",
        yaxis={"autorange": "reversed"},
    )
    return Figure("importance", "Parameter importance by fANOVA, PED-ANOVA and MDI", png(fig), interactive)


def history_figure(study: optuna.Study) -> Figure:
    plt = pyplot()
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
    return Figure("history", title, png(fig), interactive)


def intermediate_figure(study: optuna.Study) -> Figure | None:
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    plt = pyplot()
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
        png(fig),
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
    plt = pyplot()
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
    return Figure("slice", "Slice plot (colour: trial number)", png(fig), interactive)


def parallel_figure(study: optuna.Study, params: list[str], spec: dict[str, Param]) -> Figure:
    plt = pyplot()
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
            ax.annotate(cell(value), (i, y), xytext=(0, -4 if va == "top" else 4), textcoords="offset points",
                        ha="center", va=va, fontsize=7)  # fmt: skip
    ax.set_ylim(-0.12, 1.12)
    ax.set_xticks(range(len(params)), params, rotation=20)
    ax.set_yticks([0, 1], ["low / first choice", "high / last choice"])
    ax.grid(axis="x")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="validation accuracy")
    ax.set_title("Parallel coordinates (log axes for log-scaled parameters)")
    fig.tight_layout()
    interactive = optuna.visualization.plot_parallel_coordinate(study, params=params, **_plotly_target(study))
    return Figure("parallel", "Parallel-coordinate plot", png(fig), interactive)


# --- the verdict ---------------------------------------------------------------------------------
def steps_figure(runs: list[Run], *, arm: str, n: int, name: str) -> Figure | None:
    """Train and validation accuracy against optimizer steps (top row) and epochs (bottom row) for
    accumulation 1 and ``n`` (arm ``arm``): mean and 95% CI band over seeds, one column per
    micro-batch. If the curves fall on each other against steps, steps are what matter. None when
    no accumulated run of the arm has its baseline."""
    import numpy as np

    paired = paired_runs(runs, arm, n)
    if not paired:
        return None
    plt = pyplot()
    batches = sorted({b for b, _ in paired})
    fig, axes = plt.subplots(2, len(batches), figsize=(4.2 * len(batches), 6.4), squeeze=False, sharey=True)
    colors = {1: "tab:blue", n: "tab:orange"}
    for col, batch in enumerate(batches):
        for accumulation in (1, n):
            group = [p[0] if accumulation == 1 else p[1] for (b, _), p in paired.items() if b == batch]
            epochs = min(r.epochs for r in group)
            steps = np.array(group[0].history["optimizer_steps"][:epochs], dtype=float)
            for metric, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
                values = np.array([r.history[metric][:epochs] for r in group], dtype=float)
                cis = [mean_ci(list(values[:, i])) for i in range(epochs)]
                mean = np.array([c.mean for c in cis])
                low = np.array([c.low if not math.isnan(c.low) else c.mean for c in cis])
                high = np.array([c.high if not math.isnan(c.high) else c.mean for c in cis])
                label = (
                    f"accumulation {accumulation}, {'train' if metric == 'train_accuracy' else 'validation'}"
                )
                for row, x in enumerate((steps, np.arange(1, epochs + 1))):
                    ax = axes[row][col]
                    ax.plot(x, mean, style, color=colors[accumulation], label=label)
                    ax.fill_between(x, low, high, color=colors[accumulation], alpha=0.15)
        axes[0][col].set_title(f"micro-batch {batch}")
        axes[0][col].set_xlabel("optimizer steps")
        axes[1][col].set_xlabel("epochs")
    for row in range(2):
        axes[row][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8, loc="lower right")
    seeds = len({s for _, s in paired})
    fig.suptitle(f"accumulation {n} (lr scaling {arm}) vs 1: mean and 95% CI over {seeds} seed(s)")
    fig.tight_layout()
    return Figure(name, f"Accuracy against optimizer steps and epochs, lr scaling {arm}", png(fig, dpi=110))


# --- the comparison ------------------------------------------------------------------------------
def comparison_figure(
    curve: list[tuple[float, int, float]], grid: StudySummary, search: StudySummary, *, name: str
) -> Figure:
    """The search's best validation accuracy so far against cumulative wall seconds and epochs
    (``comparison.best_so_far``), with the grid's best and the grid's total cost as lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, index, label, grid_cost in (
        (axes[0], 0, "cumulative wall seconds", grid.wall_seconds),
        (axes[1], 1, "cumulative epochs trained", grid.epochs_trained),
    ):
        ax.step(
            [c[index] for c in curve],
            [c[2] for c in curve],
            where="post",
            marker="o",
            label=f"search {search.name}",
        )
        ax.axhline(grid.best_val_accuracy, color="tab:red", linestyle="--", label=f"grid best ({grid.name})")
        ax.axvline(grid_cost, color="tab:gray", linestyle=":", label="grid's total cost")
        ax.set_xlabel(label)
        ax.set_ylabel("best validation accuracy so far")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{search.dataset}: search vs the paper's grid")
    return Figure(name, f"Best so far against compute, grid {grid.name}", png(fig, dpi=110))
