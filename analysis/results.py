"""The committed outcome of an experiment: ``results/DATASET-BUDGET/``.

Written by ``python -m study.experiment`` at its end, or at any time, on whatever has finished,
by ``python -m analysis.results --dataset D --budget B`` (it only reads the storage):

* ``report.md``: the answer (the verdict per lr-scaling arm with its numbers, at matched epochs and
  at exactly matched optimizer steps; training time with and without accumulation; whether tuning
  recovers the accuracy lost with accumulation), with ``figures/*.png``;
* ``verdict.json``: the same numbers, machine-readable;
* ``grid-runs.csv``, ``grid-history.csv``, ``search-trials.csv``, ``search-history.csv``,
  ``replicate-runs.csv``: the trials and their per-epoch histories (``analysis.export``);
* ``records/*.jsonl``: every settled trial whole, from which ``study.experiment`` resumes on a
  machine without the database.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from analysis.common import AnalysisError, load_studies
from analysis.export import history_rows, run_rows, write_csv, write_records
from study.storage import open_storage, study_exists


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
    """Write everything of the module docstring under ``out``; returns the paths written."""
    studies = existing(url, names)
    if "grid" not in studies:
        raise AnalysisError(f"no grid study {names['grid']!r} in the storage: run study.experiment first")
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(studies, out)
    from analysis.answer import write_answer  # the verdict, the figures and report.md

    written += write_answer(studies, out)
    return written


def main(argv: list[str] | None = None) -> int:
    from study.cli import ArgumentParser, fail
    from study.config import DATASET_SIZES
    from study.experiment import BUDGETS, study_names
    from study.storage import STORAGE_ENV, StorageError, resolve_url

    parser = ArgumentParser(
        prog="analysis.results",
        description="Write an experiment's results folder (report.md, figures, verdict.json, CSV and "
        "records) from the storage, on whatever has finished so far. Reads the storage only.",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES))
    parser.add_argument("--budget", required=True, choices=BUDGETS)
    parser.add_argument("--out", help="default: results/DATASET-BUDGET")
    parser.add_argument(
        "--storage", help=f"SQLAlchemy URL (default: ${STORAGE_ENV} or sqlite:///storage/studies.db)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out or f"results/{args.dataset}-{args.budget}")
    if out.exists() and not out.is_dir():
        fail(parser.prog, f"--out {out} is a file; give a folder")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        url = resolve_url(args.storage)
        written = write_results(url, study_names(args.dataset, args.budget), out)
    except (StorageError, AnalysisError) as exc:
        fail(parser.prog, str(exc))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
