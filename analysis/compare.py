"""``python -m analysis.compare --grid NAME --search NAME``: the search against the paper's grid.

Prints, for each study, the best validation accuracy (and the test accuracy of that trial or grid
point) and the compute spent (epochs trained and wall seconds, pruned and failed trials included),
and draws the search's best-so-far validation accuracy against cumulative compute, with the grid's
best as a horizontal line, to a PNG. The numbers come from ``analysis.lib.compare``, the figure from
``analysis.lib.figures.comparison_figure``; the storage is only read.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import optuna

from analysis.lib.compare import StudySummary, best_so_far, comparison, summarize
from analysis.lib.figures import comparison_figure
from study.lib.cli import ArgumentParser, add_storage_flag, fail, render_table
from study.lib.jsonsafe import finite_or_none
from study.lib.session import StudyError, load_studies

PROG = "analysis.compare"
FORMATS = ("table", "markdown", "json")


def render(grid: StudySummary, search: StudySummary, png: Path, fmt: str) -> str:
    if fmt == "json":
        out = {"grid": asdict(grid), "search": asdict(search), "png": str(png)}
        return json.dumps(finite_or_none(out), indent=2) + "\n"
    header, rows, verdict = comparison(grid, search)
    if fmt == "markdown":
        return render_table(header, rows, markdown=True) + f"\n{verdict}\n\n![best so far]({png})\n"
    return render_table(header, rows) + f"{verdict}\nbest-so-far curve: {png}\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="the grid study (python -m study.grid)")
    parser.add_argument("--search", required=True, help="the search study (python -m study.run)")
    add_storage_flag(parser)
    parser.add_argument("--out", help="PNG path (default: reports/compare-GRID-vs-SEARCH.png)")
    parser.add_argument("--format", choices=FORMATS, default="table")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        grid_study, search_study = load_studies([args.grid, args.search], args.storage)
        grid, search = summarize(grid_study), summarize(search_study)
        if grid.dataset != search.dataset:
            raise StudyError(f"the grid is on {grid.dataset} but the search is on {search.dataset}")
        if math.isnan(grid.best_val_accuracy) or math.isnan(search.best_val_accuracy):
            empty = args.grid if math.isnan(grid.best_val_accuracy) else args.search
            raise StudyError(f"study {empty!r} has no completed trial to compare")
    except StudyError as exc:
        fail(parser.prog, str(exc))
    png = Path(args.out or f"reports/compare-{args.grid}-vs-{args.search}.png")
    figure = comparison_figure(best_so_far(search_study), grid, search, name=png.stem)
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(figure.png)
    except OSError as exc:
        fail(parser.prog, f"cannot write {png}: {exc.strerror or exc}")
    sys.stdout.write(render(grid, search, png, args.format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
