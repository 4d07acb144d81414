"""``python -m study.run``: an Optuna study, with pruning, over a search space of the Swin trainer.

Every input a user can get wrong is checked before the storage is touched, so a bad command exits
2 with one line and leaves no empty study behind. The study itself is ``study.lib.session``'s.
"""

from __future__ import annotations

import sys

from search_spaces import SpaceError, available, load_space
from study.lib.cli import (
    ArgumentParser,
    add_checkpoint_flags,
    add_storage_flag,
    add_training_flags,
    add_workers_flags,
    check_common,
    checkpoints,
    fail,
    resolve_budget,
)
from study.lib.config import DATASET_SIZES
from study.lib.data import DataError, load_raw
from study.lib.objective import space_config
from study.lib.run import check_flags, parse_fixes, search_plan
from study.lib.session import BUDGETS, StudyError, check_space, execute
from study.lib.storage import StorageError, resolve_url
from study.lib.workers import run_main

PROG = "study.run"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Run (or resume) an Optuna study over accumulation steps, learning-rate scaling, base lr, "
            "dropout / drop-path and weight decay on the Swin trainer. Trials are pruned on validation "
            "accuracy; the study maximizes the last epoch's validation accuracy."
        ),
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES), help="dataset to train on")
    parser.add_argument(
        "--space",
        default="overfitting",
        help=f"search space: a name in search_spaces/ ({', '.join(available())}) or a TOML path (default: overfitting)",
    )
    parser.add_argument(
        "--study-name", help="study name (default: DATASET-SPACE-BUDGET); an existing study is resumed"
    )
    add_storage_flag(parser)
    parser.add_argument("--n-trials", type=int, default=20, help="trials to add to the study (default: 20)")
    parser.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    parser.add_argument(
        "--sampler",
        default="tpe",
        help="tpe (multivariate TPE, the default), qmc (Sobol quasi-random) or random",
    )
    parser.add_argument(
        "--pruner",
        help="hyperband (the default), median, or none; trials report validation accuracy every epoch. "
        "Two-objective studies are never pruned (Optuna prunes only single-objective studies)",
    )
    parser.add_argument(
        "--objectives",
        default="accuracy",
        help="accuracy (the default: the last epoch's validation accuracy, maximized), or accuracy,time: "
        "a two-objective study that also minimizes training seconds (the paper's two metrics); it runs "
        "WITHOUT pruning, since Optuna prunes only single-objective studies, and has a Pareto front "
        "instead of one best trial",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the sampler and every trial's training (default: 0)"
    )
    parser.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="fix a searched parameter (repeatable): one stratum of a search, e.g. --fix accumulation_steps=4, so "
        "that every value gets a study of its own, the same number of trials, and pruning compares trials of "
        "that value only; the default study name ends in -PARAM=VALUE",
    )
    add_workers_flags(parser, what="the study's trials")
    add_checkpoint_flags(parser)
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        help="quick: smoke runs in CPU minutes (small preset, data subset, fewer epochs, as the space says); "
        "cpu: the science at CPU scale (the CPU preset on a training subset it learns, the space's "
        "[budget.cpu]); standard: the space as written (full data, GPU preset). Default: standard with "
        "CUDA, quick without",
    )
    add_training_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # everything a user can get wrong, before the storage is touched
    check_common(PROG, args)
    check_flags(PROG, args)
    note = resolve_budget(args)
    try:
        space = load_space(args.space).fixing(parse_fixes(args.fix))
        if not space.offers(args.budget):
            raise SpaceError(
                f"{space.path}: has no [budget.{args.budget}] table; pick another --budget or space"
            )
        url = resolve_url(args.storage)
        # Data missing while offline, or damaged files, fail here, before the storage exists; read
        # first, so that the space is checked against the images actually there.
        raw = load_raw(args.dataset, args.data_dir)
        run = {"dataset": args.dataset, "data_dir": args.data_dir, "device": args.device, "seed": args.seed}
        baseline = check_space(space, space_config(space, args.budget, raw, **run))
    except (SpaceError, StorageError, DataError) as exc:
        fail(PROG, str(exc))
    except ValueError as exc:  # a fixed setting of the space that TrainConfig rejects
        fail(PROG, f"{space.path}: {exc}")
    epochs = int(space.params["epochs"].high) if "epochs" in space.params else baseline.epochs
    plan = search_plan(
        args, space, raw, epochs=epochs, url=url, note=note, store=checkpoints(PROG, args, url)
    )
    try:
        return execute(plan, url, prog=PROG, module=PROG, argv=argv, workers=args.workers,
                       worker_index=args.worker_index, quiet=args.quiet)  # fmt: skip
    except StudyError as exc:
        fail(PROG, str(exc))


if __name__ == "__main__":
    run_main(PROG, main, quiet="--worker-index" in sys.argv)  # workers leave the Ctrl-C line to their parent
