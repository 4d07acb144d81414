"""``python -m study.grid``: the paper's fixed grid as a baseline study, in the same storage.

The paper protocol (DESIGN.md): Adam, constant learning rate, no weight decay, no dropout or
drop-path, no learning-rate scaling; micro-batch in {32, 64, 128}, accumulation in {1, N_gao},
epochs in {10, 20, 50}. With a constant learning rate a 50-epoch run passes through its 10- and
20-epoch points unchanged, so each (batch, accumulation) pair is **one** 50-epoch run that records
all three points: the 18 grid points of a dataset come from 6 runs (times ``--seeds``).

Each run is one trial (GridSampler, no pruning). Its validation accuracy is reported every epoch
(intermediate values); its user attr ``checkpoints`` holds, at each epoch point, train accuracy,
validation and test accuracy, the gap, wall seconds and optimizer steps. The trial's value is
the validation accuracy at the last point.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from search_spaces import Param, SearchSpace
from study.cli import ArgumentParser, fail
from study.config import DATASET_SIZES
from study.data import DataUnavailableError
from study.objective import Objective
from study.run import check_common, missing_runs, open_study, resolve_budget, run_enqueued, summary
from study.storage import STORAGE_ENV, StorageError, mask, resolve_url
from study.workers import run_main

PROG = "study.grid"
BATCH_SIZES = (32, 64, 128)
EPOCH_POINTS = (10, 20, 50)
QUICK_EPOCH_DIVISOR = 10  # quick budget: epoch points 1, 2, 5
QUICK_TRAIN_SUBSET = 4000  # quick budget: at most this many training images
# The paper protocol: everything but batch, accumulation and epochs is fixed.
PAPER_PROTOCOL = {
    "protocol": "paper",
    "optimizer": "adam",
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "lr_scaling": "none",
    "weight_decay": 0.0,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "drop_path": 0.0,
    "label_smoothing": 0.0,
}


def grid_space(*, n_gao: int, seeds: int, budget: str, base_lr: float) -> tuple[SearchSpace, tuple[int, ...]]:
    """The grid as a SearchSpace (batch_size x accumulation_steps x seed) and its epoch points."""
    points = EPOCH_POINTS if budget == "standard" else tuple(e // QUICK_EPOCH_DIVISOR for e in EPOCH_POINTS)
    fixed = {**PAPER_PROTOCOL, "base_lr": base_lr, "epochs": max(points)}
    fixed |= (
        {"model": "swin-micro"}
        if budget == "standard"
        else {"model": "swin-nano", "train_subset": QUICK_TRAIN_SUBSET}
    )
    params = {
        "batch_size": Param("batch_size", "categorical", "scientific", choices=BATCH_SIZES),
        "accumulation_steps": Param("accumulation_steps", "categorical", "scientific", choices=(1, n_gao)),
        "seed": Param("seed", "categorical", "nuisance", choices=tuple(range(seeds))),
    }
    description = (
        f"The paper's fixed grid: batch {BATCH_SIZES} x accumulation (1, {n_gao}) x epochs {points}, "
        f"{seeds} seed(s); Adam, constant lr {base_lr:g}, no regularization, no lr scaling."
    )
    space = SearchSpace("grid", Path("<grid>"), description, params, fixed, {})
    return space, points


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Run the paper's fixed grid (batch 32/64/128 x accumulation 1/N x epochs 10/20/50) "
        "as an Optuna study: one 50-epoch run per (batch, accumulation, seed) records all three epoch points.",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES))
    parser.add_argument("--n-gao", type=int, default=4, help="the accumulation value besides 1 (default: 4)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="repeat every run with this many seeds (default: 1)"
    )
    parser.add_argument(
        "--base-lr", type=float, default=1e-3, help="Adam's constant learning rate (default: 1e-3)"
    )
    parser.add_argument("--study-name", help="default: DATASET-grid-BUDGET; an existing grid is resumed")
    parser.add_argument(
        "--storage", help=f"SQLAlchemy URL (default: ${STORAGE_ENV} or sqlite:///storage/studies.db)"
    )
    parser.add_argument(
        "--budget",
        choices=("quick", "standard"),
        help="quick: epoch points 1/2/5, swin-nano, at most 4000 training images (CPU); standard: "
        "10/20/50 epochs, swin-micro, full data. Default: standard with CUDA, quick without",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_common(PROG, args)
    if args.n_gao < 2:
        fail(PROG, f"--n-gao must be >= 2 (the grid compares it with no accumulation); got {args.n_gao}")
    if args.seeds < 1:
        fail(PROG, f"--seeds must be >= 1; got {args.seeds}")
    if not args.base_lr > 0:
        fail(PROG, f"--base-lr must be > 0; got {args.base_lr:g}")
    budget_note = resolve_budget(args)
    space, points = grid_space(n_gao=args.n_gao, seeds=args.seeds, budget=args.budget, base_lr=args.base_lr)
    objective = Objective(
        space,
        args.budget,
        {"dataset": args.dataset, "data_dir": args.data_dir, "device": args.device},
        checkpoints=points,
    )
    grid = {name: list(p.choices) for name, p in space.params.items()}
    try:
        url = resolve_url(args.storage)
        for batch in BATCH_SIZES:  # the largest effective batch must fit the training set
            objective.config({"batch_size": batch, "accumulation_steps": args.n_gao, "seed": 0})
        objective.raw()
    except (StorageError, DataUnavailableError) as exc:
        fail(PROG, str(exc))
    except ValueError as exc:
        fail(PROG, f"the grid cannot run on {args.dataset}: {exc}")
    study_name = args.study_name or f"{args.dataset}-grid-{args.budget}"
    identity = {
        "dataset": args.dataset,
        "space": "grid",
        "budget": args.budget,
        "kind": "grid",
        "n_gao": args.n_gao,
    }
    study, exists = open_study(
        PROG,
        url,
        study_name,
        identity,
        sampler=optuna.samplers.GridSampler(grid, seed=0),
        pruner=optuna.pruners.NopPruner(),
    )
    if not exists:
        study.set_user_attr("epoch_points", list(points))
        study.set_user_attr("space_description", space.description)
    # A resumed grid runs only what is missing (more --seeds grow it).
    todo = missing_runs(
        study,
        [
            {"batch_size": b, "accumulation_steps": a, "seed": s}
            for b in grid["batch_size"]
            for a in grid["accumulation_steps"]
            for s in grid["seed"]
        ],
    )
    cfg = objective.config({"batch_size": BATCH_SIZES[0], "accumulation_steps": 1, "seed": 0})
    print(
        f"grid {study_name} ({'resumed' if exists else 'new'}) on {mask(url)}\n"
        f"dataset {args.dataset}, budget {args.budget} ({budget_note}): epoch points {', '.join(map(str, points))}"
        + (
            f" (the paper's {', '.join(map(str, EPOCH_POINTS))} divided by {QUICK_EPOCH_DIVISOR})"
            if args.budget == "quick"
            else ""
        )
        + f", model {cfg.model}, {cfg.num_train} training images, Adam lr {args.base_lr:g}\n"
        f"{len(todo)} of {len(BATCH_SIZES) * 2 * args.seeds} runs to do",
        flush=True,
    )
    run_enqueued(study, objective, todo, quiet=args.quiet)
    print(summary(study, url))
    print(
        f"verdict: python -m analysis.overfitting --study {study_name}"
        + ("" if args.storage is None else f" --storage '{mask(url)}'")
    )
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
