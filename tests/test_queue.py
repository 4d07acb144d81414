"""The workers of a grid or a replication drain the queue: each takes the next queued run when it
finishes one, so a worker that drew short runs does not sit idle while another runs the long ones,
and no worker creates a trial that nobody queued.

The trials here do not train: the worker processes run a few lines of Python against a SQLite
study, so each test takes seconds.
"""

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from study.lib.session import optimize_queued, run_worker_processes
from study.lib.storage import open_storage, tune_for_writing
from study.lib.workers import QueueClaim

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
    from study.lib.workers import QUEUE_LOCK_ENV

    optuna.logging.set_verbosity(optuna.logging.WARNING)
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

    optimize_queued(study, objective, lock=os.environ.get(QUEUE_LOCK_ENV), prefix=f"[worker {sys.argv[1]}] ")
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


def test_no_worker_takes_a_queued_run_while_another_holds_the_claim(tmp_path):
    """The claim is what keeps two workers from racing for the last queued run (the loser would
    create a trial nobody queued): a worker waits for it, then drains the queue."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, ["short", "short"])
    lock = str(tmp_path / "lock")
    env = {**os.environ, "STUDY_STORAGE": url, "STUDY_QUEUE_LOCK": lock, "OMP_NUM_THREADS": "1"}
    with QueueClaim(lock):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, "0"], env=env)
        time.sleep(3.0)  # long enough to import and open the study; it must be waiting for the claim
        assert proc.poll() is None
        assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * 2
    assert proc.wait(timeout=60) == 0
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_draining_an_empty_queue_creates_no_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = queued_study(url, [])
    optimize_queued(study, lambda trial: 0.0, lock=str(tmp_path / "lock"))
    assert study.get_trials() == []
