"""Response time of the dashboard (``python -m study.dashboard``) for a study of 1,000 trials.

Builds a study whose trials carry what ``study.run`` records (six parameters, five intermediate
values, the config, per-epoch history, final metrics and environment as user attrs), starts the
dashboard on a free loopback port, and times the requests its browser page makes:

* ``/api/studies``: the study list (the first page);
* ``/api/studies/ID``, cold: the whole study with every trial, read from the storage (what opening
  a study costs; optuna-dashboard then caches the trials of a study this size for 10 s);
* ``/api/studies/ID``, cached: the same within those 10 s;
* ``/api/studies/ID?after=1000``: the page's poll for new trials while a study runs.

Usage::

    python -m benchmarks.dashboard_response                     # SQLite
    python -m benchmarks.dashboard_response --storage postgresql # a private PostgreSQL cluster
    python -m benchmarks.dashboard_response --trials 5000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from study.lib.storage import STORAGE_ENV, open_storage, tune_for_writing
from tests.pgcluster import PostgresCluster, free_port

DISTRIBUTIONS = {
    "accumulation_steps": CategoricalDistribution([1, 2, 4, 8]),
    "lr_scaling": CategoricalDistribution(["none", "linear", "sqrt"]),
    "base_lr": FloatDistribution(3e-4, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.3),
    "drop_path": FloatDistribution(0.0, 0.3),
    "weight_decay": FloatDistribution(1e-5, 0.1, log=True),
}
EPOCHS = 5
CACHE_SECONDS = 10  # optuna-dashboard keeps the trials of a study of 500+ trials this long


def realistic_trial(number: int, rng: random.Random) -> optuna.trial.FrozenTrial:
    """A COMPLETE trial with the attrs a study.run trial has (sizes as in the quick space)."""
    params = {
        "accumulation_steps": rng.choice([1, 2, 4, 8]),
        "lr_scaling": rng.choice(["none", "linear", "sqrt"]),
        "base_lr": math.exp(rng.uniform(math.log(3e-4), math.log(1e-2))),
        "dropout": rng.uniform(0, 0.3),
        "drop_path": rng.uniform(0, 0.3),
        "weight_decay": math.exp(rng.uniform(math.log(1e-5), math.log(0.1))),
    }
    curve = [min(0.99, 0.5 + 0.1 * epoch + rng.uniform(-0.05, 0.05)) for epoch in range(EPOCHS)]
    history = {
        key: [rng.random() for _ in range(EPOCHS)]
        for key in (
            "train_loss", "train_accuracy", "val_loss", "val_accuracy", "generalization_gap",
            "optimizer_steps", "samples_seen", "wall_seconds", "train_seconds",
        )
    }  # fmt: skip
    config = {
        "dataset": "digits", "data_dir": "data", "model": "swin-nano", "batch_size": 16,
        "protocol": "paper", "epochs": EPOCHS, "optimizer": "adamw", "reference_batch_size": 16,
        "warmup_epochs": 0.0, "schedule": "constant", "attn_dropout": 0.0, "label_smoothing": 0.0,
        "train_subset": 2000, "val_size": 0.1, "train_eval_size": 500, "seed": 0, "device": "cpu",
        "precision": "auto", "compile": False, "effective_batch_size": 16 * params["accumulation_steps"],
        "micro_batch_size": 16, "lr": params["base_lr"], **params,
    }  # fmt: skip
    finals = {
        key: rng.random()
        for key in ("train_loss", "train_accuracy", "val_loss", "test_loss", "test_accuracy")
    }
    return optuna.trial.create_trial(
        params=params,
        distributions=DISTRIBUTIONS,
        value=curve[-1],
        intermediate_values=dict(enumerate(curve, start=1)),
        user_attrs={
            "config": config,
            "history": history,
            "status": "completed",
            "worker": f"gpu-node-{number % 4}:{1000 + number}",
            "environment": {"device": "cuda", "torch": "2.14.1", "timm": "1.0", "optuna": optuna.__version__},
            "val_accuracy": curve[-1],
            "generalization_gap": rng.uniform(-0.05, 0.1),
            "effective_batch_size": config["effective_batch_size"],
            **finals,
        },
    )


def get(url: str) -> tuple[float, int]:
    """Seconds for one GET (full body read) and the body's size in bytes."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - start, len(body)


@contextlib.contextmanager
def dashboard(url: str) -> Iterator[str]:
    """``python -m study.dashboard`` on a free loopback port; yields its base address."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "study.dashboard", "--port", str(port)],
        env={**os.environ, STORAGE_ENV: url},  # the URL (and a password) stays off the command line
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{base}/api/meta")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the dashboard did not start: {server.stderr.read()}") from None
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(url: str, trials: int, repeats: int, cold_repeats: int) -> list[tuple[str, list[float], int]]:
    storage = open_storage(url)
    tune_for_writing(storage)  # as study.run writes it (SQLite: WAL)
    study = optuna.create_study(study_name="dashboard-bench", storage=storage, direction="maximize")
    rng = random.Random(0)
    start = time.perf_counter()
    study.add_trials([realistic_trial(n, rng) for n in range(trials)])
    print(f"built a {trials}-trial study in {time.perf_counter() - start:.1f} s")
    study_id = storage.get_study_id_from_name(study.study_name)  # the id the dashboard's API uses
    rows = []
    with dashboard(url) as base:
        detail = f"{base}/api/studies/{study_id}"
        cold, size = [], 0
        for i in range(cold_repeats):
            if i:
                time.sleep(CACHE_SECONDS + 0.5)  # let the dashboard's trial cache expire
            seconds, size = get(detail)
            cold.append(seconds)
        rows.append((f"/api/studies/{study_id} (cold)", cold, size))
        for label, address in (
            (f"/api/studies/{study_id} (cached)", detail),
            (f"/api/studies/{study_id}?after={trials}", f"{detail}?after={trials}"),
            ("/api/studies", f"{base}/api/studies"),
        ):
            get(address)  # warm up; within the cache time of the cold requests above
            samples = [get(address) for _ in range(repeats)]
            rows.append((label, [s for s, _ in samples], samples[-1][1]))
        json.loads(urllib.request.urlopen(detail, timeout=120).read())  # the body is valid JSON
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeats", type=int, default=10, help="requests per cached figure (default: 10)")
    parser.add_argument("--cold", type=int, default=3, help="cold requests, 10 s apart (default: 3)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with contextlib.ExitStack() as stack:
        if args.storage == "sqlite":
            url = f"sqlite:///{Path(stack.enter_context(tempfile.TemporaryDirectory())) / 'dashboard.db'}"
        else:
            url = stack.enter_context(PostgresCluster(durable=True)).url
        rows = run(url, args.trials, args.repeats, args.cold)
    print(f"optuna-dashboard, {args.trials} trials, {args.storage}: median (min-max) of the requests")
    for label, seconds, size in rows:
        ms = sorted(s * 1000 for s in seconds)
        print(
            f"{label:<32} {statistics.median(ms):8.1f} ms  ({ms[0]:.1f}-{ms[-1]:.1f}, n={len(ms)})  {size / 1024:,.1f} KiB"
        )


if __name__ == "__main__":
    main()
