"""What happens to trials when the process running them stops: Ctrl-C, kill -9, restart.

* ``optimize_guarded`` (every process that runs trials): Ctrl-C (SIGINT) during a trial stops it
  at once; the trial is recorded as FAIL with ``fail_reason`` "interrupted ..." and a copy is
  queued (WAITING) to run first when the same command is run again, so nothing is left RUNNING
  and the study resumes where it stopped. A SIGINT while Optuna samples or writes stops the study
  once that is done. Every trial records the process that ran it (user attr ``worker``,
  ``host:pid``), which is how a lost worker's trials are found.
* ``supervise`` (the parent process of ``study.run --workers N``): a worker killed by a signal
  (kill -9, the out-of-memory killer, a preempted machine) is replaced by a new worker for the
  trials it still owed, once its orphaned RUNNING trial has been failed through the heartbeat and
  queued for retry (``study.lib.storage``); the command still ends with exactly the requested number
  of finished trials. Workers on other machines have no parent: for them the heartbeat alone fails
  and retries a lost trial, at the next trial any worker starts. The workers of a grid or a
  replication, whose runs are all queued beforehand, drain the queue instead of running a fixed
  share (``QueueClaim``): a worker that drew short runs takes the next one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.lib import records
from study.lib.storage import heartbeat_settings, retry_callback

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
INTERRUPTED = "interrupted"  # user attr status of a trial stopped by Ctrl-C
INTERRUPTED_REASON = "interrupted by Ctrl-C (SIGINT); queued to run again when the study resumes"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the study; the message says what became of the running trials."""


def worker_tag() -> str:
    """``host:pid`` of this process, recorded on each trial it runs (user attr ``worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def optimize_guarded(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    **optimize_kwargs: Any,
) -> None:
    """``study.optimize(objective, ...)``, with the Ctrl-C handling of this module's docstring.

    Raises:
        Interrupted: after a SIGINT, once the interrupted trial is recorded and its retry queued.
    """
    guard = _TrialGuard()
    try:
        with guard:
            study.optimize(
                guard.wrap(objective),
                callbacks=[*(callbacks or []), guard.stop_if_requested],
                **optimize_kwargs,
            )
    except KeyboardInterrupt:
        guard.requested = True
    if not guard.requested:
        return
    for number in guard.interrupted:
        _queue_retry(study, number)
    if guard.interrupted:
        raise _interrupted(guard.interrupted)
    raise Interrupted("interrupted between two trials; none was running")


def _interrupted(numbers: list[int]) -> Interrupted:
    return Interrupted(
        f"interrupted: trial {', '.join(map(str, numbers))} recorded as FAIL ({INTERRUPTED}), "
        "a copy queued to run first"
    )


class _TrialGuard:
    """SIGINT raises KeyboardInterrupt only while the objective runs (training: stop now, a GPU
    trial may take hours); elsewhere (Optuna sampling or writing to the storage) it only asks the
    study to stop after the current step, so a storage write is never cut in half."""

    def __init__(self) -> None:
        self.requested = False
        self.interrupted: list[int] = []
        self._in_objective = False
        self._previous_handler: Any = None
        self._previous_verbosity = optuna.logging.get_verbosity()

    def __enter__(self) -> _TrialGuard:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self._previous_verbosity = optuna.logging.get_verbosity()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
        optuna.logging.set_verbosity(self._previous_verbosity)

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        self.requested = True
        if self._in_objective:
            self._in_objective = False  # a second Ctrl-C while the trial is being recorded waits
            raise KeyboardInterrupt

    def wrap(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        tag = worker_tag()

        def guarded(trial: optuna.Trial) -> Any:
            try:
                if self.requested:  # Ctrl-C came while Optuna created this trial
                    raise KeyboardInterrupt
                records.start_attempt(trial, worker=tag)
                self._in_objective = True
                return objective(trial)
            except KeyboardInterrupt:
                self._in_objective = False
                self.requested = True
                self.interrupted.append(trial.number)
                records.write_failure(trial, status=INTERRUPTED, reason=INTERRUPTED_REASON)
                # Optuna would log this FAIL with a traceback; the command says it in one line.
                optuna.logging.set_verbosity(optuna.logging.ERROR)
                raise  # Optuna records the trial as FAIL, then re-raises
            finally:
                self._in_objective = False

        return guarded

    def stop_if_requested(self, study: optuna.Study, _trial: FrozenTrial) -> None:
        if self.requested:
            study.stop()


def _queue_retry(study: optuna.Study, number: int) -> None:
    """Queue a copy of interrupted trial ``number`` with the retry that a lost worker's trial
    gets (``study.lib.storage.retry_callback``), so both share ``retry_history`` and its limit."""
    trial = _trial(study, number)
    if trial is not None and trial.state == TrialState.FAIL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_callback()(study, trial)


def _trial(study: optuna.Study, number: int) -> FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def queue_lock(url: str, study_name: str) -> str:
    """The lock file of a study's queue on this machine: every process that drains the queue of
    ``study_name`` in the storage at ``url`` locks the same file, whichever command started it (the
    name is a hash: a URL may hold a password)."""
    digest = hashlib.sha256(f"{url}\n{study_name}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"study-queue-{digest}.lock")


class QueueClaim:
    """An exclusive lock (``fcntl.flock``) on a study's queue lock file (``queue_lock``), held from a
    worker's look at the queue until Optuna has taken the trial out of it (``release``), so that two
    workers never both see the last queued trial and the second then create a trial nobody queued.
    The kernel drops the lock when the process dies."""

    def __init__(self, path: str) -> None:
        self._file: TextIO | None = open(path, "a")  # noqa: SIM115 (closed by release)

    def __enter__(self) -> QueueClaim:
        assert self._file is not None, "a QueueClaim is entered once"
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        """Let the next worker look at the queue (the lock ends with the file; a second call does nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __exit__(self, *_exc: object) -> None:
        self.release()


# --- the parent of --workers N --------------------------------------------------------------------


@dataclass
class _Slot:
    """One worker's share of the trials, across the processes that run it (restarts)."""

    index: int  # worker index of the first process (seed offset, output prefix)
    owed: int  # trials still to finish (a draining worker: runs queued trials until none is left)
    drain: bool = False
    proc: subprocess.Popen | None = None
    tag: str = ""  # worker tag of proc
    restarts: int = 0
    lost_tag: str | None = None  # a killed process whose orphaned trial must be failed first
    lost_at: float = 0.0  # time.monotonic() when it was found dead


def supervise(
    study: optuna.Study,
    shares: list[int],
    command: Callable[[int, int], list[str]],
    env: dict[str, str],
    *,
    prog: str,
    max_restarts: int = 3,
    poll_seconds: float = 0.5,
    progress: Callable[[int], None] | None = None,
    log: TextIO | None = None,
    drain: bool = False,
) -> int:
    """Run one worker process per share and replace the ones a signal kills.

    Args:
        study: The study the workers share (the parent's handle, for progress and recovery).
        shares: Trials each worker runs; with ``drain``, only which workers start (a share > 0).
        command: ``(worker index, n_trials) -> argv`` of a worker process.
        env: The workers' environment (the storage URL travels here, never on a command line).
        prog: Prefix of the lines printed on ``log``.
        max_restarts: Replacements per share before giving up on it.
        poll_seconds: How often processes and the storage are checked.
        progress: Called with the number of trials the workers have finished so far.
        log: Where restarts and failures are reported (default: the standard error at the call).
        drain: The workers run queued trials until none is left (a grid's or a replication's runs,
            all queued beforehand), so one that drew short runs takes the next instead of waiting.

    Returns:
        0 when every worker finished (its share, or the queue), 1 when a worker exited with an
        error or was given up after ``max_restarts`` replacements.

    Raises:
        Interrupted: on Ctrl-C, once every worker has stopped and recorded its trial.
    """
    log = sys.stderr if log is None else log
    host = socket.gethostname()
    slots = [_Slot(index=i, owed=share, drain=drain) for i, share in enumerate(shares) if share > 0]
    tags: set[str] = set()
    errors: list[str] = []

    def start(slot: _Slot) -> int:
        index = slot.index + len(shares) * slot.restarts  # a replacement samples other points
        slot.proc = subprocess.Popen(command(index, slot.owed), env=env)
        slot.tag = f"{host}:{slot.proc.pid}"
        tags.add(slot.tag)
        return index

    for slot in slots:
        start(slot)
    try:
        while any(slot.proc is not None or slot.lost_tag is not None for slot in slots):
            _poll(study, slots, start, prog=prog, errors=errors, max_restarts=max_restarts, log=log)
            if progress is not None:
                progress(_finished(study.get_trials(deepcopy=False), tags))
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop_workers([slot.proc for slot in slots if slot.proc is not None])
        trials = study.get_trials(deepcopy=False)
        stopped = [t.number for t in trials
                   if t.user_attrs.get(records.WORKER) in tags and t.user_attrs.get(records.STATUS) == INTERRUPTED]  # fmt: skip
        if stopped:
            raise _interrupted(stopped) from None
        raise Interrupted("interrupted; no trial was running") from None
    if progress is not None:
        progress(_finished(study.get_trials(deepcopy=False), tags))
    if errors:
        print(f"{prog}: {'; '.join(errors)}", file=log)
        return 1
    return 0


def _poll(
    study: optuna.Study,
    slots: list[_Slot],
    start: Callable[[_Slot], int],
    *,
    prog: str,
    errors: list[str],
    max_restarts: int,
    log: TextIO,
) -> None:
    """One look at the workers: account for those that exited, and once a lost worker's trial has
    been failed and queued for retry, start its replacement (``start``)."""
    if any(slot.proc is not None and slot.proc.poll() is not None for slot in slots):
        trials = study.get_trials(deepcopy=False)  # read after the exit: its last trial counts
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                _reap(slot, trials, prog=prog, errors=errors, max_restarts=max_restarts, log=log)
    if not any(slot.lost_tag is not None for slot in slots):
        return
    _recover(study, slots, prog=prog, log=log)
    for slot in slots:
        if slot.lost_tag is not None and not _orphans(study, slot.lost_tag):
            slot.lost_tag = None
            if slot.drain or slot.owed > 0:
                index = start(slot)
                what = "took the place" if slot.drain else f"took over the {slot.owed} remaining trial(s)"
                print(f"{prog}: worker {index} {what} of worker {slot.index}", file=log)


def _reap(
    slot: _Slot, trials: list[FrozenTrial], *, prog: str, errors: list[str], max_restarts: int, log: TextIO
) -> None:
    """Account for a worker process that has exited."""
    assert slot.proc is not None
    code = slot.proc.returncode
    slot.owed -= sum(t.user_attrs.get(records.WORKER) == slot.tag and _counts(t) for t in trials)
    slot.proc = None
    if code >= 0:
        if code != 0:
            errors.append(f"worker {slot.index} exited with code {code}")
        return
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    slot.lost_tag, slot.lost_at = slot.tag, time.monotonic()  # its orphaned trial is failed first
    if slot.owed <= 0 and not slot.drain:
        return
    if slot.restarts >= max_restarts:
        left = "runs may be left undone" if slot.drain else f"{slot.owed} trial(s) not run"
        errors.append(f"worker {slot.index} was killed by {name} {slot.restarts + 1} times; {left}")
        slot.owed, slot.drain = 0, False
        return
    slot.restarts += 1
    print(
        f"{prog}: worker {slot.index} (pid {slot.tag.rsplit(':', 1)[1]}) was killed by {name}; its running trial "
        "is failed through the heartbeat and retried, then a new worker runs "
        + ("queued trials" if slot.drain else "its remaining trials"),
        file=log,
    )


def _counts(trial: FrozenTrial) -> bool:
    """A finished trial that counts towards the requested number: COMPLETE, PRUNED, or FAIL for a
    reason of its own (diverged, error, interrupted). A lost worker's trial (FAIL, no reason) does
    not: its retry does."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and records.FAIL_REASON in trial.user_attrs
    )


def settled(trial: FrozenTrial) -> bool:
    """A trial whose run need not be repeated: COMPLETE, PRUNED, or FAIL for a reason of the run
    itself (diverged, a run-time error). A lost worker's trial (FAIL, no reason) and an
    interrupted one are not: their queued copies still have to run; nor is a withdrawn copy,
    which never ran (``records.withdraw``)."""
    return _counts(trial) and trial.user_attrs.get(records.STATUS) not in (INTERRUPTED, records.WITHDRAWN)


def _finished(trials: list[FrozenTrial], tags: set[str]) -> int:
    return sum(t.user_attrs.get(records.WORKER) in tags and _counts(t) for t in trials)


def _orphans(study: optuna.Study, tag: str) -> list[FrozenTrial]:
    """The RUNNING trials of worker ``tag``."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if t.user_attrs.get(records.WORKER) == tag]


def _recover(study: optuna.Study, slots: list[_Slot], *, prog: str, log: TextIO) -> None:
    """Fail the orphaned trials of killed workers and queue their retries: through the heartbeat
    (Optuna's ``fail_stale_trials``, as any worker does before each trial) once a trial has been
    silent for the grace period; directly, with the same retry, for an orphan still RUNNING well
    after that (killed before its first heartbeat was written, so Optuna cannot see it as stale)."""
    interval, grace = heartbeat_settings()  # what open_storage gave every worker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        for slot in slots:
            if slot.lost_tag is None or time.monotonic() - slot.lost_at < grace + 3 * interval:
                continue
            for trial in _orphans(study, slot.lost_tag):
                try:
                    study.tell(trial.number, state=TrialState.FAIL)
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                    continue  # failed by a worker meanwhile
                print(
                    f"{prog}: trial {trial.number} of a killed worker never sent a heartbeat; failed",
                    file=log,
                )
                failed = _trial(study, trial.number)
                if failed is not None:
                    retry_callback()(study, failed)


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    """Ctrl-C on a terminal reaches every worker (one process group); ``kill -INT`` of the parent
    reaches only the parent: pass it on to workers still running after a moment, then wait."""
    deadline = time.monotonic() + 5.0
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        p.wait()


def run_main(prog: str, main: Callable[[], int], *, quiet: bool = False) -> NoReturn:
    """Exit with ``main()``'s code; on Ctrl-C print one line (unless ``quiet``: a worker, whose
    parent prints it) and exit with the conventional 130. The ``__main__`` of every CLI that
    runs trials."""
    try:
        code = main()
    except KeyboardInterrupt as exc:
        if not quiet:
            print(f"{prog}: {str(exc) or 'interrupted'}; run the same command to resume", file=sys.stderr)
        code = EXIT_INTERRUPTED
    raise SystemExit(code)
