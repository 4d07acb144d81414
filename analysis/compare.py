"""``python -m analysis.compare --grid NAME --search NAME``: the search against the paper's grid.

Prints, for each study, the best validation accuracy (and the test accuracy of that trial or grid
point) and the compute spent (epochs trained and wall seconds, pruned and failed trials included),
and draws the search's best-so-far validation accuracy against cumulative compute, with the grid's
best as a horizontal line, to a PNG.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from analysis.common import AnalysisError, load_studies
from study.jsonsafe import finite_or_none

FORMATS = ("table", "markdown", "json")


@dataclass
class StudySummary:
    name: str
    dataset: str
    trials: int
    best_val_accuracy: float
    best_test_accuracy: float
    best_where: str  # "trial 7" or "trial 2 at epoch 20"
    epochs_trained: int
    wall_seconds: float


def trial_epochs(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("epochs_trained", len(trial.intermediate_values)))


def trial_seconds(trial: FrozenTrial) -> float:
    seconds = trial.user_attrs.get("wall_seconds")
    if seconds is None and trial.duration is not None:  # a failed trial may have no metrics
        seconds = trial.duration.total_seconds()
    return float(seconds or 0.0)


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))


def _dataset(study: optuna.Study) -> str:
    for t in study.get_trials(deepcopy=False):
        if "config" in t.user_attrs:
            return t.user_attrs["config"]["dataset"]
    return str(study.user_attrs.get("dataset", "?"))


def summarize(study: optuna.Study) -> StudySummary:
    """Best validation accuracy (a grid: over every recorded epoch point) and compute spent."""
    trials = _finished(study)
    best = (-math.inf, math.nan, "none")
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        for epoch, m in (t.user_attrs.get("checkpoints") or {}).items():
            if m["val_accuracy"] > best[0]:
                best = (
                    m["val_accuracy"],
                    m.get("test_accuracy", math.nan),
                    f"trial {t.number} at epoch {epoch}",
                )
        if "checkpoints" not in t.user_attrs and t.values and t.values[0] > best[0]:
            best = (t.values[0], t.user_attrs.get("test_accuracy", math.nan), f"trial {t.number}")
    return StudySummary(
        name=study.study_name,
        dataset=_dataset(study),
        trials=len(trials),
        best_val_accuracy=best[0] if best[0] > -math.inf else math.nan,
        best_test_accuracy=best[1],
        best_where=best[2],
        epochs_trained=sum(trial_epochs(t) for t in trials),
        wall_seconds=sum(trial_seconds(t) for t in trials),
    )


def best_so_far(study: optuna.Study) -> list[tuple[float, int, float]]:
    """(cumulative wall seconds, cumulative epochs, best validation accuracy so far) per trial."""
    curve, seconds, epochs, best = [], 0.0, 0, -math.inf
    for t in _finished(study):
        seconds += trial_seconds(t)
        epochs += trial_epochs(t)
        if t.state == TrialState.COMPLETE and t.values:  # values[0]: validation accuracy
            best = max(best, t.values[0])
        curve.append((seconds, epochs, best if best > -math.inf else math.nan))
    return curve


def plot(curve: list[tuple[float, int, float]], grid: StudySummary, search: StudySummary, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def comparison(grid: StudySummary, search: StudySummary) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, one-line verdict) of the grid against the search."""
    header = [
        "",
        "study",
        "trials",
        "best val acc",
        "test acc there",
        "where",
        "epochs trained",
        "wall seconds",
    ]
    rows = [
        [role, s.name, str(s.trials), f"{s.best_val_accuracy:.4f}", f"{s.best_test_accuracy:.4f}", s.best_where,
         str(s.epochs_trained), f"{s.wall_seconds:.1f}"]
        for role, s in (("grid", grid), ("search", search))
    ]  # fmt: skip
    diff = search.best_val_accuracy - grid.best_val_accuracy
    ratio = search.wall_seconds / grid.wall_seconds if grid.wall_seconds else math.nan
    verdict = f"search - grid best validation accuracy: {diff:+.4f}; search compute / grid compute: {ratio:.2f}x (wall seconds)"
    return header, rows, verdict


def render(grid: StudySummary, search: StudySummary, png: Path, fmt: str) -> str:
    if fmt == "json":
        out = {"grid": asdict(grid), "search": asdict(search), "png": str(png)}
        return json.dumps(finite_or_none(out), indent=2) + "\n"
    header, rows, verdict = comparison(grid, search)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + f"\n\n{verdict}\n\n![best so far]({png})\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines) + f"\n{verdict}\nbest-so-far curve: {png}\n"


def main(argv: list[str] | None = None) -> int:
    from study.cli import ArgumentParser, fail

    parser = ArgumentParser(prog="analysis.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="the grid study (python -m study.grid)")
    parser.add_argument("--search", required=True, help="the search study (python -m study.run)")
    parser.add_argument(
        "--storage", help="SQLAlchemy URL (default: $STUDY_STORAGE or sqlite:///storage/studies.db)"
    )
    parser.add_argument("--out", help="PNG path (default: reports/compare-GRID-vs-SEARCH.png)")
    parser.add_argument("--format", choices=FORMATS, default="table")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        grid_study, search_study = load_studies([args.grid, args.search], args.storage)
        grid, search = summarize(grid_study), summarize(search_study)
        if grid.dataset != search.dataset:
            raise AnalysisError(f"the grid is on {grid.dataset} but the search is on {search.dataset}")
        if math.isnan(grid.best_val_accuracy) or math.isnan(search.best_val_accuracy):
            empty = args.grid if math.isnan(grid.best_val_accuracy) else args.search
            raise AnalysisError(f"study {empty!r} has no completed trial to compare")
    except AnalysisError as exc:
        fail(parser.prog, str(exc))
    png = Path(args.out or f"reports/compare-{args.grid}-vs-{args.search}.png")
    try:
        plot(best_so_far(search_study), grid, search, png)
    except OSError as exc:
        fail(parser.prog, f"cannot write {png}: {exc.strerror or exc}")
    sys.stdout.write(render(grid, search, png, args.format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
