"""Every figure of the analysis, drawn with matplotlib as PNG bytes in memory (``document.Figure``),
most with an interactive plotly version (Optuna's ``optuna.visualization``).

The caller writes each PNG once (``document.write`` for a report, ``document.write_png`` for one
figure);
the HTML report embeds the same bytes, never reading them back.

* a study's report: ``importance_figure``, ``history_figure`` (or the Pareto front),
  ``intermediate_figure`` (pruned trials visible), ``slice_figure``, ``parallel_figure``;
* the verdict: ``steps_figure`` (accuracy and loss against optimizer steps and epochs) and
  ``progress_figure`` (validation loss against training loss);
* the model families: ``twins_figure``, (b x N) minus (bN x 1) per epoch;
* the comparison: ``comparison_figure``, the search's best so far against compute, with the grid's.
"""

from __future__ import annotations

import io
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.lib.compare import StudySummary
from analysis.lib.document import Figure, cell, plural
from analysis.lib.importance import Importance
from analysis.lib.overfitting import Run, paired_runs, twin_loss, twin_pairs
from analysis.lib.stats import mean_ci
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
COLORS = ("tab:blue", "tab:orange")  # accumulation 1, accumulation N


def _band(ax, x, values, color, style, label) -> None:
    """Mean over runs (rows of ``values``) with its 95% CI band."""
    import numpy as np

    cis = [mean_ci(list(values[:, i])) for i in range(values.shape[1])]
    mean = np.array([c.mean for c in cis])
    low = np.array([c.low if c.has_interval else c.mean for c in cis])
    high = np.array([c.high if c.has_interval else c.mean for c in cis])
    ax.plot(x, mean, style, color=color, label=label)
    ax.fill_between(x, low, high, color=color, alpha=0.15)


def steps_figure(runs: list[Run], *, arm: str, n: int, name: str) -> Figure | None:
    """Accuracy (train solid, validation dashed) and validation loss against optimizer steps and
    against epochs, for accumulation 1 and ``n`` (arm ``arm``): mean and 95% CI band over seeds, one
    column per micro-batch. Curves that fall on each other against steps mean steps are what
    matter. None when no accumulated run of the arm has its baseline."""
    import numpy as np

    paired = paired_runs(runs, arm, n)
    if not paired:
        return None
    plt = pyplot()
    batches = sorted({b for b, _ in paired})
    fig, axes = plt.subplots(4, len(batches), figsize=(4.4 * len(batches), 12), squeeze=False)
    for col, batch in enumerate(batches):
        for color, index in zip(COLORS, (0, 1), strict=True):
            group = [p[index] for (b, _), p in paired.items() if b == batch]
            epochs = [e for e in group[0].epochs if all(r.has(e) for r in group)]
            steps = np.array([group[0].at(e, "optimizer_steps") for e in epochs], dtype=float)
            label = f"accumulation {1 if index == 0 else n}"
            for metric, style, rows in (("train_accuracy", "-", (0, 1)), ("val_accuracy", "--", (0, 1)),
                                        ("val_loss", "--", (2, 3))):  # fmt: skip
                values = np.array([[r.at(e, metric) for e in epochs] for r in group], dtype=float)
                for row, x in zip(rows, (steps, np.array(epochs, dtype=float)), strict=True):
                    what = {
                        "train_accuracy": "train",
                        "val_accuracy": "validation",
                        "val_loss": "validation",
                    }[metric]
                    _band(axes[row][col], x, values, color, style, f"{label}, {what}")
        axes[0][col].set_title(f"micro-batch {batch}")
        for row, (xlabel, ylabel) in enumerate((("optimizer steps", "accuracy"), ("epochs", "accuracy"),
                                                 ("optimizer steps", "validation loss"), ("epochs", "validation loss"))):  # fmt: skip
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7, loc="lower right")
    axes[2][0].legend(fontsize=7, loc="upper right")
    seeds = len({s for _, s in paired})
    fig.suptitle(f"accumulation {n} (lr scaling {arm}) vs 1: mean and 95% CI over {seeds} seed(s)")
    fig.tight_layout()
    return Figure(
        name,
        f"Accuracy and validation loss against optimizer steps and epochs, lr scaling {arm}",
        png(fig, dpi=100),
    )


def twin_differences(pairs: list[tuple[Run, Run]]) -> tuple[list[int], list[list[float]], list[list[float]]]:
    """(b x N) minus (bN x 1) at the epochs every pair evaluated: per pair, the training loss
    difference (``twin_loss``) and the validation accuracy difference."""
    epochs = [e for e in pairs[0][1].epochs if all(acc.has(e) and twin.has(e) for acc, twin in pairs)]
    measures = [twin_loss(acc, twin) for acc, twin in pairs]
    loss = [[acc.at(e, m) - twin.at(e, m) for e in epochs] for (acc, twin), m in zip(pairs, measures, strict=True)]
    accuracy = [[acc.at(e, "val_accuracy") - twin.at(e, "val_accuracy") for e in epochs] for acc, twin in pairs]
    return epochs, loss, accuracy


def twins_figure(runs_by_family: dict[str, list[Run]], *, name: str = "twins") -> Figure | None:
    """(b x N) minus (bN x 1) per epoch, in training loss and in validation accuracy: mean and 95%
    CI band over seeds, a line per family and micro-batch. With LayerNorm the lines lie on 0 (the
    same update); with BatchNorm each micro-batch is normalized with its own statistics, and the
    line shows whether that helps or hurts. None when no family has a twin."""
    import numpy as np

    groups = [(family, b, n, pairs) for family, runs in runs_by_family.items()
              for (b, n), pairs in twin_pairs(runs).items()]  # fmt: skip
    if not groups:
        return None
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (family, b, n, pairs) in enumerate(groups):
        epochs, loss, accuracy = twin_differences(pairs)
        label = f"{family}: {b} x {n} - {b * n} x 1 ({len(pairs)} seeds)"
        for ax, values in ((loss_ax, loss), (acc_ax, accuracy)):
            _band(ax, np.array(epochs, dtype=float), np.array(values, dtype=float), f"C{i % 10}", "-", label)
    for ax, ylabel in ((loss_ax, "training loss, (b x N) - (bN x 1)"),
                       (acc_ax, "validation accuracy, (b x N) - (bN x 1)")):  # fmt: skip
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel("epochs")
        ax.set_ylabel(ylabel)
    acc_ax.legend(fontsize=7)
    fig.suptitle("Accumulation against the larger batch, per epoch: mean and 95% CI over seeds")
    fig.tight_layout()
    return Figure(name, "(b x N) minus (bN x 1) per epoch, per model family", png(fig, dpi=100))


def progress_limits(ax, pairs: list[tuple[Run, Run]], n: int) -> None:
    """Limit ``ax`` to the training progress its baselines reached (and every run's start), where the
    curves can be compared; note where accumulated runs that train further end."""
    base_x = [v for base, _ in pairs for v in base.series(base.progress) if v and v > 0]
    if not base_x:
        return
    furthest = min(base_x) / 1.05
    points = [(x, y) for pair in pairs for run in pair
              for x, y in zip(run.series(run.progress), run.series("val_loss"), strict=True) if x and x >= furthest]  # fmt: skip
    ys = [y for _, y in points]
    ax.set_xlim(max(x for x, _ in points) * 1.05, furthest)  # inverted: training goes left to right
    pad = 0.05 * (max(ys) - min(ys) or 1.0)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    beyond = [(acc.series(acc.progress)[-1], acc.series("val_loss")[-1], acc.last_epoch)
              for _, acc in pairs if acc.series(acc.progress)[-1] < furthest]  # fmt: skip
    if beyond:
        loss, val, epoch = min(beyond)
        ax.text(0.03, 0.97, f"accumulation {n} goes on to training loss {loss:.3g},\nvalidation loss {val:.3g} "
                f"(epoch {epoch}), off these axes", transform=ax.transAxes, va="top", fontsize=7)  # fmt: skip


def progress_figure(runs: list[Run], *, arm: str, n: int, name: str) -> Figure | None:
    """Validation loss against training loss (log axis, the progress measure), every run drawn, one
    column per micro-batch: accumulated curves that lie on the baseline's, only shorter or longer,
    mean under-training; curves above it mean worse generalization at the same progress. Each
    panel's axes cover its baselines' curves, where the two can be compared; an accumulated run
    that trains further (a step-matched one) leaves them, and the panel says where it ends."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    paired = paired_runs(runs, arm, n)
    if not paired:
        return None
    plt = pyplot()
    batches = sorted({b for b, _ in paired})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.4 * len(batches), 4.2), squeeze=False)
    for col, batch in enumerate(batches):
        ax = axes[0][col]
        progress_limits(ax, [pair for (b, _), pair in paired.items() if b == batch], n)
        for (b, seed), pair in paired.items():
            if b != batch:
                continue
            for color, index in zip(COLORS, (0, 1), strict=True):
                run = pair[index]
                label = (
                    f"accumulation {1 if index == 0 else n}"
                    if seed == min(s for bb, s in paired if bb == batch)
                    else None
                )
                ax.plot(
                    run.series(run.progress),
                    run.series("val_loss"),
                    color=color,
                    lw=1,
                    alpha=0.7,
                    label=label,
                )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range: no crowded minor labels
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_title(f"micro-batch {batch}")
        ax.set_xlabel(
            "training loss" + (" (eval mode)" if pair[0].progress == "train_eval_loss" else " (running)")
        )
    axes[0][0].set_ylabel("validation loss")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"validation loss against training progress, accumulation {n} (lr scaling {arm}) vs 1, each seed"
    )
    fig.tight_layout()
    return Figure(name, f"Validation loss against training loss, lr scaling {arm}", png(fig, dpi=100))


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
