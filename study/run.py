"""``python -m study.run``: an Optuna study, with pruning, over a search space of the Swin trainer.

Every input a user can get wrong is checked before the storage is touched, so a bad command exits
2 with one line and leaves no empty study behind. The study itself is ``study.lib.session``'s.
"""

from __future__ import annotations

import sys

from search_spaces import SpaceError, available, load_space
from study.lib import records
from study.lib.cli import (
    ArgumentParser,
    add_storage_flag,
    add_training_flags,
    add_workers_flags,
    check_common,
    fail,
    resolve_budget,
    worker_argv,
)
from study.lib.config import DATASET_SIZES
from study.lib.data import DataError, load_raw
from study.lib.objective import search_objective, space_config
from study.lib.session import (
    BUDGETS,
    PRUNERS,
    SAMPLERS,
    StudyError,
    check_space,
    make_pruner,
    make_sampler,
    open_study,
    optimize,
    run_worker_processes,
    sampler_seed,
    summary,
)
from study.lib.storage import StorageError, mask, resolve_url
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
    add_workers_flags(parser, what="the study's trials")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    worker = args.worker_index is not None

    # --- everything a user can get wrong, before the storage is touched -----------------------
    check_common(PROG, args)
    if args.workers < 1:
        fail(PROG, f"--workers must be >= 1; got {args.workers}")
    if args.sampler not in SAMPLERS:
        fail(PROG, f"unknown sampler {args.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    args.objectives = tuple(name.strip() for name in args.objectives.split(","))
    if args.objectives not in (("accuracy",), ("accuracy", "time")):
        fail(PROG, f"--objectives must be accuracy or accuracy,time; got {','.join(args.objectives)!r}")
    multi = len(args.objectives) > 1
    if args.pruner is None:
        args.pruner = "none" if multi else "hyperband"
    if args.pruner not in PRUNERS:
        fail(PROG, f"unknown pruner {args.pruner!r}; choose one of {', '.join(PRUNERS)}")
    if multi and args.pruner != "none":
        fail(
            PROG,
            f"--pruner {args.pruner} with --objectives accuracy,time: Optuna prunes only single-objective studies",
        )
    budget_note = resolve_budget(args)
    try:
        space = load_space(args.space)
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
    objective = search_objective(space, args.budget, raw, objectives=args.objectives, **run)
    study_name = args.study_name or f"{args.dataset}-{space.name}-{args.budget}" + ("-time" if multi else "")

    # --- the storage and the study ------------------------------------------------------------
    epochs = int(space.params["epochs"].high) if "epochs" in space.params else baseline.epochs
    try:
        study, exists = open_study(
            url,
            study_name,
            {
                records.DATASET: args.dataset,
                records.SPACE: space.name,
                records.BUDGET: args.budget,
                records.OBJECTIVES: ",".join(args.objectives),
            },
            sampler=make_sampler(args.sampler, args.seed),
            pruner=make_pruner(args.pruner, epochs),
            objectives=args.objectives,
        )
    except StudyError as exc:
        fail(PROG, str(exc))
    if exists and args.sampler != "qmc":  # QMC continues its own sequence from the stored trials
        # A worker, or a resumed study, must not re-draw the random points the first run drew.
        study.sampler = make_sampler(
            args.sampler, sampler_seed(args.seed, args.worker_index, len(study.trials))
        )
    if not worker:
        if not exists:
            study.set_user_attr(records.KIND, records.SEARCH)
            study.set_user_attr(records.ROLES, space.roles())
            study.set_user_attr(records.SPACE_DESCRIPTION, space.description.strip())
            if space.baseline:
                # the paper protocol's default first, so every study contains the paper's setting
                study.enqueue_trial(space.baseline, user_attrs={records.BASELINE: True}, skip_if_exists=True)
        print(
            f"study {study_name} ({'resumed, ' + str(len(study.trials)) + ' trials so far' if exists else 'new'}) "
            f"on {mask(url)}\n"
            f"dataset {args.dataset}, space {space.name}, budget {args.budget} ({budget_note}), "
            f"sampler {args.sampler}, pruner {args.pruner}, objectives {','.join(args.objectives)}, "
            f"{args.n_trials} trials, {args.workers} worker(s)",
            flush=True,
        )
        if args.workers > 1:
            code = run_worker_processes(
                study,
                url,
                total=args.n_trials,
                workers=args.workers,
                command=lambda index, share: worker_argv(
                    "study.run",
                    argv,
                    index=index,
                    resolved=[
                        "--space",
                        str(space.path),
                        "--study-name",
                        study_name,
                        "--budget",
                        args.budget,
                        "--pruner",
                        args.pruner,
                        "--n-trials",
                        str(share),
                    ],
                ),  # fmt: skip
                prog=PROG,
                quiet=args.quiet,
            )
            print(summary(study, url))
            return code

    prefix = f"[worker {args.worker_index}] " if worker else ""
    optimize(study, objective, n_trials=args.n_trials, timeout=args.timeout, quiet=args.quiet, prefix=prefix)
    if not worker:
        print(summary(study, url))
    return 0


if __name__ == "__main__":
    run_main(PROG, main, quiet="--worker-index" in sys.argv)  # workers leave the Ctrl-C line to their parent
