"""The study library: opening, creating and checking studies; samplers, pruners, optimize, runs.

The commands (``study.run``, ``study.grid``, ``study.replicate``, ``study.experiment`` and the
analysis commands) parse and check their flags, then call these functions; no command imports
another. What a trial stores is named in ``study.lib.records``; where the storage is and how it is
tuned, in ``study.lib.storage``; what happens when a process stops, in ``study.lib.workers``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search_spaces import SearchSpace, SpaceError
from study.lib import records
from study.lib.cli import worker_argv
from study.lib.config import TrainConfig
from study.lib.records import OBJECTIVE_METRICS
from study.lib.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    StorageError,
    mask,
    open_storage,
    resolve_url,
    study_exists,
    tune_for_writing,
)
from study.lib.workers import QueueClaim, optimize_guarded, queue_lock, settled, supervise

if TYPE_CHECKING:  # the objective imports torch; opening a study for analysis must not
    from study.lib.objective import Objective

SAMPLERS = ("tpe", "qmc", "random")
PRUNERS = ("hyperband", "median", "none")
BUDGETS = ("quick", "cpu", "standard")


class StudyError(ValueError):
    """A user-facing problem with a study: unknown name, unusable storage, a clashing resume,
    nothing to analyse. Commands print it as one line and exit 2."""


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


def check_space(space: SearchSpace, config: Callable[[dict[str, Any]], TrainConfig]) -> TrainConfig:
    """Build (``config``: params -> TrainConfig) the config of the baseline and of every edge of
    every parameter, so a space that cannot run on this dataset (say an effective batch larger
    than the training set) fails now, not in trial 7. Returns the baseline's config.

    Raises:
        SpaceError: naming the parameter and value that cannot run.
    """
    lowest = {name: p.choices[0] if p.type == "categorical" else p.low for name, p in space.params.items()}
    start = {**lowest, **space.baseline}
    baseline = config(start)
    for name, p in space.params.items():
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            try:
                config({**start, name: value})
            except ValueError as exc:
                raise SpaceError(f"{space.path}: params.{name} = {value!r} cannot run: {exc}") from None
    return baseline


def format_trial(trial: FrozenTrial, prefix: str = "") -> str:
    """One line per finished trial: state, the deciding numbers, params, seconds."""
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        outcome = (
            f"val acc {trial.values[0]:.4f}  train acc {_number(trial, 'train_accuracy'):.4f}  "
            f"gap {_number(trial, 'generalization_gap'):+.4f}"
            + (f"  train {trial.values[1]:.1f}s" if len(trial.values) > 1 else "")
        )
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned after epoch {records.epochs_trained(trial)}"
    else:
        outcome = trial.user_attrs.get(records.FAIL_REASON, "failed")
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    return f"{prefix}trial {trial.number} {trial.state.name}: {outcome}  ({params})  {seconds:.1f}s"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _number(trial: FrozenTrial, name: str) -> float:
    value = records.metric(trial, name)
    return float("nan") if value is None else value


def summary(study: optuna.Study, url: str) -> str:
    """The end of a command: trials by state, the best trial or the Pareto front, what to run next."""
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
        lines.append(
            f"best: trial {best.number}, val acc {best.value:.4f}, test acc {_number(best, 'test_accuracy'):.4f}, "
            f"gap {_number(best, 'generalization_gap'):+.4f}, "
            f"effective batch {records.metric(best, 'effective_batch_size')}, lr {_number(best, 'lr'):.3g}"
        )
        lines.append("  params: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    storage_flag = "" if url == DEFAULT_STORAGE else f" --storage '{mask(url)}'"
    lines.append(f"browse:  python -m study.dashboard{storage_flag}")
    lines.append(f"report:  python -m analysis.report --study {study.study_name}{storage_flag}")
    return "\n".join(lines)


def run_worker_processes(
    study: optuna.Study,
    url: str,
    *,
    total: int,
    workers: int,
    command: Callable[[int, int], list[str]],
    prog: str,
    quiet: bool,
    drain: bool = False,
) -> int:
    """Start ``workers`` processes (``command(index, share) -> argv``) that run ``total`` trials of
    ``study`` between them, replace any that a signal kills (``study.lib.workers.supervise``), and
    show the progress read from the storage. A search's workers run exact shares; with ``drain``
    (the ``total`` trials are queued), each takes queued trials until none is left
    (``optimize_queued``). Returns 0 when every worker finished."""
    env = {**os.environ, STORAGE_ENV: url}  # the URL (and any password) stays off the command line
    # One process per worker, each with all the cores' threads, would oversubscribe the CPU
    # (two workers on two cores ran a quick trial 100x slower): split the cores among them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    bar = progress_bar(total, quiet=quiet)
    try:
        return supervise(
            study,
            shares(total, workers),
            command,
            env,
            prog=prog,
            progress=lambda done: bar.update(done - bar.n),
            drain=drain,
        )
    finally:
        bar.close()


def progress_bar(total: int, *, quiet: bool) -> tqdm:
    """A bar over trials, on a terminal only (logs get the one line per finished trial)."""
    return tqdm(
        total=total, desc="trials", unit="trial", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


def shares(total: int, workers: int) -> list[int]:
    """Split ``total`` trials over workers as evenly as possible (exact total, no overshoot)."""
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def open_study(
    url: str,
    study_name: str,
    identity: dict[str, Any],
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    objectives: tuple[str, ...] = ("accuracy",),
) -> tuple[optuna.Study, bool]:
    """Create or resume ``study_name``; refuses to resume a study whose identity
    (dataset, space or design, budget, objectives) differs. Returns the study and whether it existed.

    Raises:
        StudyError: the storage is unusable, or the existing study was created otherwise.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_storage(url)
        exists = study_exists(storage, study_name)
    except StorageError as exc:
        raise StudyError(str(exc)) from None
    if exists:
        existing = optuna.load_study(study_name=study_name, storage=storage)
        previous = existing.user_attrs
        clash = {k: previous[k] for k in identity if k in previous and previous[k] != identity[k]}
        if [d.name.lower() for d in existing.directions] != [
            OBJECTIVE_METRICS[name][1] for name in objectives
        ]:
            directions = ",".join(d.name.lower() for d in existing.directions)
            clash["objectives"] = previous.get("objectives", f"direction(s) {directions}")
        if clash:
            found = ", ".join(f"{k}={v}" for k, v in clash.items())
            raise StudyError(f"study {study_name!r} was created with {found}; pick another --study-name")
    tune_for_writing(storage)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=[OBJECTIVE_METRICS[name][1] for name in objectives],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if not exists:
        with warnings.catch_warnings():  # experimental in Optuna, but only labels the dashboard's axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_METRICS[name][0] for name in objectives])
        records.write_study_attrs(study, identity)
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
        # one write per line: lines of workers sharing a terminal or pipe never interleave; flushed,
        # or a file (nohup ... > log) would show them only when its 8 KiB buffer filled
        tqdm.write(format_trial(trial, prefix) + "\n", file=stream, end="")
        stream.flush()

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


class Unqueued(RuntimeError):
    """A worker draining the queue was given a trial nobody queued (another process took the last
    queued one without the queue's lock): the trial is withdrawn unrun and the worker stops."""


def optimize_queued(
    study: optuna.Study,
    objective: Objective,
    *,
    url: str,
    timeout: float | None = None,
    prefix: str = "",
    stream: TextIO = sys.stdout,
) -> None:
    """Run the study's queued (WAITING) trials one after another until none is left: a worker of a
    grid or a replication, whose runs are all queued, takes the next run when it finishes one, so
    a worker that drew short runs does not wait while another runs the long ones. Every process
    draining this study (at ``url``) on this machine looks at the queue and takes a trial under one
    lock (``study.lib.workers.QueueClaim``), so none is handed a trial nobody queued; the trials of
    lost workers are failed and their retries queued first, so none is missed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    unqueued: list[int] = []
    while not unqueued and (deadline is None or time.monotonic() < deadline):
        with QueueClaim(queue_lock(url, study.study_name)) as claim:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return

            def claimed(trial: optuna.Trial, claim: QueueClaim = claim) -> Any:
                claim.release()  # Optuna has taken this trial out of the queue: the next worker may look
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                frozen = next(t for t in running if t.number == trial.number)
                if "fixed_params" not in frozen.system_attrs:  # Optuna found the queue empty and made one
                    unqueued.append(trial.number)
                    reason = "not queued: another process took the last queued run without the queue's lock"
                    records.write_failure(trial, status=records.WITHDRAWN, reason=reason)
                    raise Unqueued(f"trial {trial.number} {reason}; withdrawn unrun")
                return objective(trial)

            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            optimize(study, claimed, n_trials=1, timeout=left, quiet=True, prefix=prefix, stream=stream)


def _matches(params: dict[str, Any], other: dict[str, Any]) -> bool:
    return all(other.get(k) == v for k, v in params.items())


def lost_runs(
    study: optuna.Study, runs: list[dict[str, Any]], *, defaults: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The runs of ``runs`` that no trial has settled (``study.lib.workers.settled``) and none is
    running: once the queue is drained, a run whose every attempt was lost (its worker killed each
    time, beyond the retries)."""
    covering = _covering(study.get_trials(deepcopy=False), defaults)
    return [params for params in runs if not any(_matches(params, p) for _, p in covering)]


def _covering(
    trials: list[FrozenTrial], defaults: dict[str, Any] | None
) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    """The trials that cover a run, with their parameters (``defaults`` filled): the settled ones
    first (a queued copy of a run that is done is withdrawn as such), then the running ones."""
    covering = [(t, {**(defaults or {}), **t.params}) for t in trials if settled(t)]
    return covering + [(t, {**(defaults or {}), **t.params}) for t in trials if t.state == TrialState.RUNNING]


def queue_runs(
    study: optuna.Study,
    runs: list[dict[str, Any]],
    *,
    defaults: dict[str, Any] | None = None,
    resume_point: Callable[[optuna.Study, FrozenTrial], int] = lambda study, trial: 0,
) -> int:
    """Make the queue hold exactly one WAITING trial for each run of ``runs`` that no trial has
    settled (``study.lib.workers.settled``: a lost or interrupted run is not) and none is running,
    so that a resumed grid or replication runs only what is missing, once. Returns that number.

    The trials of lost workers are failed first (Optuna's ``fail_stale_trials``), so their retries
    are in the queue before it is read. Of several queued copies of one run, the one that resumes
    furthest (``resume_point``: the epoch of the checkpoint it would load) is kept; the others, and
    the queued copies of runs that are settled or running, are withdrawn (``records.withdraw``).
    ``defaults`` fill parameters that trials of an older design did not have (a grid's ``epochs``,
    before grids had step-matched runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)

    def filled(params: dict[str, Any]) -> dict[str, Any]:
        return {**(defaults or {}), **params}

    covering = _covering(trials, defaults)
    waiting = [(t, filled({**t.params, **t.system_attrs.get("fixed_params", {})})) for t in trials
               if t.state == TrialState.WAITING]  # fmt: skip
    queued = 0
    for params in runs:
        copies = [t for t, p in waiting if _matches(params, p)]
        covered = next((t for t, p in covering if _matches(params, p)), None)
        if covered is not None:
            state = "running" if covered.state == TrialState.RUNNING else "done"
            for t in copies:
                records.withdraw(study, t, f"a copy of the run of trial {covered.number}, which is {state}")
            continue
        queued += 1
        if not copies:
            study.enqueue_trial(params)
            continue
        keep = max(copies, key=lambda t: (resume_point(study, t), -t.number))
        for t in copies:
            if t is not keep:
                records.withdraw(
                    study, t, f"a second queued copy of the run of trial {keep.number}, which stays queued"
                )
    return queued


@dataclass
class Plan:
    """The trials one command runs in one study: what ``execute`` needs, built by the command's
    library (``study.lib.run``, ``study.lib.grid``, ``study.lib.replicate``) from its flags.

    Args:
        study_name: The study (created, or resumed when its identity matches).
        identity: Study attrs a resumed study must have the same (dataset, space or design, budget).
        sampler, pruner, objectives: The study's.
        objective: ``trial -> value``: configure, train, report, record.
        runs: Fixed runs to queue (the grid's or a replication's parameters), of which only the ones
            the study lacks run; None for a search, which samples ``n_trials`` new trials.
        n_trials: A search's trials to add.
        run_defaults: Parameters that trials of an older design lack (``queue_runs``).
        on_open: Called with (study, existed) in every process once the study is open (a search
            reseeds its sampler there).
        prepare: Called with (study, existed) before anything runs, by the parent process only:
            describes a new study, enqueues a search's baseline, reseeds a resumed sampler.
        header: (study, existed, trials to run) -> the lines printed before the trials run.
        worker_flags: trials -> the flags the parent resolved, given to each ``--workers`` process.
        footer: Extra lines after the summary (what to run next).
    """

    study_name: str
    identity: dict[str, Any]
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    objective: Objective
    runs: list[dict[str, Any]] | None = None
    n_trials: int = 0
    objectives: tuple[str, ...] = ("accuracy",)
    run_defaults: dict[str, Any] | None = None
    timeout: float | None = None
    on_open: Callable[[optuna.Study, bool], None] = lambda study, existed: None
    prepare: Callable[[optuna.Study, bool], None] = lambda study, existed: None
    header: Callable[[optuna.Study, bool, int], str] = lambda study, existed, todo: ""
    worker_flags: Callable[[int], list[str]] = lambda trials: []
    footer: str = ""
    stream: TextIO = sys.stdout

    def checkpoint_line(self, study: optuna.Study) -> str:
        """Where the study's checkpoints are and what they take, when it writes them."""
        store = getattr(self.objective, "store", None)
        if store is None:
            return ""
        files, size = store.disk_use(study.study_name)
        return f"checkpoints: {files} file(s), {size / 2**20:.1f} MiB in {store.folder}"


def execute(
    plan: Plan,
    url: str,
    *,
    prog: str,
    module: str,
    argv: list[str] | None,
    workers: int = 1,
    worker_index: int | None = None,
    worker_trials: int | None = None,
    quiet: bool = False,
) -> int:
    """Open (or resume) the plan's study and run its trials: here, or in ``workers`` processes
    (``python -m module``, each given the parent's own flags and ``plan.worker_flags``), then print
    the summary. A worker process (``worker_index`` set) runs its ``worker_trials`` trials of a
    search, or the queued runs of a grid or a replication until none is left. Returns the exit code.

    Raises:
        StudyError: the storage is unusable, or the study exists with another identity.
    """
    study, existed = open_study(url, plan.study_name, plan.identity, sampler=plan.sampler, pruner=plan.pruner,
                                objectives=plan.objectives)  # fmt: skip
    plan.on_open(study, existed)
    if worker_index is not None:  # a worker of --workers: the parent prepared and queued everything
        prefix = f"[worker {worker_index}] "
        if plan.runs is not None:  # every run is queued: take them until none is left
            optimize_queued(study, plan.objective, url=url, timeout=plan.timeout, prefix=prefix, stream=plan.stream)
        else:
            optimize(study, plan.objective, n_trials=worker_trials or plan.n_trials, timeout=plan.timeout,
                     quiet=True, prefix=prefix, stream=plan.stream)  # fmt: skip
        return 0
    plan.prepare(study, existed)
    todo = plan.n_trials
    if plan.runs is not None:
        store = getattr(plan.objective, "store", None)
        todo = queue_runs(study, plan.runs, defaults=plan.run_defaults,
                          resume_point=lambda study, t: 0 if store is None else store.resume_point(study, t))  # fmt: skip
    if text := plan.header(study, existed, todo):
        print(text, file=plan.stream, flush=True)
    code = 0
    if todo and workers > 1:
        code = run_worker_processes(
            study, url, total=todo, workers=workers, prog=prog, quiet=quiet, drain=plan.runs is not None,
            command=lambda index, share: worker_argv(module, argv, index=index, resolved=plan.worker_flags(share)),
        )  # fmt: skip
    elif todo:
        optimize(study, plan.objective, n_trials=todo, timeout=plan.timeout, quiet=quiet, stream=plan.stream)
    lost = lost_runs(study, plan.runs, defaults=plan.run_defaults) if todo and plan.runs is not None else []
    if lost and not code:
        print(f"{prog}: {len(lost)} run(s) lost every attempt, e.g. {lost[0]}; run the same command to resume",
              file=sys.stderr)  # fmt: skip
        code = 1
    extra = [line for line in (plan.checkpoint_line(study), plan.footer) if line]
    print("\n".join([summary(study, url), *extra]), file=plan.stream)
    return code


def existing_storage(url: str | None) -> tuple[str, optuna.storages.BaseStorage]:
    """Resolve ``url`` (``study.lib.storage.resolve_url``) and open a storage that must already exist,
    for reading or browsing: returns the URL and the storage; never creates a database.

    Raises:
        StudyError: the URL is malformed, or the storage does not exist or is unusable.
    """
    try:
        resolved = resolve_url(url)
        return resolved, open_storage(resolved, create=False)
    except StorageError as exc:
        raise StudyError(str(exc)) from None


def load_studies(names: list[str], storage: str | None) -> list[optuna.Study]:
    """Load existing studies for reading; never creates a database or a study.

    Raises:
        StudyError: the storage does not exist or is unusable, or a study is not in it.
    """
    url, rdb = existing_storage(storage)
    known = [s.study_name for s in rdb.get_all_studies()]
    studies = []
    for name in names:
        if name not in known:
            listing = ", ".join(sorted(known)[:10]) or "none"
            raise StudyError(f"no study {name!r} in {mask(url)}; studies there: {listing}")
        studies.append(optuna.load_study(study_name=name, storage=rdb))
    return studies
