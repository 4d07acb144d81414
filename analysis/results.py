"""``python -m analysis.results --dataset D --budget B``: an experiment's ``results/DATASET-BUDGET/``.

Written by ``python -m study.experiment`` at its end, or at any time, on whatever has finished, by
this command: ``report.md`` with its figures, ``verdict.json``, the CSV tables and the trial
records (``analysis.lib.results.write_results`` says what each file holds); with ``--tables-only``
the records and tables alone, for an experiment still running. It only reads the storage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from analysis.lib.results import write_results
from study.lib.cli import ArgumentParser, add_storage_flag, fail
from study.lib.config import DATASET_SIZES
from study.lib.experiment import study_names
from study.lib.session import BUDGETS, StudyError
from study.lib.storage import StorageError, resolve_url

PROG = "analysis.results"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog=PROG,
        description="Write an experiment's results folder (report.md, figures, verdict.json, CSV and "
        "records) from the storage, on whatever has finished so far. Reads the storage only.",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES))
    parser.add_argument("--budget", required=True, choices=BUDGETS)
    parser.add_argument(
        "--accumulation-steps", type=int, default=4, help="the experiment's value besides 1 (default: 4)"
    )
    parser.add_argument("--out", help="default: results/DATASET-BUDGET")
    parser.add_argument("--tables-only", action="store_true",
                        help="only the records and CSV tables, no report, verdict or figures: what to commit of an "
                        "experiment still running, so that it resumes on another machine")  # fmt: skip
    add_storage_flag(parser)
    args = parser.parse_args(argv)
    out = Path(args.out or f"results/{args.dataset}-{args.budget}")
    if out.exists() and not out.is_dir():
        fail(parser.prog, f"--out {out} is a file; give a folder")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        url = resolve_url(args.storage)
        names = study_names(args.dataset, args.budget, args.accumulation_steps)
        written = write_results(url, names, out, tables_only=args.tables_only)
    except (StorageError, StudyError) as exc:
        fail(parser.prog, str(exc))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
