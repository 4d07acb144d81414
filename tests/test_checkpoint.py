"""A killed or preempted trial resumes from its last checkpoint (study.lib.checkpoint): killed with
SIGKILL in the middle of an epoch, one worker of two killed, Ctrl-C, a corrupted checkpoint. Each
resumed trial must end exactly as the same trial run without interruption (bitwise on the CPU).

The runs are real and small (digits, swin-nano); the heartbeat is shortened through the
environment (1 s interval, 2 s grace), so a killed trial is seen as stale within seconds.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
ENV = {**os.environ, "STUDY_HEARTBEAT_INTERVAL": "1", "STUDY_GRACE_PERIOD": "2", "OMP_NUM_THREADS": "1"}
TIMING = ("wall_seconds", "train_seconds", "images_per_second", "peak_memory_bytes")
SEARCH = ["study.run", "--dataset", "digits", "--space", "quick", "--budget", "quick", "--n-trials", "1",
          "--pruner", "none", "--study-name", "s", "--quiet", "--keep-checkpoints"]  # fmt: skip


def command(args: list[str], db: Path) -> list[str]:
    return [sys.executable, "-m", *args, "--storage", f"sqlite:///{db}"]


def run(args: list[str], db: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, db), env=ENV, capture_output=True, text=True, timeout=600)


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # being replaced right now
        return -1


def start_and_stop(
    args: list[str], db: Path, *, at_epoch: int, sig: int = signal.SIGKILL, pid_of=None
) -> Path:
    """Start the command, wait for a checkpoint of epoch ``at_epoch`` or later, then send ``sig``
    (to the process ``pid_of(path)`` names, else the command itself); returns the checkpoint."""
    proc = subprocess.Popen(command(args, db), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = db.parent / "artifacts"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = (
            [p for p in folder.glob("*.ckpt") if checkpoint_epoch(p) >= at_epoch] if folder.is_dir() else []
        )
        if done:
            os.kill(pid_of(done[0]) if pid_of else proc.pid, sig)
            break
        assert proc.poll() is None, "the run finished before it could be stopped"
        time.sleep(0.005)
    else:
        raise AssertionError("no checkpoint was written")
    if pid_of is None:
        proc.wait(timeout=60)
    else:
        proc.wait(timeout=600)  # the parent of --workers goes on and finishes
    return done[0]


def without_timing(history: dict) -> dict:
    return {k: v for k, v in history.items() if k not in TIMING}


def final(trial) -> dict:
    skip = (*TIMING, "resumed_from_epoch")
    return {k: v for k, v in trial.user_attrs.items() if isinstance(v, float | int) and k not in skip}


def study_of(db: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The search's first trial run without interruption, with its last checkpoint kept."""
    db = tmp_path_factory.mktemp("reference") / "r.db"
    proc = run(SEARCH, db)
    assert proc.returncode == 0, proc.stderr
    (trial,) = study_of(db).trials
    (last,) = (db.parent / "artifacts").glob("*.ckpt")
    return trial, torch.load(last, weights_only=True)


def assert_same_run(resumed, reference, kept: Path) -> None:
    trial, state = reference
    assert resumed.state == TrialState.COMPLETE
    assert without_timing(resumed.user_attrs["history"]) == without_timing(trial.user_attrs["history"])
    assert final(resumed) == final(trial) and resumed.value == trial.value
    model = torch.load(kept, weights_only=True)["model"]  # the resumed run's last checkpoint
    assert model.keys() == state["model"].keys()
    assert all(torch.equal(model[k], state["model"][k]) for k in model)  # bitwise the same parameters


@pytest.mark.slow
def test_a_trial_killed_mid_epoch_resumes_from_its_checkpoint_and_ends_the_same(tmp_path, reference):
    db = tmp_path / "a.db"
    first = start_and_stop(SEARCH, db, at_epoch=2)
    saved = torch.load(first, weights_only=True)
    time.sleep(2.5)  # the grace period: the killed trial is now stale
    again = run(SEARCH, db)
    assert again.returncode == 0, again.stderr
    killed, resumed = study_of(db).trials
    assert killed.state == TrialState.FAIL
    k = saved["epoch"]
    assert (
        resumed.user_attrs["resumed_from_epoch"] == k and f"trial 1: resumed from epoch {k}" in again.stderr
    )
    # only the epochs after the checkpoint were trained again: the earlier ones are the first
    # attempt's, timing and all
    history = resumed.user_attrs["history"]
    for i, m in enumerate(saved["history"]):
        assert history["train_seconds"][i] == m["train_seconds"] and history["epoch"][i] == m["epoch"]
    assert sum(e > k for e in history["epoch"]) == 5 - k
    assert_same_run(resumed, reference, tmp_path / "artifacts" / "s.trial-1.ckpt")


@pytest.mark.slow
def test_ctrl_c_requeues_and_the_same_command_resumes(tmp_path, reference):
    db = tmp_path / "c.db"
    start_and_stop(SEARCH, db, at_epoch=2, sig=signal.SIGINT)
    (interrupted,) = study_of(db).get_trials(states=(TrialState.FAIL,))
    assert interrupted.user_attrs["status"] == "interrupted"
    again = run(SEARCH, db)
    assert again.returncode == 0, again.stderr
    resumed = study_of(db).get_trials(states=(TrialState.COMPLETE,))[0]
    assert resumed.user_attrs["resumed_from_epoch"] >= 2
    assert_same_run(resumed, reference, tmp_path / "artifacts" / f"s.trial-{resumed.number}.ckpt")


@pytest.mark.slow
def test_a_corrupted_checkpoint_is_one_line_and_the_trial_starts_over(tmp_path, reference):
    db = tmp_path / "d.db"
    checkpoint = start_and_stop(SEARCH, db, at_epoch=2)
    checkpoint.write_bytes(b"not a checkpoint")
    time.sleep(2.5)
    again = run(SEARCH, db)
    assert again.returncode == 0, again.stderr
    lines = [line for line in again.stderr.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "starting from epoch 0" in lines[0]
    resumed = study_of(db).get_trials(states=(TrialState.COMPLETE,))[0]
    assert "resumed_from_epoch" not in resumed.user_attrs
    assert_same_run(resumed, reference, tmp_path / "artifacts" / f"s.trial-{resumed.number}.ckpt")


@pytest.mark.slow
def test_a_killed_grid_worker_is_replaced_and_its_run_resumes(tmp_path):
    grid = [
        "study.grid",
        "--dataset",
        "digits",
        "--budget",
        "quick",
        "--study-name",
        "g",
        "--quiet",
        "--device",
        "cpu",
    ]
    (tmp_path / "plain").mkdir()
    plain = run(grid, tmp_path / "plain" / "p.db")
    assert plain.returncode == 0, plain.stderr
    db = tmp_path / "w" / "w.db"
    db.parent.mkdir()

    def worker_of(path: Path) -> int:  # the worker running the checkpoint's trial
        number = int(path.name.split(".trial-")[1].removesuffix(".ckpt"))
        return int(study_of(db, "g").trials[number].user_attrs["worker"].rsplit(":", 1)[1])

    start_and_stop([*grid, "--workers", "2"], db, at_epoch=2, pid_of=worker_of)
    trials = study_of(db, "g").trials
    assert (
        sum(t.state == TrialState.FAIL for t in trials) == 1
        and sum(t.state == TrialState.COMPLETE for t in trials) == 6
    )
    (resumed,) = [t for t in trials if "resumed_from_epoch" in t.user_attrs]
    assert resumed.user_attrs["resumed_from_epoch"] >= 2
    reference = {
        tuple(sorted(t.params.items())): t for t in study_of(tmp_path / "plain" / "p.db", "g").trials
    }
    twin = reference[tuple(sorted(resumed.params.items()))]
    assert without_timing(resumed.user_attrs["history"]) == without_timing(twin.user_attrs["history"])
    assert final(resumed) == final(twin)
    assert not list((db.parent / "artifacts").glob("*.ckpt"))  # finished trials leave no checkpoint
