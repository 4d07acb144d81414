"""study.lib.storage: queued trials on a SQLite file shared by several processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import optuna

from study.lib.storage import open_storage, tune_for_writing

ROOT = __file__.rsplit("/tests/", 1)[0]
POP = """
import sys, time, warnings
import optuna
from study.lib.storage import open_storage, tune_for_writing
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.simplefilter("ignore")
url, start, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
storage = open_storage(url)
tune_for_writing(storage)
study = optuna.load_study(study_name="queue", storage=storage)
while time.time() < start:  # every process pops at the same moment
    pass
print(" ".join(str(study.ask().number) for _ in range(n)))
"""


def test_a_queued_trial_is_handed_to_one_process_only(tmp_path):
    """Four processes pop 40 queued trials at once: each trial goes to exactly one of them (before
    BEGIN IMMEDIATE, 8 of 40 went to two processes, and ``study.grid --workers 2`` ran a run twice)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    storage = open_storage(url)
    tune_for_writing(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="queue", storage=storage)
    for x in range(40):
        study.enqueue_trial({"x": x})
    start = str(time.time() + 5)  # after every process has imported Optuna and opened the file
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", POP, url, start, "10"], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(4)
    ]
    popped = Counter(int(n) for p in procs for n in p.communicate(timeout=120)[0].split())
    assert all(p.returncode == 0 for p in procs)
    assert sorted(popped) == list(range(40)) and set(popped.values()) == {1}
