"""``python -m study.run``: an Optuna study, with pruning, over a search space of the Swin trainer.

Every input a user can get wrong is checked before the storage is touched, so a bad command exits
2 with one line and leaves no empty study behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from typing import Any, TextIO

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search_spaces import SearchSpace, SpaceError, available, load_space
from study.cli import ArgumentParser, fail
from study.config import DATASET_SIZES, TrainConfig
from study.data import DataError
from study.objective import OBJECTIVES, Objective
from study.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    StorageError,
    mask,
    open_storage,
    resolve_url,
    study_exists,
    tune_for_writing,
)
from study.workers import optimize_guarded, run_main, settled, supervise

PROG = "study.run"
SAMPLERS = ("tpe", "qmc", "random")
PRUNERS = ("hyperband", "median", "none")
BUDGETS = ("quick", "cpu", "standard")


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
    parser.add_argument(
        "--storage",
        help=f"SQLAlchemy URL (default: ${STORAGE_ENV} or sqlite:///storage/studies.db); PostgreSQL: "
        "postgresql+psycopg://user@host/db, with the password in $STUDY_STORAGE to keep it off the command line",
    )
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
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine sharing the storage (default: 1)",
    )
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        help="quick: smoke runs in CPU minutes (small preset, data subset, fewer epochs, as the space says); "
        "cpu: the science at CPU scale (the CPU preset on a training subset it learns, the space's "
        "[budget.cpu]); standard: the space as written (full data, GPU preset). Default: standard with "
        "CUDA, quick without",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device")
    parser.add_argument("--data-dir", default="data", help="where datasets live (default: ./data)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # Internal: set on the worker processes that --workers starts.
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar keeps parallel workers from sampling the same point while trials run
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.RandomSampler(seed=seed)


def sampler_seed(seed: int, worker_index: int | None, n_existing: int) -> int:
    """``seed`` for a new study's first process; otherwise a seed derived from (seed, worker index,
    trials already in the study), so that workers and resumed runs draw new points, reproducibly."""
    if not worker_index and not n_existing:
        return seed
    return int(np.random.SeedSequence([seed, worker_index or 0, n_existing]).generate_state(1)[0])


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def check_space(objective: Objective) -> TrainConfig:
    """Build the config of the baseline and of every edge of every parameter, so a space that
    cannot run on this dataset (say an effective batch larger than the training set) fails now,
    not in trial 7. Returns the baseline's config."""
    space = objective.space
    lowest = {name: p.choices[0] if p.type == "categorical" else p.low for name, p in space.params.items()}
    start = {**lowest, **space.baseline}
    baseline = objective.config(start)
    for name, p in space.params.items():
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            try:
                objective.config({**start, name: value})
            except ValueError as exc:
                raise SpaceError(f"{space.path}: params.{name} = {value!r} cannot run: {exc}") from None
    return baseline


def format_trial(trial: FrozenTrial, prefix: str = "") -> str:
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        outcome = (
            f"val acc {trial.values[0]:.4f}  train acc {attrs.get('train_accuracy', float('nan')):.4f}  "
            f"gap {attrs.get('generalization_gap', float('nan')):+.4f}"
            + (f"  train {trial.values[1]:.1f}s" if len(trial.values) > 1 else "")
        )
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned after epoch {attrs.get('epochs_trained', len(trial.intermediate_values))}"
    else:
        outcome = attrs.get("fail_reason", "failed")
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    return f"{prefix}trial {trial.number} {trial.state.name}: {outcome}  ({params})  {seconds:.1f}s"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary(study: optuna.Study, url: str) -> str:
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    lines = [
        f"study {study.study_name}: {sum(counts.values())} trials ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        + ")"
    ]
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if completed and len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: -t.values[0])
        lines.append(f"Pareto front (val acc up, train seconds down): {len(front)} trial(s)")
        lines += [
            f"  trial {t.number}: val acc {t.values[0]:.4f}, train {t.values[1]:.1f}s  ("
            + ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
            + ")"
            for t in front
        ]
    elif completed:
        best = study.best_trial
        a = best.user_attrs
        lines.append(
            f"best: trial {best.number}, val acc {best.value:.4f}, test acc {a.get('test_accuracy', float('nan')):.4f}, "
            f"gap {a.get('generalization_gap', float('nan')):+.4f}, effective batch {a.get('effective_batch_size')}, "
            f"lr {a.get('lr', float('nan')):.3g}"
        )
        lines.append("  params: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    storage_flag = "" if url == DEFAULT_STORAGE else f" --storage '{mask(url)}'"
    lines.append(f"browse:  python -m study.dashboard{storage_flag}")
    lines.append(f"report:  python -m analysis.report --study {study.study_name}{storage_flag}")
    return "\n".join(lines)


def progress_bar(total: int, *, quiet: bool) -> tqdm:
    """A bar over trials, on a terminal only (logs get the one line per finished trial)."""
    return tqdm(
        total=total, desc="trials", unit="trial", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


def shares(total: int, workers: int) -> list[int]:
    """Split ``total`` trials over workers as evenly as possible (exact total, no overshoot)."""
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def _run_workers(args: argparse.Namespace, space: SearchSpace, url: str, study: optuna.Study) -> int:
    """Start ``args.workers`` processes on the same study, replace any that a signal kills
    (study/workers.py), show progress from the storage."""
    env = {**os.environ, STORAGE_ENV: url}  # the URL (and any password) stays off the command line
    # One process per worker, each with all the cores' threads, would oversubscribe the CPU
    # (two workers on two cores ran a quick trial 100x slower): split the cores among them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.workers)))

    def command(index: int, share: int) -> list[str]:
        argv = [
            sys.executable, "-m", "study.run",
            "--dataset", args.dataset, "--space", str(space.path), "--study-name", study.study_name,
            "--n-trials", str(share), "--sampler", args.sampler, "--pruner", args.pruner,
            "--objectives", ",".join(args.objectives),
            "--seed", str(args.seed), "--budget", args.budget, "--device", args.device,
            "--data-dir", args.data_dir, "--worker-index", str(index), "--quiet",
        ]  # fmt: skip
        if args.timeout:
            argv += ["--timeout", str(args.timeout)]
        return argv

    bar = progress_bar(args.n_trials, quiet=args.quiet)
    try:
        return supervise(
            study,
            shares(args.n_trials, args.workers),
            command,
            env,
            prog=PROG,
            progress=lambda done: bar.update(done - bar.n),
        )
    finally:
        bar.close()


def resolve_budget(args: argparse.Namespace) -> str:
    """Fill ``args.budget`` from the device when not given; returns how it was chosen."""
    if args.budget is not None:
        return "given"
    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    args.budget = "standard" if on_gpu else "quick"
    return "chosen: CUDA device found" if on_gpu else "chosen: no CUDA device"


def check_common(prog: str, args: argparse.Namespace) -> None:
    """Checks shared by the study CLIs (one line, exit 2)."""
    if getattr(args, "n_trials", 1) < 1:
        fail(prog, f"--n-trials must be >= 1; got {args.n_trials}")
    if getattr(args, "timeout", None) is not None and args.timeout <= 0:
        fail(prog, f"--timeout must be > 0 seconds; got {args.timeout:g}")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(prog, "--device cuda was requested but no CUDA device is available; use --device cpu")


def open_study(
    prog: str,
    url: str,
    study_name: str,
    identity: dict[str, Any],
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    objectives: tuple[str, ...] = ("accuracy",),
) -> tuple[optuna.Study, bool]:
    """Create or resume ``study_name``; refuses (exit 2) to resume a study whose identity
    (dataset, space or design, budget, objectives) differs. Returns the study and whether it existed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_storage(url)
        exists = study_exists(storage, study_name)
    except StorageError as exc:
        fail(prog, str(exc))
    if exists:
        existing = optuna.load_study(study_name=study_name, storage=storage)
        previous = existing.user_attrs
        clash = {k: previous[k] for k in identity if k in previous and previous[k] != identity[k]}
        if [d.name.lower() for d in existing.directions] != [OBJECTIVES[name][1] for name in objectives]:
            directions = ",".join(d.name.lower() for d in existing.directions)
            clash["objectives"] = previous.get("objectives", f"direction(s) {directions}")
        if clash:
            found = ", ".join(f"{k}={v}" for k, v in clash.items())
            fail(prog, f"study {study_name!r} was created with {found}; pick another --study-name")
    tune_for_writing(storage)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=[OBJECTIVES[name][1] for name in objectives],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if not exists:
        with warnings.catch_warnings():  # experimental in Optuna, but only labels the dashboard's axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVES[name][0] for name in objectives])
        for key, value in identity.items():
            study.set_user_attr(key, value)
    return study, exists


def optimize(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int,
    timeout: float | None = None,
    quiet: bool = False,
    prefix: str = "",
    stream: TextIO = sys.stdout,
) -> None:
    """``study.optimize`` with a progress bar and one line per finished trial (on ``stream``)."""
    bar = progress_bar(n_trials, quiet=quiet)

    def on_trial_end(_: optuna.Study, trial: FrozenTrial) -> None:
        bar.update(1)
        # one write per line: lines of workers sharing a terminal or pipe never interleave
        tqdm.write(format_trial(trial, prefix) + "\n", file=stream, end="")

    try:
        optimize_guarded(  # Ctrl-C: the running trial is failed as "interrupted" and queued again
            study,
            objective,
            n_trials=n_trials,
            timeout=timeout,
            callbacks=[on_trial_end],
            # A trial that raises at run time (CUDA out of memory, a kernel error) is recorded as
            # FAIL with its message and the study goes on; programming errors still stop it.
            catch=(RuntimeError,),
        )
    finally:
        bar.close()


def _matches(params: dict[str, Any], other: dict[str, Any]) -> bool:
    return all(other.get(k) == v for k, v in params.items())


def missing_runs(study: optuna.Study, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fixed-parameter runs of ``wanted`` without a settled trial (``study.workers.settled``:
    a killed or interrupted run is still missing), so a resumed grid or replication runs only
    what is missing."""
    done = [t.params for t in study.get_trials(deepcopy=False) if settled(t)]
    return [params for params in wanted if not any(_matches(params, p) for p in done)]


def enqueue_runs(study: optuna.Study, runs: list[dict[str, Any]]) -> None:
    """Enqueue each run's parameters, unless a copy of it (a retry) is already queued, so that
    exactly ``len(runs)`` queued trials stand for ``runs``."""
    queued = [
        t.system_attrs.get("fixed_params", {})
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    ]
    for params in runs:
        if not any(_matches(params, q) for q in queued):
            study.enqueue_trial(params)


def run_enqueued(
    study: optuna.Study,
    objective: Objective,
    runs: list[dict[str, Any]],
    *,
    quiet: bool,
    stream: TextIO = sys.stdout,
) -> None:
    """Enqueue ``runs`` (``enqueue_runs``) and optimize exactly that many trials."""
    enqueue_runs(study, runs)
    if runs:
        optimize(study, objective, n_trials=len(runs), quiet=quiet, stream=stream)


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
        objective = Objective(
            space,
            args.budget,
            {"dataset": args.dataset, "data_dir": args.data_dir, "device": args.device, "seed": args.seed},
            objectives=args.objectives,
        )
        # Data missing while offline, or damaged files, fail here, before the storage exists; read
        # first, so that the space is checked against the images actually there.
        objective.raw()
        baseline = check_space(objective)
    except (SpaceError, StorageError, DataError) as exc:
        fail(PROG, str(exc))
    except ValueError as exc:  # a fixed setting of the space that TrainConfig rejects
        fail(PROG, f"{space.path}: {exc}")
    study_name = args.study_name or f"{args.dataset}-{space.name}-{args.budget}" + ("-time" if multi else "")

    # --- the storage and the study ------------------------------------------------------------
    epochs = int(space.params["epochs"].high) if "epochs" in space.params else baseline.epochs
    study, exists = open_study(
        PROG,
        url,
        study_name,
        {
            "dataset": args.dataset,
            "space": space.name,
            "budget": args.budget,
            "objectives": ",".join(args.objectives),
        },
        sampler=make_sampler(args.sampler, args.seed),
        pruner=make_pruner(args.pruner, epochs),
        objectives=args.objectives,
    )
    if exists and args.sampler != "qmc":  # QMC continues its own sequence from the stored trials
        # A worker, or a resumed study, must not re-draw the random points the first run drew.
        study.sampler = make_sampler(
            args.sampler, sampler_seed(args.seed, args.worker_index, len(study.trials))
        )
    if not worker:
        if not exists:
            study.set_user_attr("kind", "search")
            study.set_user_attr("roles", space.roles())
            study.set_user_attr("space_description", space.description.strip())
            if space.baseline:
                # the paper protocol's default first, so every study contains the paper's setting
                study.enqueue_trial(space.baseline, user_attrs={"baseline": True}, skip_if_exists=True)
        print(
            f"study {study_name} ({'resumed, ' + str(len(study.trials)) + ' trials so far' if exists else 'new'}) "
            f"on {mask(url)}\n"
            f"dataset {args.dataset}, space {space.name}, budget {args.budget} ({budget_note}), "
            f"sampler {args.sampler}, pruner {args.pruner}, objectives {','.join(args.objectives)}, "
            f"{args.n_trials} trials, {args.workers} worker(s)",
            flush=True,
        )
        if args.workers > 1:
            code = _run_workers(args, space, url, study)
            print(summary(study, url))
            return code

    prefix = f"[worker {args.worker_index}] " if worker else ""
    optimize(study, objective, n_trials=args.n_trials, timeout=args.timeout, quiet=args.quiet, prefix=prefix)
    if not worker:
        print(summary(study, url))
    return 0


if __name__ == "__main__":
    run_main(PROG, main, quiet="--worker-index" in sys.argv)  # workers leave the Ctrl-C line to their parent
