"""Faults a long study meets, each with exact counts: a worker killed with kill -9 in the middle
of a trial, four workers on one database (SQLite and PostgreSQL), a trial that diverges and one
that runs out of memory, Ctrl-C, and bad input across the command-line tools.

Trials are tiny (digits, 64 training images, swin-nano, one thread per process) and the heartbeat
is shortened through the environment (1 s interval, 2 s grace), so each test takes seconds. The
storage URL always travels in STUDY_STORAGE, as a PostgreSQL password would.
"""

import contextlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

import study.lib.objective as objective_module
from search_spaces import load_space
from study.lib.data import load_raw
from study.lib.objective import search_objective
from study.lib.session import optimize
from study.lib.storage import open_storage
from tests.test_run import _digest

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST_HEARTBEAT = {"STUDY_HEARTBEAT_INTERVAL": "1", "STUDY_GRACE_PERIOD": "2"}


def tiny_space(tmp_path: Path, *, epochs: int, baseline: bool = False) -> Path:
    """One searched parameter (base_lr) and a training run of well under a second per epoch."""
    path = tmp_path / f"tiny-{epochs}.toml"
    path.write_text(
        textwrap.dedent(f"""
        [fixed]
        model = "swin-nano"
        batch_size = 16
        epochs = {epochs}
        train_subset = 64
        train_eval_size = 32
        val_size = 32
        [params.base_lr]
        type = "float"
        low = 1e-4
        high = 1e-2
        log = true
        role = "nuisance"
    """)
        + ("[baseline]\nbase_lr = 1e-3\n" if baseline else "")
    )
    return path


def study_run(space: Path, name: str, n_trials: int, *more: str) -> list[str]:
    return [
        sys.executable, "-m", "study.run", "--dataset", "digits", "--space", str(space),
        "--budget", "quick", "--device", "cpu", "--pruner", "none", "--study-name", name,
        "--n-trials", str(n_trials), "--quiet", *more,
    ]  # fmt: skip


def environment(url: str, **extra: str) -> dict[str, str]:
    # One thread per process: several workers on two cores with a thread each per core would
    # oversubscribe the CPU (study.run --workers does the same split for its workers).
    return {**os.environ, "STUDY_STORAGE": url, "OMP_NUM_THREADS": "1", **FAST_HEARTBEAT, **extra}


class Storage:
    """Reads a study that a subprocess is creating (None until it exists)."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.study = url, name, None

    def trials(self) -> list[FrozenTrial] | None:
        if self.study is None:
            try:
                self.study = optuna.load_study(study_name=self.name, storage=self.url)
            except KeyError:  # not created yet
                return None
        return self.study.get_trials(deepcopy=False)

    def states(self) -> Counter:
        return Counter(t.state for t in self.trials() or [])

    def beating(self, trial: FrozenTrial) -> bool:
        """Whether ``trial`` has recorded a heartbeat (its heartbeat thread may still be waiting for
        the database when the objective has already begun)."""
        with contextlib.closing(sqlite3.connect(make_url(self.url).database)) as connection:
            query = "SELECT 1 FROM trial_heartbeats WHERE trial_id = ?"
            return connection.execute(query, (trial._trial_id,)).fetchone() is not None


def wait_for(condition, what: str, *, proc: subprocess.Popen, timeout: float = 180):
    """Poll ``condition`` until it returns something truthy; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"study.run exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout} s")


def stat_fields(stat: Path) -> list[str]:
    """The fields of a ``/proc/PID/stat`` after the command name: state, parent pid, ..."""
    return stat.read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc: only processes this test started)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_fields(stat)
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def training_trial(storage: Storage, pids: set[int]) -> tuple[FrozenTrial, int] | None:
    """A RUNNING trial inside its objective (config recorded, a heartbeat sent) in one of ``pids``,
    with that pid."""
    for t in storage.trials() or []:
        worker = t.user_attrs.get("worker", "")
        pid = int(worker.rsplit(":", 1)[1]) if ":" in worker else None
        running = t.state == TrialState.RUNNING and "config" in t.user_attrs
        if running and pid in pids and storage.beating(t):
            return t, pid
    return None


def stopped(pid: int) -> bool:
    """Whether ``pid`` has come to a halt after SIGSTOP (kill() returns before it has)."""
    return stat_fields(Path(f"/proc/{pid}/stat"))[0] in ("T", "t")


def freeze_in_trial(storage: Storage, pids: set[int], proc: subprocess.Popen) -> tuple[FrozenTrial, int]:
    """SIGSTOP a process of ``pids`` while its trial is RUNNING, confirmed once it has halted, so a
    signal sent next arrives during that trial and not just after it finished."""
    while True:
        _, pid = wait_for(lambda: training_trial(storage, pids), "trial in training", proc=proc)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda pid=pid: stopped(pid), "the worker halted", proc=proc)
        found = training_trial(storage, {pid})  # exact now: a halted process writes nothing
        if found is not None:
            return found
        os.kill(pid, signal.SIGCONT)  # it finished that trial in between: try the next one


def stop(proc: subprocess.Popen) -> None:
    """After a failed assertion: kill what the test started (study.run and its workers)."""
    if proc.poll() is None:
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def by_number(trials: list[FrozenTrial]) -> dict[int, FrozenTrial]:
    return {t.number: t for t in trials}


@pytest.mark.slow
def test_killed_worker_trial_is_failed_through_the_heartbeat_and_retried(tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    space = tiny_space(tmp_path, epochs=8)  # about a second per trial
    proc = subprocess.Popen(
        study_run(space, "kill", 6, "--workers", "3"),
        env=environment(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    storage = Storage(url, "kill")
    try:
        workers = wait_for(
            lambda: children(proc.pid) if len(children(proc.pid)) == 3 else None, "3 workers", proc=proc
        )
        killed_trial, pid = freeze_in_trial(storage, workers, proc)
        os.kill(pid, signal.SIGKILL)  # a worker the test started (a child of its study.run)
        out, err = proc.communicate(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode == 0, out + err
    assert f"(pid {pid}) was killed by SIGKILL" in err and "took over the" in err, err
    assert "never sent a heartbeat" not in err  # the heartbeat, not the parent's fallback, failed it
    assert "database is locked" not in out + err and "Traceback" not in err, err

    trials = by_number(optuna.load_study(study_name="kill", storage=url).get_trials())
    states = Counter(t.state for t in trials.values())
    assert states == {TrialState.COMPLETE: 6, TrialState.FAIL: 1}, states  # nothing RUNNING or WAITING
    lost = trials[killed_trial.number]
    assert lost.state == TrialState.FAIL and "fail_reason" not in lost.user_attrs  # failed by the heartbeat
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed_trial.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.system_attrs["retry_history"] == [killed_trial.number]
    assert retry.user_attrs["worker"] != lost.user_attrs["worker"]
    # every finished trial reported once, the lost one never
    reported = sorted(int(n) for n in re.findall(r"^\[worker \d+\] trial (\d+) COMPLETE", out, re.M))
    assert reported == sorted(n for n, t in trials.items() if t.state == TrialState.COMPLETE), out
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_workers_on_one_database_lose_and_duplicate_nothing(tmp_path, request, backend):
    sqlite_url = f"sqlite:///{tmp_path / 's.db'}"
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    name = f"four-workers-{tmp_path.name}"  # the PostgreSQL database is shared by the session
    proc = subprocess.run(
        study_run(tiny_space(tmp_path, epochs=1), name, 40, "--workers", "4"),
        env=environment(url),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "database is locked" not in output.lower() and "Traceback" not in output, output

    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 40 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(40))
    # each trial ran in exactly one worker, reported once, ten per worker
    reported = re.findall(r"^\[worker (\d)\] trial (\d+) COMPLETE", proc.stdout, re.M)
    assert sorted(int(n) for _, n in reported) == list(range(40)), proc.stdout
    assert Counter(w for w, _ in reported) == {"0": 10, "1": 10, "2": 10, "3": 10}
    assert sorted(Counter(t.user_attrs["worker"] for t in trials).values()) == [10, 10, 10, 10]
    if backend == "postgresql":
        password = make_url(url).password
        assert password and password not in output
        assert f"postgresql+psycopg://study:***@127.0.0.1:{make_url(url).port}/studies" in proc.stdout


def test_diverged_and_out_of_memory_trials_are_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "faults.toml"
    path.write_text(
        textwrap.dedent("""
        [fixed]
        model = "swin-nano"
        batch_size = 16
        epochs = 2
        train_subset = 160
        train_eval_size = 100
        [params.base_lr]
        type = "categorical"
        choices = [1e6, 2e-3, 1e-3]
        role = "nuisance"
    """)
    )
    real_train = objective_module.train

    def train(cfg, **kwargs):
        if cfg.base_lr == 2e-3:  # what PyTorch raises when a CUDA allocation fails
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.11 GiB\n"
                "of which 1.02 GiB is free."
            )
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(objective_module, "train", train)
    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name="faults", direction="maximize"
    )
    for base_lr in (1e6, 2e-3, 1e-3):  # diverges, runs out of memory, trains
        study.enqueue_trial({"base_lr": base_lr})
    objective = search_objective(
        load_space(str(path)), "quick", load_raw("digits", "data"), dataset="digits", device="cpu", seed=0
    )
    lines = io.StringIO()
    optimize(study, objective, n_trials=3, quiet=True, stream=lines)

    diverged, out_of_memory, trained = study.get_trials()
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert diverged.user_attrs["status"] == "diverged"
    assert diverged.user_attrs["fail_reason"] == "diverged: the training loss became NaN or infinite"
    assert out_of_memory.user_attrs["status"] == "error"
    assert out_of_memory.user_attrs["fail_reason"] == (
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.11 GiB"
    )
    assert trained.value == trained.user_attrs["val_accuracy"]
    printed = lines.getvalue().splitlines()
    assert len(printed) == 3
    assert (
        "trial 0 FAIL: diverged" in printed[0]
        and "trial 1 FAIL: OutOfMemoryError: CUDA out of memory" in printed[1]
    )
    assert "trial 2 COMPLETE" in printed[2]


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_and_the_same_command_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    command = study_run(tiny_space(tmp_path, epochs=10, baseline=True), "ctrl-c", 3)
    proc = subprocess.Popen(
        command, env=environment(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    storage = Storage(url, "ctrl-c")
    try:
        interrupted, _ = freeze_in_trial(storage, {proc.pid}, proc)
        os.kill(proc.pid, signal.SIGINT)  # delivered on SIGCONT, in the middle of the trial
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 130, out + err
    assert err.splitlines() == [
        f"study.run: interrupted: trial {interrupted.number} recorded as FAIL (interrupted), a copy queued "
        "to run first; run the same command to resume"
    ]
    trials = by_number(storage.trials())
    completed_before = sum(t.state == TrialState.COMPLETE for t in trials.values())
    assert TrialState.RUNNING not in storage.states()
    stopped = trials[interrupted.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"
    assert stopped.user_attrs["fail_reason"].startswith("interrupted by Ctrl-C (SIGINT)")
    (queued,) = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert queued.system_attrs["failed_trial"] == interrupted.number

    again = subprocess.run(command, env=environment(url), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout
    trials = by_number(Storage(url, "ctrl-c").trials())
    assert Counter(t.state for t in trials.values()) == {
        TrialState.COMPLETE: completed_before + 3,  # the requested 3, the retry among them
        TrialState.FAIL: 1,
    }
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == interrupted.number]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    # the paper's baseline (enqueued as the first trial) is not lost when Ctrl-C stops it
    assert retry.user_attrs.get("baseline") == stopped.user_attrs.get("baseline")
    assert "status" in retry.user_attrs and retry.user_attrs["status"] == "completed"
    assert "fail_reason" not in retry.user_attrs


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_stops_every_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.Popen(
        study_run(tiny_space(tmp_path, epochs=10), "ctrl-c-workers", 6, "--workers", "2"),
        # a worker is frozen while the other one is: no heartbeat may fail its trial meanwhile
        env=environment(url, STUDY_GRACE_PERIOD="600"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a command typed on a terminal
    )
    storage = Storage(url, "ctrl-c-workers")
    try:
        workers = wait_for(
            lambda: children(proc.pid) if len(children(proc.pid)) == 2 else None, "2 workers", proc=proc
        )
        frozen = [freeze_in_trial(storage, {pid}, proc) for pid in sorted(workers)]
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        for _, pid in frozen:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 130, out + err
    numbers = sorted(trial.number for trial, _ in frozen)
    assert err.splitlines() == [
        f"study.run: interrupted: trial {', '.join(map(str, numbers))} recorded as FAIL (interrupted), "
        "a copy queued to run first; run the same command to resume"
    ]
    trials = storage.trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = sorted(t.number for t in trials if t.state == TrialState.FAIL)
    assert failed == numbers
    assert all(trials[n].user_attrs["status"] == "interrupted" for n in failed)
    queued = sorted(t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING)
    assert queued == numbers


def test_bad_input_across_the_clis_exits_2_with_one_line_and_leaves_storage_alone(tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    optuna.create_study(study_name="keep", storage=url).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    secret = "pw-" + os.urandom(6).hex()
    unreachable = f"postgresql+psycopg://study:{secret}@127.0.0.1:1/studies"  # nothing listens on port 1
    run = ["--dataset", "digits", "--space", "quick", "--budget", "quick", "--storage", url]
    cases = [  # (module, arguments, environment, what the one line says)
        ("study.run", run, {"STUDY_HEARTBEAT_INTERVAL": "0"}, "STUDY_HEARTBEAT_INTERVAL must be a whole number of seconds >= 1; got '0'"),
        ("study.run", run, {"STUDY_GRACE_PERIOD": "5"}, "STUDY_GRACE_PERIOD (5) must be longer than STUDY_HEARTBEAT_INTERVAL (10)"),
        ("analysis.overfitting", ["--study", "keep"], {"STUDY_STORAGE": unreachable}, "cannot open storage postgresql+psycopg://study:***@127.0.0.1:1/studies"),
        ("analysis.overfitting", ["--study", "keep", "--min-effect", "tiny", "--storage", url], {}, "argument --min-effect: invalid float value: 'tiny'"),
        ("study.grid", ["--dataset", "digits", "--budget", "quick"], {"STUDY_STORAGE": unreachable}, "cannot open storage postgresql+psycopg://study:***@127.0.0.1:1/studies"),
        ("study.replicate", ["--study", "keep", "--storage", f"sqlite:///{tmp_path / 'none.db'}"], {}, "no database at"),
        ("study.dashboard", ["--storage", url, "--port", "70000"], {}, "--port must be in 1..65535; got 70000"),
        ("study.dashboard", [], {"STUDY_STORAGE": unreachable}, "cannot open storage postgresql+psycopg://study:***@127.0.0.1:1/studies"),
        ("analysis.overfitting", ["--study", "keep", "--storage", url], {}, "study 'keep' is not a grid study"),
        ("analysis.compare", ["--grid", "keep", "--search", "keep", "--format", "xml", "--storage", url], {}, "argument --format: invalid choice: 'xml'"),
        ("analysis.compare", ["--grid", "keep", "--search", "keep"], {"STUDY_STORAGE": "nosuchdb://x/y"}, "unusable storage URL 'nosuchdb://x/y'"),
        ("study.train", ["--epochs", "0"], {}, "epochs must be an integer >= 1; got 0"),
    ]  # fmt: skip
    before, files_before = _digest(db), sorted(tmp_path.rglob("*"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("STUDY_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**base_env, "OMP_NUM_THREADS": "1", **env},
            cwd=tmp_path,  # a default storage/ folder would appear here
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module, args, env, _ in cases
    ]
    for (module, args, env, message), proc in zip(cases, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        case = f"{module} {' '.join(args)} {env}"
        assert proc.returncode == 2, f"{case}: {proc.returncode}\n{out}{err}"
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{module}: error: "), f"{case}: {err}"
        assert message in lines[0], f"{case}: {lines[0]}"
        assert secret not in out + err
    assert len(cases) >= 10
    assert _digest(db) == before
    assert sorted(tmp_path.rglob("*")) == files_before  # no new database, folder or report


def test_ctrl_c_between_steps_says_interrupted_in_one_line(capsys):
    """A Ctrl-C that reaches a command outside any trial (KeyboardInterrupt with no message) still
    says what happened, and exits with the conventional 130."""
    from study.lib.workers import EXIT_INTERRUPTED, run_main

    def main() -> int:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_main("study.experiment", main)
    assert stop.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "study.experiment: interrupted; run the same command to resume\n"
