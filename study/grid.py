"""``python -m study.grid``: the paper's fixed grid as a baseline study, in the same storage.

The paper protocol (DESIGN.md): Adam, constant learning rate, no weight decay, no dropout or
drop-path, no learning-rate scaling; micro-batch in {32, 64, 128}, accumulation in {1, N_gao},
epochs in {10, 20, 50}. With a constant learning rate a 50-epoch run passes through its 10- and
20-epoch points unchanged, so each (batch, accumulation) pair is **one** 50-epoch run that records
all three points: the 18 grid points of a dataset come from 6 runs (times ``--seeds``).

**Learning-rate arms** (``--lr-scaling none,linear,sqrt``): beside the paper's unscaled runs, the
accumulated runs can scale the learning rate by the accumulation factor (N for ``linear``, sqrt N
for ``sqrt``), relative to the micro-batch run: every run's reference batch is its micro-batch, so
an accumulation-1 run has the base learning rate under every rule and is run **once**, shared by
all arms. If fewer optimizer steps cause the accuracy lost with accumulation, scaling the learning
rate recovers it at matched epochs; if overfitting does, it does not.

Each run is one trial (GridSampler, no pruning). Its validation accuracy is reported every epoch
(intermediate values); its user attr ``checkpoints`` holds, at each epoch point, train accuracy,
validation and test accuracy, the gap, wall seconds and optimizer steps. The trial's value is
the validation accuracy at the last point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from study import records
from study.cli import (
    ArgumentParser,
    add_storage_flag,
    add_training_flags,
    add_workers_flags,
    check_common,
    fail,
    resolve_budget,
)
from study.config import DATASET_SIZES, LR_SCALING_EXPONENTS, TrainConfig
from study.data import DataError, load_raw
from study.objective import Objective, build_config
from study.session import (
    StudyError,
    enqueue_runs,
    missing_runs,
    open_study,
    optimize,
    run_worker_processes,
    summary,
)
from study.storage import StorageError, mask, resolve_url
from study.workers import run_main

PROG = "study.grid"
BATCH_SIZES = (32, 64, 128)
EPOCH_POINTS = (10, 20, 50)


@dataclass(frozen=True)
class GridBudget:
    """The scale of a grid: epoch points (the paper's 10/20/50 or the same 1:2:5 ratio), the Swin
    preset and the training subset (None: the whole training split)."""

    epoch_points: tuple[int, int, int]
    model: str
    train_subset: int | None
    note: str


GRID_BUDGETS: dict[str, GridBudget] = {
    "quick": GridBudget((1, 2, 5), "swin-nano", 4000, "the paper's 10, 20, 50 divided by 10"),
    # Chosen with benchmarks.learnability (README, "Choosing the CPU preset"): swin-nano on 20,480
    # Fashion-MNIST images reaches 0.85 validation accuracy by epoch 10 and is within 0.02 of it by
    # epoch 6, so the baseline plateaus by the middle point and late overfitting has room to show;
    # a run takes about 4 minutes on 2 cores. 20,480 images are a multiple of 128 x 4 x 40: every
    # epoch of an accumulation-4 run that is a multiple of 4 has an exactly step-matched epoch of
    # the accumulation-1 run (epochs 4, 8, 12 <-> 1, 2, 3).
    "cpu": GridBudget((3, 6, 15), "swin-nano", 20_480, "the paper's 1:2:5 ratio at CPU scale"),
    "standard": GridBudget(EPOCH_POINTS, "swin-micro", None, "the paper's epochs, full data"),
}
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


def grid_runs(*, n_gao: int, seeds: int, arms: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every run of the grid: the accumulation-1 runs once (lr scaling "none", which is the same lr
    under every rule), then the accumulated runs once per arm."""
    runs = []
    for seed in range(seeds):
        for batch in BATCH_SIZES:
            runs.append({"batch_size": batch, "accumulation_steps": 1, "lr_scaling": "none", "seed": seed})
            runs += [
                {"batch_size": batch, "accumulation_steps": n_gao, "lr_scaling": arm, "seed": seed}
                for arm in arms
            ]
    return runs


@dataclass(frozen=True)
class GridDesign:
    """The grid of one command: fixed settings (the paper protocol at a budget), the parameter
    choices (the GridSampler's grid; only the combinations of ``grid_runs`` are run), the epoch
    points and a description for the study."""

    settings: dict[str, Any]
    choices: dict[str, tuple[Any, ...]]
    epoch_points: tuple[int, ...]
    description: str

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The run's parameters (an enqueued run's fixed values), recorded as the trial's params."""
        return {name: trial.suggest_categorical(name, list(values)) for name, values in self.choices.items()}

    def config(self, params: dict[str, Any], *, pool: int | None = None, **run: Any) -> TrainConfig:
        """A grid run's config. The learning rate is scaled relative to the micro-batch run
        (reference batch = micro-batch), so lr = base_lr x accumulation_steps ** p for the run's rule."""
        return build_config(
            self.settings, {**params, "reference_batch_size": params["batch_size"]}, pool=pool, **run
        )


def grid_design(
    *,
    n_gao: int,
    seeds: int,
    budget: str,
    base_lr: float,
    arms: tuple[str, ...] = ("none",),
    noise_scale: bool = False,
) -> GridDesign:
    """The grid: batch_size x accumulation_steps x lr_scaling x seed at the budget's scale;
    ``noise_scale`` makes every run measure the gradient noise scale (study.noise)."""
    scale = GRID_BUDGETS[budget]
    points = scale.epoch_points
    settings = {**PAPER_PROTOCOL, "base_lr": base_lr, "epochs": max(points), "model": scale.model}
    if noise_scale:
        settings["noise_scale"] = True
    del settings["lr_scaling"]  # a grid parameter: the arm of an accumulated run
    if scale.train_subset is not None:
        settings["train_subset"] = scale.train_subset
    choices = {
        "batch_size": BATCH_SIZES,
        "accumulation_steps": (1, n_gao),
        "lr_scaling": tuple(LR_SCALING_EXPONENTS),
        "seed": tuple(range(seeds)),
    }
    scaled = [a for a in arms if a != "none"]
    description = (
        f"The paper's fixed grid: batch {BATCH_SIZES} x accumulation (1, {n_gao}) x epochs {points}, "
        f"{seeds} seed(s); Adam, constant lr {base_lr:g}, no regularization, "
        + (
            f"no lr scaling, and arms whose accumulated runs scale the lr ({', '.join(scaled)})."
            if scaled
            else "no lr scaling."
        )
    )
    return GridDesign(settings, choices, points, description)


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
    parser.add_argument(
        "--lr-scaling",
        default="none",
        help="comma-separated arms for the accumulated runs: none (the paper), linear (lr x N), sqrt "
        "(lr x sqrt N); the accumulation-1 runs are shared by all arms (default: none)",
    )
    parser.add_argument(
        "--noise-scale",
        action="store_true",
        help="every run measures the gradient noise scale per epoch (micro-batch vs effective-batch "
        "gradients; without accumulation, one step in 8 runs as two halves); about 2%% of a step's time",
    )
    parser.add_argument("--study-name", help="default: DATASET-grid-BUDGET; an existing grid is resumed")
    add_storage_flag(parser)
    parser.add_argument(
        "--budget",
        choices=tuple(GRID_BUDGETS),
        help="; ".join(
            f"{name}: epoch points {'/'.join(map(str, b.epoch_points))}, {b.model}, "
            + (f"{b.train_subset} training images" if b.train_subset else "full data")
            for name, b in GRID_BUDGETS.items()
        )
        + ". Default: standard with CUDA, quick without",
    )
    add_workers_flags(parser, what="the runs to do")
    # Internal: how many queued runs a worker process of --workers takes.
    parser.add_argument("--worker-runs", type=int, default=None, help=argparse.SUPPRESS)
    add_training_flags(parser)
    return parser


def worker_command(args: argparse.Namespace, study_name: str) -> Callable[[int, int], list[str]]:
    """argv of a worker process that takes ``share`` of the queued runs (exact shares, so none
    samples a point off the grid)."""

    def command(index: int, share: int) -> list[str]:
        return [
            sys.executable, "-m", "study.grid",
            "--dataset", args.dataset, "--n-gao", str(args.n_gao), "--seeds", str(args.seeds),
            "--base-lr", repr(args.base_lr), "--lr-scaling", args.lr_scaling, "--study-name", study_name,
            "--budget", args.budget, "--device", args.device, "--data-dir", args.data_dir,
            "--worker-index", str(index), "--worker-runs", str(share), "--quiet",
        ] + (["--noise-scale"] if args.noise_scale else [])  # fmt: skip

    return command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_common(PROG, args)
    if args.n_gao < 2:
        fail(PROG, f"--n-gao must be >= 2 (the grid compares it with no accumulation); got {args.n_gao}")
    if args.seeds < 1:
        fail(PROG, f"--seeds must be >= 1; got {args.seeds}")
    if args.workers < 1:
        fail(PROG, f"--workers must be >= 1; got {args.workers}")
    if not args.base_lr > 0:
        fail(PROG, f"--base-lr must be > 0; got {args.base_lr:g}")
    arms = tuple(dict.fromkeys(a.strip() for a in args.lr_scaling.split(",") if a.strip()))
    unknown = [a for a in arms if a not in LR_SCALING_EXPONENTS]
    if unknown or not arms:
        fail(PROG, f"--lr-scaling takes arms of {', '.join(LR_SCALING_EXPONENTS)}; got {args.lr_scaling!r}")
    budget_note = resolve_budget(args)
    design = grid_design(
        n_gao=args.n_gao,
        seeds=args.seeds,
        budget=args.budget,
        base_lr=args.base_lr,
        arms=arms,
        noise_scale=args.noise_scale,
    )
    run = {"dataset": args.dataset, "data_dir": args.data_dir, "device": args.device}
    try:
        url = resolve_url(args.storage)
        raw = load_raw(args.dataset, args.data_dir)  # missing or damaged data fail before the storage exists
        pool = len(raw.train_labels)
        for params in grid_runs(n_gao=args.n_gao, seeds=1, arms=arms):  # e.g. the effective batch must fit
            design.config(params, pool=pool, **run)
    except (StorageError, DataError) as exc:
        fail(PROG, str(exc))
    except ValueError as exc:
        fail(PROG, f"the grid cannot run on {args.dataset}: {exc}")
    objective = Objective(
        lambda trial: design.config(design.suggest(trial), pool=pool, **run),
        raw,
        checkpoints=design.epoch_points,
    )
    study_name = args.study_name or f"{args.dataset}-grid-{args.budget}"
    identity = {
        records.DATASET: args.dataset,
        records.SPACE: "grid",
        records.BUDGET: args.budget,
        records.KIND: records.GRID,
        records.N_GAO: args.n_gao,
    }
    try:
        study, exists = open_study(
            url,
            study_name,
            identity,
            sampler=optuna.samplers.GridSampler({k: list(v) for k, v in design.choices.items()}, seed=0),
            pruner=optuna.pruners.NopPruner(),
        )
    except StudyError as exc:
        fail(PROG, str(exc))
    if args.worker_runs is not None:  # a worker of --workers: the parent has queued the runs
        optimize(
            study, objective, n_trials=args.worker_runs, quiet=True, prefix=f"[worker {args.worker_index}] "
        )
        return 0
    points = design.epoch_points
    if not exists:
        study.set_user_attr(records.EPOCH_POINTS, list(points))
    # A resumed grid runs only what is missing (more --seeds or arms grow it).
    arms = tuple(dict.fromkeys([*study.user_attrs.get(records.ARMS, []), *arms]))
    study.set_user_attr(records.ARMS, list(arms))
    study.set_user_attr(records.SPACE_DESCRIPTION, design.description)
    runs = grid_runs(n_gao=args.n_gao, seeds=args.seeds, arms=arms)
    todo = missing_runs(study, runs)
    cfg = design.config(runs[0], pool=pool, **run)
    print(
        f"grid {study_name} ({'resumed' if exists else 'new'}) on {mask(url)}\n"
        f"dataset {args.dataset}, budget {args.budget} ({budget_note}): epoch points {', '.join(map(str, points))}"
        + f" ({GRID_BUDGETS[args.budget].note})"
        + f", model {cfg.model}, {cfg.num_train} training images, Adam lr {args.base_lr:g}\n"
        f"lr-scaling arms {', '.join(arms)} (accumulation-1 runs shared by all arms)\n"
        f"{len(todo)} of {len(runs)} runs to do" + (f", {args.workers} workers" if args.workers > 1 else ""),
        flush=True,
    )
    enqueue_runs(study, todo)
    code = 0
    if todo and args.workers > 1:
        code = run_worker_processes(
            study,
            url,
            total=len(todo),
            workers=args.workers,
            command=worker_command(args, study_name),
            prog=PROG,
            quiet=args.quiet,
        )
    elif todo:
        optimize(study, objective, n_trials=len(todo), quiet=args.quiet)
    print(summary(study, url))
    print(
        f"verdict: python -m analysis.overfitting --study {study_name}"
        + ("" if args.storage is None else f" --storage '{mask(url)}'")
    )
    return code


if __name__ == "__main__":
    run_main(PROG, main, quiet="--worker-index" in sys.argv)  # workers leave the Ctrl-C line to their parent
