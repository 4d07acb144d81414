"""``python -m study.grid``: the paper's fixed grid as a baseline study, in the same storage.

The design (the paper protocol, the learning-rate arms, the step-matched runs and the twins) is
``study.lib.grid``'; this command checks the flags, builds the design, queues the runs the storage
lacks and runs them, here or in ``--workers`` processes.

Each run is one trial (GridSampler, no pruning). Its user attr ``checkpoints`` holds, at each epoch
point (and, for a step-matched run, at N times each), train loss and accuracy, validation loss and
accuracy, test accuracy, the gap, wall seconds and optimizer steps; its history holds every
evaluated epoch. The trial's value is the validation accuracy at its last epoch.
"""

from __future__ import annotations

import argparse
import sys

from study.lib.cli import (
    ArgumentParser,
    add_checkpoint_flags,
    add_storage_flag,
    add_training_flags,
    add_workers_flags,
    check_common,
    checkpoints,
    fail,
    parse_arms,
    parse_choices,
    parse_families,
    resolve_budget,
)
from study.lib.config import DATASET_SIZES
from study.lib.data import DataError, load_raw
from study.lib.grid import BATCH_SIZES, GRID_BUDGETS, grid_design, grid_plan
from study.lib.session import StudyError, execute
from study.lib.storage import StorageError, resolve_url
from study.lib.workers import run_main

PROG = "study.grid"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Run the paper's fixed grid (batch 32/64/128 x accumulation 1/N x epochs 10/20/50) "
        "as an Optuna study: one 50-epoch run per (batch, accumulation, seed) records all three epoch points.",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES))
    parser.add_argument(
        "--accumulation-steps", type=int, default=4, help="the accumulation value besides 1 (default: 4)"
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="repeat every run with this many seeds (default: 1)"
    )
    parser.add_argument(
        "--base-lr", type=float, default=1e-3, help="Adam's constant learning rate (default: 1e-3)"
    )
    parser.add_argument(
        "--lr-scaling",
        default="none",
        help="comma-separated arms for the accumulated runs: none (the paper), linear (lr x N), sqrt "
        "(lr x sqrt N); the accumulation-1 runs are shared by all arms (default: none)",
    )
    parser.add_argument(
        "--step-matched",
        help="comma-separated arms whose accumulated runs train N times the epochs, as many optimizer "
        "steps as their baseline (each such run costs N equal-epoch runs; an empty value: no arm). "
        "Default: the budget's (cifar10 cpu: none, the paper's unscaled arm; others: no arm)",
    )
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, BATCH_SIZES)),
        help="comma-separated micro-batches of the paper's 32,64,128, for a reduced design; the twins are "
        "those of these micro-batches (default: all three)",
    )
    parser.add_argument(
        "--twins",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the (bN x 1) run of every accumulated micro-batch b: the same update as (b x N, unscaled) "
        "without accumulation (default: the budget's; cifar10 cpu: yes)",
    )
    parser.add_argument(
        "--noise-scale",
        action="store_true",
        help="every run measures the gradient noise scale per epoch (micro-batch vs effective-batch "
        "gradients; without accumulation, one step in 8 runs as two halves); about 2%% of a step's time",
    )
    parser.add_argument("--models", default="swin",
                        help="comma-separated model families, each its own grid of the same design, run one after "
                        "the other: swin (the paper's), vit (global attention, no windows), bn-cnn (a BatchNorm "
                        "ResNet, where accumulation is not the larger batch). Default: swin")  # fmt: skip
    parser.add_argument("--study-name", help="default: DATASET-grid-BUDGET (-FAMILY for vit and bn-cnn); an existing "
                        "grid is resumed")  # fmt: skip
    add_storage_flag(parser)
    parser.add_argument(
        "--budget",
        choices=tuple(GRID_BUDGETS),
        help="; ".join(
            f"{name}: epoch points {'/'.join(map(str, b.epoch_points))}, {b.model}, "
            + (f"{b.train_subset} training images" if b.train_subset else "full data")
            for name, b in GRID_BUDGETS.items()
        )
        + "; cifar10 at cpu: epoch points 40/80/200 on 2,560 images. Default: standard with CUDA, quick without",
    )
    add_workers_flags(parser, what="the runs to do")
    add_checkpoint_flags(parser)
    add_training_flags(parser)
    return parser


def check(args: argparse.Namespace) -> tuple[str, ...]:
    """Flag checks (one line, exit 2); returns the lr-scaling arms."""
    check_common(PROG, args)
    if args.accumulation_steps < 2:
        fail(
            PROG,
            f"--accumulation-steps must be >= 2 (the grid compares it with 1); got {args.accumulation_steps}",
        )
    for name in ("seeds", "workers"):
        if getattr(args, name) < 1:
            fail(PROG, f"--{name} must be >= 1; got {getattr(args, name)}")
    if not args.base_lr > 0:
        fail(PROG, f"--base-lr must be > 0; got {args.base_lr:g}")
    arms = parse_arms(PROG, "--lr-scaling", args.lr_scaling)
    choices = tuple(map(str, BATCH_SIZES))
    args.batch_sizes = tuple(int(b) for b in parse_choices(PROG, "--batch-sizes", args.batch_sizes, choices, "micro-batches"))
    args.models = parse_families(PROG, "--models", args.models)
    if args.study_name and len(args.models) > 1:
        fail(PROG, "--study-name names one grid; give one family in --models, or leave the default names")
    if args.step_matched is not None:
        args.step_matched = parse_arms(PROG, "--step-matched", args.step_matched, empty=True)
    return arms


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arms = check(args)
    note = resolve_budget(args)
    run = {"dataset": args.dataset, "data_dir": args.data_dir, "device": args.device}
    try:
        url = resolve_url(args.storage)
        raw = load_raw(args.dataset, args.data_dir)  # missing or damaged data fail before the storage exists
    except (StorageError, DataError) as exc:
        fail(PROG, str(exc))
    for family in args.models:
        design = grid_design(
            dataset=args.dataset, accumulation=args.accumulation_steps, seeds=args.seeds, budget=args.budget,
            base_lr=args.base_lr, arms=arms, step_matched=args.step_matched, twins=args.twins,
            noise_scale=args.noise_scale, family=family, batches=tuple(sorted(args.batch_sizes)),
        )  # fmt: skip
        try:
            plan = grid_plan(
                design, args, raw, run=run, url=url, note=note, arms=arms, store=checkpoints(PROG, args, url)
            )
            code = execute(plan, url, prog=PROG, module=PROG, argv=argv, workers=args.workers,
                           worker_index=args.worker_index, quiet=args.quiet)  # fmt: skip
        except StudyError as exc:
            fail(PROG, str(exc))
        except ValueError as exc:  # a run of the grid TrainConfig rejects, e.g. an effective batch too large
            fail(PROG, f"the grid cannot run on {args.dataset}: {exc}")
        if code:  # a family whose workers did not all finish: the next one waits for a resume
            return code
    return 0


if __name__ == "__main__":
    run_main(PROG, main, quiet="--worker-index" in sys.argv)  # workers leave the Ctrl-C line to their parent
