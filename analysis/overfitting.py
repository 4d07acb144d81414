"""``python -m analysis.overfitting``: does accumulation cause overfitting or under-training?

The verdict of ``analysis.verdict``, drawn from the designed runs of grid studies (``study.grid``,
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
from typing import Any

import optuna

from analysis.answer import arm_markdown, effect_rows, ratio
from analysis.document import write_png
from analysis.figures import steps_figure
from analysis.verdict import (
    DEFAULT_MIN_EFFECT,
    INCONCLUSIVE,
    METRICS,
    NO_DIFFERENCE,
    OVERFITTING,
    UNDER_TRAINING,
    ArmAnalysis,
    analyse,
    recovery,
    runs_from_study,
)
from study import records
from study.cli import ArgumentParser, add_storage_flag, fail
from study.cli import render_table as columns
from study.jsonsafe import finite_or_none
from study.session import StudyError, load_studies

FORMATS = ("table", "markdown", "json", "csv")
__all__ = ["INCONCLUSIVE", "NO_DIFFERENCE", "OVERFITTING", "UNDER_TRAINING", "analyse_studies"]


def analyse_studies(
    studies: list[optuna.Study], *, min_effect: float = DEFAULT_MIN_EFFECT
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
        out.append((study, analyse(study, min_effect=min_effect)))
    return out


def render_markdown(results: list[tuple[optuna.Study, list[ArmAnalysis]]], figures: dict[Any, Path]) -> str:
    lines = []
    for study, analyses in results:
        lines += [f"## {study.study_name}", ""]
        lines += [f"- {line}" for line in recovery(analyses)]
        lines.append("")
        for a in analyses:
            figure = figures.get((study.study_name, a.arm, a.accumulation_steps))
            lines += arm_markdown(a, None if figure is None else str(figure))
    return "\n".join(lines) + "\n"


def render_table(results: list[tuple[optuna.Study, list[ArmAnalysis]]]) -> str:
    lines = []
    for study, analyses in results:
        for a in analyses:
            lines.append(
                f"{study.study_name}: {a.dataset}, lr scaling {a.arm}, accumulation {a.accumulation_steps} vs 1, "
                f"seeds {', '.join(map(str, a.seeds))}"
            )
            rows = effect_rows(a)
            header = ["effect (N - 1)", "train acc", "val acc", "gap"]
            lines.append(columns(header, rows, indent="  ").rstrip("\n"))
            lines.append(
                f"  time N / 1: per epoch {ratio(a.time['seconds_per_epoch'])}, per step {ratio(a.time['seconds_per_step'])}"
            )
            lines.append(f"  verdict: {a.verdict}: {a.reason}")
            lines.append("")
        lines += recovery(analyses)
    return "\n".join(lines).rstrip() + "\n"


def render_json(results: list[tuple[optuna.Study, list[ArmAnalysis]]]) -> str:
    doc = {
        "studies": [
            {
                "study": s.study_name,
                "arms": [a.to_dict() for a in analyses],
                "lr_scaling_recovery": recovery(analyses),
            }
            for s, analyses in results
        ]
    }
    return json.dumps(finite_or_none(doc), indent=1) + "\n"


def render_csv(results: list[tuple[optuna.Study, list[ArmAnalysis]]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["study", "dataset", "lr_scaling", "accumulation_steps", "where", "n"]
    for m in METRICS:
        header += [f"{m}_effect", f"{m}_ci_low", f"{m}_ci_high"]
    writer.writerow([*header, "verdict"])
    for study, analyses in results:
        for a in analyses:
            rows = [(f"epoch {r['epoch']}", r) for r in a.at_epochs]
            rows += [
                (f"matched steps epoch {'/'.join(map(str, r['accumulated_epoch']))}", r) for r in a.at_steps
            ]
            for where, r in rows:
                row = [study.study_name, a.dataset, a.arm, a.accumulation_steps, where, r[METRICS[0]]["n"]]
                for m in METRICS:
                    row += [r[m]["mean"], r[m]["low"], r[m]["high"]]
                writer.writerow([*row, a.verdict])
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="analysis.overfitting",
        description="Overfitting or under-training? The effect of accumulation on train accuracy, "
        "validation accuracy and the gap at matched epochs and at exactly matched optimizer steps, paired "
        "by seed with 95%% CIs over seeds, per lr-scaling arm of grid studies, and the verdict.",
    )
    parser.add_argument("--study", action="append", required=True, help="grid study name (repeatable)")
    add_storage_flag(parser)
    parser.add_argument(
        "--min-effect",
        type=float,
        default=DEFAULT_MIN_EFFECT,
        help=f"smallest accuracy difference that counts (default: {DEFAULT_MIN_EFFECT})",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--figures", help="also draw the accuracy-against-steps figures into this folder")
    args = parser.parse_args(argv)
    if not args.min_effect >= 0:
        fail(parser.prog, f"--min-effect must be >= 0; got {args.min_effect}")
    if args.figures and Path(args.figures).is_file():
        fail(parser.prog, f"--figures {args.figures} is a file; give a folder")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        results = analyse_studies(load_studies(args.study, args.storage), min_effect=args.min_effect)
        if not any(analyses for _, analyses in results):
            raise StudyError(
                f"no accumulated run with its accumulation-1 baseline in {', '.join(args.study)}"
            )
    except StudyError as exc:
        fail(parser.prog, str(exc))
    figures: dict[Any, Path] = {}
    if args.figures:
        for study, analyses in results:
            runs = runs_from_study(study)
            for a in analyses:
                name = f"{study.study_name}-steps-{a.arm}-x{a.accumulation_steps}"
                figure = steps_figure(runs, arm=a.arm, n=a.accumulation_steps, name=name)
                if figure is not None:
                    figures[(study.study_name, a.arm, a.accumulation_steps)] = write_png(
                        figure, Path(args.figures)
                    )
    renderers = {
        "table": render_table,
        "markdown": lambda r: render_markdown(r, figures),
        "json": render_json,
        "csv": render_csv,
    }
    sys.stdout.write(renderers[args.format](results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
