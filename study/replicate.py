"""``python -m study.replicate --study NAME --top K --seeds S``: believe a result only after seeds.

(It trains, so it lives in study/, not analysis/: analysis never trains.)

Re-runs the best K completed trials of each ``--study`` (by validation accuracy; ``--best-per
PARAM`` takes the best of each value of a parameter), each with S fresh seeds (``study.lib.replicate``
says which), as trials of a new study (default ``NAME-replicate``, no pruning), then reports per
configuration the mean and standard deviation of validation, test and train accuracy and of the
gap, next to the original value.
"""

from __future__ import annotations

import sys

import optuna

from study.lib import records
from study.lib.cli import (
    ArgumentParser,
    add_checkpoint_flags,
    add_storage_flag,
    add_training_flags,
    add_workers_flags,
    checkpoints,
    fail,
)
from study.lib.data import DataError, load_raw
from study.lib.replicate import FORMATS, check_sources, choose, render, replicate_plan, report, sources
from study.lib.session import StudyError, execute, load_studies
from study.lib.storage import StorageError, resolve_url
from study.lib.workers import run_main

PROG = "study.replicate"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="append", required=True,
                        help="a study whose best trials are re-run (repeatable: one per stratum)")  # fmt: skip
    parser.add_argument(
        "--top", type=int, default=3, help="how many of the best trials of each study (default: 3)"
    )
    parser.add_argument("--best-per", metavar="PARAM",
                        help="take the --top best trials for EACH value of this parameter (e.g. accumulation_steps), a "
                        "value whose trials were all pruned being represented by the ones that trained longest")  # fmt: skip
    parser.add_argument("--values", help="with --best-per: only these values, comma-separated (e.g. 1,4)")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds per trial (default: 3)")
    parser.add_argument("--step-matched", action="store_true",
                        help="a configuration with accumulation N trains N times its epochs (as many optimizer steps "
                        "as accumulation 1), recorded at both lengths")  # fmt: skip
    parser.add_argument(
        "--new-study", help="where the re-runs go (default: FIRST-STUDY-replicate); resumed if it exists"
    )
    add_storage_flag(parser)
    add_workers_flags(parser, what="the re-runs")
    add_checkpoint_flags(parser)
    parser.add_argument("--format", choices=FORMATS, default="table")
    add_training_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1 or args.seeds < 1 or args.workers < 1:
        fail(PROG, f"--top, --seeds and --workers must be >= 1; got {args.top}, {args.seeds} and {args.workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = args.new_study or f"{args.study[0]}-replicate"
    try:
        studies = load_studies(args.study, args.storage)
        chosen = choose(studies, args.top, per=args.best_per, values_text=args.values)
        chosen_sources = sources(chosen, seeds=args.seeds, step_matched=args.step_matched)
        dataset = next(iter(chosen_sources.values()))["config"]["dataset"]
        url = resolve_url(args.storage)
        check_sources(url, name, chosen_sources)
        raw = load_raw(dataset, args.data_dir)
        identity = {
            records.KIND: records.REPLICATE,
            records.SOURCE_STUDY: ",".join(args.study),
            records.DATASET: dataset,
        }
        plan = replicate_plan(chosen_sources, raw, name=name, identity=identity,
                              run={"data_dir": args.data_dir, "device": args.device}, stream=sys.stderr,
                              store=checkpoints(PROG, args, url),
                              header=f"replicating {len(chosen)} trial(s) of {', '.join(args.study)} with {args.seeds} seeds "
                              f"into {name}" + (" (step-matched)" if args.step_matched else ""))  # fmt: skip
        code = execute(plan, url, prog=PROG, module=PROG, argv=argv, workers=args.workers,
                       worker_index=args.worker_index, quiet=args.quiet)  # fmt: skip
        if args.worker_index is not None:  # a worker: the parent reports
            return code
        (replicas,) = load_studies([name], url)
    except (StudyError, StorageError, DataError) as exc:
        fail(PROG, str(exc))
    sys.stdout.write(render(report(replicas, chosen), args.format, name))
    return code


if __name__ == "__main__":
    run_main(PROG, main)
