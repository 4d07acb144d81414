"""``python -m analysis.overfitting``: does accumulation cause overfitting or under-training?

The verdict of ``analysis.lib.overfitting``, drawn from the designed runs of grid studies (``study.grid``,
any number of seeds and lr-scaling arms): per arm, the effect of accumulation on train accuracy,
validation accuracy and the generalization gap at each epoch point and at exactly matched
optimizer steps, paired by seed, with 95% confidence intervals over seeds (n = runs, never epoch
points); the training-time ratios; the verdict with the predictions that held; whether scaling
the learning rate recovers the accuracy lost.

A search study is refused: its trials are selected on validation accuracy, not sampled, and
Hyperband prunes accumulated trials at equal epochs, so they cannot test the claim. To ask
whether tuning recovers the loss, replicate its best configurations over seeds
(``study.replicate --best-per accumulation_steps``; ``study.experiment`` does it).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import optuna

from analysis.lib.document import Document, render_markdown, render_text, write_png
from analysis.lib.overfitting import (
    DEFAULT_THRESHOLDS,
    INCONCLUSIVE,
    OVERFITTING,
    UNDER_TRAINING,
    ArmAnalysis,
    Thresholds,
    analyse,
    reason,
    recovery,
)
from analysis.lib.results import _plain, verdict_blocks
from study.lib import records
from study.lib.cli import ArgumentParser, add_storage_flag, fail
from study.lib.session import StudyError, load_studies

FORMATS = ("table", "markdown", "json", "csv")
__all__ = ["INCONCLUSIVE", "OVERFITTING", "UNDER_TRAINING", "analyse_studies"]


def analyse_studies(
    studies: list[optuna.Study], *, thresholds: Thresholds = DEFAULT_THRESHOLDS, stop_at: int | None = None
) -> list[tuple[optuna.Study, list[ArmAnalysis]]]:
    """The verdict of each grid study; StudyError for a study that is not a grid."""
    out = []
    for study in studies:
        if records.kind(study) != records.GRID:
            raise StudyError(
                f"study {study.study_name!r} is not a grid study (kind {records.kind(study) or 'unknown'}): "
                "the verdict is drawn from designed runs only; replicate a search's best configurations "
                "with study.replicate --best-per accumulation_steps instead"
            )
        first = min(study.user_attrs.get(records.EPOCH_POINTS) or [0])
        if stop_at is not None and stop_at < first:
            raise StudyError(f"--stop-at {stop_at} is before the first epoch point ({first}) of {study.study_name!r}")
        out.append((study, analyse(study, thresholds=thresholds, stop_at=stop_at)))
    return out


def document(results: list[tuple[optuna.Study, list[ArmAnalysis]]], *, stop_at: int | None = None) -> Document:
    """The verdict blocks of every study (analysis.lib.results.verdict_blocks), under one title."""
    blocks = []
    for study, _ in results:
        blocks += verdict_blocks(study, prefix=f"{study.study_name}-", stop_at=stop_at)
    title = "Overfitting or under-training? " + ", ".join(s.study_name for s, _ in results)
    return Document(title + (f" (runs read up to epoch {stop_at})" if stop_at else ""), tuple(blocks))


def render_json(results: list[tuple[optuna.Study, list[ArmAnalysis]]]) -> str:
    doc = {"studies": [{"study": s.study_name, "arms": [{**a.to_dict(), "reason": reason(a)} for a in analyses],
                        "lr_scaling_recovery": recovery(analyses)} for s, analyses in results]}  # fmt: skip
    return json.dumps(_plain(doc), indent=1) + "\n"


def render_csv(results: list[tuple[optuna.Study, list[ArmAnalysis]]]) -> str:
    """One line per (study, arm, place, metric): the effect, its interval and n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["study", "dataset", "lr_scaling", "accumulation_steps", "where", "metric", "effect",
                     "ci_low", "ci_high", "n", "verdict"])  # fmt: skip
    for study, analyses in results:
        for a in analyses:
            for row in [*a.at_epochs, *a.at_steps, *a.at_train_loss, a.at_minimum]:
                for metric, ci in row.effects.items():
                    writer.writerow([study.study_name, a.dataset, a.arm, a.accumulation_steps, row.where, metric,
                                     ci.mean, ci.low, ci.high, ci.n, a.verdict])  # fmt: skip
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="analysis.overfitting",
        description="Overfitting or under-training? The effect of accumulation at equal training loss, at each "
        "run's best epoch, at matched epochs and at exactly matched optimizer steps, paired by seed with 95%% "
        "CIs over seeds, per lr-scaling arm of grid studies, and the verdict.",
    )
    parser.add_argument("--study", action="append", required=True, help="grid study name (repeatable)")
    add_storage_flag(parser)
    parser.add_argument("--min-effect", type=float, default=Thresholds.accuracy,
                        help=f"smallest accuracy difference that counts (default: {Thresholds.accuracy})")  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--figures", help="also write the figures into this folder")
    parser.add_argument("--stop-at", type=int, metavar="EPOCH",
                        help="read every run as if it had stopped after this epoch, and drop the epoch points after "
                        "it: what shorter runs would have shown (the paper's 50 epochs, or step-matched runs cut "
                        "to the equal-epoch length; default: the runs as trained)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.min_effect >= 0:
        fail(parser.prog, f"--min-effect must be >= 0; got {args.min_effect}")
    if args.stop_at is not None and args.stop_at < 1:
        fail(parser.prog, f"--stop-at must be >= 1; got {args.stop_at}")
    if args.figures and Path(args.figures).is_file():
        fail(parser.prog, f"--figures {args.figures} is a file; give a folder")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        results = analyse_studies(load_studies(args.study, args.storage),
                                  thresholds=Thresholds(accuracy=args.min_effect), stop_at=args.stop_at)  # fmt: skip
        if not any(analyses for _, analyses in results):
            raise StudyError(
                f"no accumulated run with its accumulation-1 baseline in {', '.join(args.study)}"
            )
    except StudyError as exc:
        fail(parser.prog, str(exc))
    doc = document(results, stop_at=args.stop_at) if args.format in ("table", "markdown") or args.figures else None
    if args.figures:
        for figure in doc.figures():
            write_png(figure, Path(args.figures))
    renderers = {"table": lambda: render_text(doc), "markdown": lambda: render_markdown(doc),
                 "json": lambda: render_json(results), "csv": lambda: render_csv(results)}  # fmt: skip
    sys.stdout.write(renderers[args.format]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
