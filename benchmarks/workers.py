"""Trials per second of a no-op objective with 1, 2 and 4 worker processes, on SQLite and PostgreSQL.

What the storage costs a study, without training: each trial suggests the quick space's six
parameters, records one user attr (as every study.run trial records its worker) and returns. Each
worker is a process with the storage as ``study.run`` opens it (``study.lib.storage.open_storage``: a
heartbeat thread per trial, a stale-trial check before each trial, SQLite in WAL mode); the
sampler is random, so the figure is storage time, not TPE's. The workers start together behind a
barrier; the figure is the trials of all workers over the seconds from the barrier to the last
worker's end. PostgreSQL is a private cluster on 127.0.0.1 (``tests.pgcluster``) with its default
durability (an fsync per commit); SQLite's WAL with synchronous=NORMAL syncs only at checkpoints.

Usage::

    python -m benchmarks.workers                           # 1, 2, 4 workers; SQLite and PostgreSQL
    python -m benchmarks.workers --trials 400 --workers 1 2 4 8 --backend sqlite
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import tempfile
import time
from pathlib import Path

import optuna

from study.lib.storage import open_storage, tune_for_writing
from tests.pgcluster import PostgresCluster, find_bindir


def no_op(trial: optuna.Trial) -> float:
    trial.suggest_categorical("accumulation_steps", [1, 2, 4, 8])
    trial.suggest_categorical("lr_scaling", ["none", "linear", "sqrt"])
    trial.suggest_float("base_lr", 3e-4, 1e-2, log=True)
    trial.suggest_float("dropout", 0.0, 0.3)
    trial.suggest_float("drop_path", 0.0, 0.3)
    trial.suggest_float("weight_decay", 1e-5, 0.1, log=True)
    trial.set_user_attr("worker", "bench")
    return 0.0


def _worker(url: str, name: str, n_trials: int, seed: int, barrier, results) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    tune_for_writing(storage)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed))
    barrier.wait()
    start = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes of one machine
    study.optimize(no_op, n_trials=n_trials)
    results.put((start, time.monotonic()))


def measure(url: str, name: str, trials: int, workers: int) -> float:
    """Trials per second of ``workers`` processes sharing ``trials`` on a new study ``name``."""
    storage = open_storage(url)
    tune_for_writing(storage)  # as study.run's parent does before its workers start (SQLite: WAL)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    shares = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    procs = [
        context.Process(target=_worker, args=(url, name, share, seed, barrier, results))
        for seed, share in enumerate(shares)
    ]
    for p in procs:
        p.start()
    spans: list[tuple[float, float]] = []
    while len(spans) < len(procs):
        try:
            spans.append(results.get(timeout=1))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):  # the others may wait at the barrier
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"a worker failed: exit codes {[p.exitcode for p in procs]}") from None
    for p in procs:
        p.join()
    finished = optuna.load_study(study_name=name, storage=url).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert len(finished) == trials, (len(finished), trials)  # none lost, none extra
    return trials / (max(end for _, end in spans) - min(start for start, _ in spans))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200, help="trials per measurement (default: 200)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (default: 1 2 4)"
    )
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql", "both"], default="both", help="default: both"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend in ("sqlite", "both"):
            for n in args.workers:
                url = f"sqlite:///{Path(tmp) / f'bench-{n}.db'}"  # a new file per measurement
                rows.append(("SQLite (WAL)", n, measure(url, f"w{n}", args.trials, n)))
        if args.backend in ("postgresql", "both"):
            if find_bindir() is None:
                print("PostgreSQL not installed (apt-get install postgresql): skipped")
            else:
                with PostgresCluster(durable=True) as cluster:
                    for n in args.workers:
                        rows.append(("PostgreSQL 15", n, measure(cluster.url, f"w{n}", args.trials, n)))

    print(f"no-op objective, {args.trials} trials per row, random sampler, heartbeat on")
    print(f"{'storage':<15} {'workers':>7} {'trials/s':>9} {'vs 1 worker':>12}")
    for backend, n, rate in rows:
        one = next((r for b, w, r in rows if b == backend and w == 1), None)
        ratio = f"{rate / one:.2f}x" if one else "-"
        print(f"{backend:<15} {n:>7} {rate:>9.1f} {ratio:>12}")


if __name__ == "__main__":
    main()
