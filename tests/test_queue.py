"""The workers of a grid or a replication drain the queue: each takes the next queued run when it
finishes one, so a worker that drew short runs does not sit idle while another runs the long ones,
and no worker creates a trial that nobody queued.

The trials here do not train: the worker processes run a few lines of Python against a SQLite
study, so each test takes seconds.
"""

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from study.lib.session import lost_runs, optimize_queued, run_worker_processes
from study.lib.storage import open_storage, tune_for_writing
from study.lib.workers import QueueClaim, queue_lock

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A worker process: drains the study "q"; a run of length "long" waits until every other run is
# COMPLETE (so it is done by another worker), then completes; it gives up after 60 s. The first
# attempt of a run of length "dies once" kills its worker.
WORKER = textwrap.dedent("""
    import os, sys, time
    import optuna
    from optuna.trial import TrialState
    from study.lib.session import optimize_queued
    from study.lib.storage import STORAGE_ENV, open_storage, tune_for_writing

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "READY" in os.environ:  # started: now it looks at the queue
        open(os.environ["READY"], "w").close()
    storage = open_storage(os.environ[STORAGE_ENV])
    tune_for_writing(storage)  # as every command's workers: two of them never pop one trial
    study = optuna.load_study(study_name="q", storage=storage)

    def objective(trial):
        length = trial.suggest_categorical("length", ["short", "long", "dies once"])
        trial.suggest_int("run", 0, 100)
        if length == "dies once" and not os.path.exists(os.environ["DIED"]):
            open(os.environ["DIED"], "w").close()
            os.kill(os.getpid(), 9)  # as the out-of-memory killer would
        if length != "long":
            return 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
            if all(t.state == TrialState.COMPLETE for t in others):
                return 1.0
            time.sleep(0.1)
        raise SystemExit("the short runs were left to this worker")

    optimize_queued(study, objective, url=os.environ[STORAGE_ENV], prefix=f"[worker {sys.argv[1]}] ")
""")


def queued_study(url: str, lengths: list[str]) -> optuna.Study:
    storage = open_storage(url)
    tune_for_writing(storage)
    study = optuna.create_study(study_name="q", storage=storage)
    for run, length in enumerate(lengths):
        study.enqueue_trial({"length": length, "run": run})
    return study


def test_a_worker_that_drew_the_long_run_leaves_the_short_ones_to_the_other(tmp_path):
    """One long run and four short ones on two workers. Fixed shares (3 and 2) would leave one or
    two short runs to the worker running the long one, which waits for them: it fails. Draining
    workers run each queued run once, the long one alone, and create no other trial."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["long", "short", "short", "short", "short"])
    code = run_worker_processes(
        study, url, total=5, workers=2, prog="test", quiet=True, drain=True,
        command=lambda index, share: [sys.executable, "-c", WORKER, str(index)],
    )  # fmt: skip
    assert code == 0
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert sorted(t.params["run"] for t in trials) == [0, 1, 2, 3, 4]  # each queued run once, no other
    per_worker = Counter(t.user_attrs["worker"] for t in trials)
    long_worker = trials[0].user_attrs["worker"]
    assert per_worker[long_worker] == 1 and sorted(per_worker.values()) == [1, 4]


def test_a_killed_worker_is_replaced_and_its_run_retried_once(tmp_path, monkeypatch, capsys):
    """kill -9 of a draining worker in the middle of a run: the heartbeat fails the run and queues
    its retry, and a new worker takes the place of the lost one; every run ends COMPLETE once."""
    monkeypatch.setenv("STUDY_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("STUDY_GRACE_PERIOD", "2")
    monkeypatch.setenv("DIED", str(tmp_path / "died"))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["short", "dies once", "short", "short"])
    code = run_worker_processes(
        study, url, total=4, workers=2, prog="test", quiet=True, drain=True,
        command=lambda index, share: [sys.executable, "-c", WORKER, str(index)],
    )  # fmt: skip
    log = capsys.readouterr().err
    assert code == 0, log
    trials = study.get_trials()
    done = sorted(t.params["run"] for t in trials if t.state == TrialState.COMPLETE)
    assert done == [0, 1, 2, 3]  # each run once, the lost one through its retry
    assert [t.params["run"] for t in trials if t.state == TrialState.FAIL] == [1]
    assert len(trials) == 5
    assert "was killed by SIGKILL" in log and "took the place of worker" in log


def test_a_worker_of_another_command_waits_while_one_holds_the_queue(tmp_path):
    """The lock belongs to the study's queue, not to one command: a worker started by another
    command waits while this process holds it, then drains the queue."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["short", "short"])
    ready = tmp_path / "ready"
    env = {**os.environ, "STUDY_STORAGE": url, "READY": str(ready), "OMP_NUM_THREADS": "1"}
    with QueueClaim(queue_lock(url, "q")):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, "0"], env=env)
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # from its start, opening the study takes well under this
        assert proc.poll() is None
        assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * 2
    assert proc.wait(timeout=60) == 0
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_the_lock_is_held_from_the_look_at_the_queue_until_the_trial_is_taken(tmp_path, monkeypatch):
    """Released before Optuna takes the trial, two workers could both see the last queued run and
    one be handed a new trial; held through the run, the workers would take turns. So: held while
    Optuna pops the queue, free while the objective runs."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["short", "short"])
    path = queue_lock(url, "q")

    def held() -> bool:
        with open(path, "a") as other:  # another open file: flock conflicts as with another process
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(other, fcntl.LOCK_UN)
            return False

    seen = {"pop": [], "objective": []}
    pop = study._pop_waiting_trial_id

    def watched_pop():
        seen["pop"].append(held())
        return pop()

    monkeypatch.setattr(study, "_pop_waiting_trial_id", watched_pop)

    def objective(trial):
        seen["objective"].append(held())
        return 0.0

    optimize_queued(study, objective, url=url)
    assert seen == {"pop": [True, True], "objective": [False, False]}
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_a_trial_nobody_queued_is_withdrawn_unrun(tmp_path):
    """Should another process take the last queued run without the lock, Optuna hands this worker
    a new trial: it is withdrawn without running the objective, and the worker stops."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["short"])
    ran = []
    pop = study._pop_waiting_trial_id

    def raced_pop():  # what the other process does between this worker's look and its pop
        study._storage.set_trial_state_values(pop(), TrialState.RUNNING)
        return None

    study._pop_waiting_trial_id = raced_pop
    optimize_queued(study, lambda trial: ran.append(trial.number) or 0.0, url=url)
    assert ran == []
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert trials[1].user_attrs["status"] == "withdrawn" and "not queued" in trials[1].user_attrs["fail_reason"]


def test_draining_an_empty_queue_creates_no_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, [])
    optimize_queued(study, lambda trial: 0.0, url=url)
    assert study.get_trials() == []


def test_a_run_that_lost_every_attempt_is_named_once_the_queue_is_drained(tmp_path):
    """After the workers, the command checks every run of its design: one settled (done, or failed
    for a reason of its own) or running is fine; one whose attempts were all lost (FAIL, no reason)
    is named, so the command does not exit 0 with a run missing."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["short", "short", "short", "short"])
    done, error, lost, running = (study.ask() for _ in range(4))
    for trial in (done, error, lost, running):
        trial.suggest_categorical("length", ["short", "long", "dies once"])
        trial.suggest_int("run", 0, 100)
    study.tell(done, 0.0)
    error.set_user_attr("fail_reason", "RuntimeError: out of memory")
    study.tell(error, state=TrialState.FAIL)
    study.tell(lost, state=TrialState.FAIL)  # a killed worker's trial: no reason
    runs = [{"length": "short", "run": r} for r in range(4)]
    assert lost_runs(study, runs) == [{"length": "short", "run": 2}]
