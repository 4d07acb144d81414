"""Storage and Optuna overhead per trial, as a fraction of trial time, in the quick budget.

Runs a real study (digits, the quick space, SQLite file, TPE + Hyperband) and splits every trial's
wall time into

* training: time inside ``train()`` minus time spent in its ``on_epoch`` callback, and
* overhead: everything else: sampling, writing params / user attrs / intermediate values to
  SQLite, ``should_prune`` queries, the heartbeat, and ``tell``.

Usage::

    python -m benchmarks.study_overhead --trials 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna

import study.lib.objective as objective_module
from search_spaces import load_space
from study.lib.data import load_raw
from study.lib.objective import search_objective, space_config
from study.lib.session import make_pruner, make_sampler
from study.lib.storage import open_storage, tune_for_writing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--space", default="quick")
    parser.add_argument("--dataset", default="digits")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    training_seconds: list[float] = []
    real_train = objective_module.train

    def timed_train(cfg, on_epoch=None, **kwargs):
        in_callback = 0.0

        def callback(metrics):
            nonlocal in_callback
            start = time.perf_counter()
            try:
                return on_epoch(metrics)
            finally:
                in_callback += time.perf_counter() - start

        start = time.perf_counter()
        result = real_train(cfg, on_epoch=callback, **kwargs)
        training_seconds.append(time.perf_counter() - start - in_callback)
        return result

    objective_module.train = timed_train
    space = load_space(args.space)
    raw = load_raw(args.dataset, "data")  # data loading is a once-per-process cost, not a per-trial one
    run = {"dataset": args.dataset, "device": "cpu", "seed": 0}
    objective = search_objective(space, "quick", raw, **run)
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{Path(tmp) / 'bench.db'}")
        tune_for_writing(storage)  # as study.run does
        epochs = space_config(space, "quick", raw, **run)(space.baseline).epochs
        bench = optuna.create_study(
            storage=storage,
            direction="maximize",
            sampler=make_sampler("tpe", 0),
            pruner=make_pruner("hyperband", epochs),
        )
        trial_seconds: list[float] = []
        last = time.perf_counter()

        def lap(_study, _trial):
            nonlocal last
            now = time.perf_counter()
            trial_seconds.append(now - last)
            last = now

        bench.optimize(objective, n_trials=args.trials, callbacks=[lap])

    total, training = sum(trial_seconds), sum(training_seconds)
    overhead = total - training
    print(
        f"{args.trials} trials, {args.dataset}, space {args.space}, quick budget, SQLite, TPE + Hyperband (CPU)"
    )
    print(f"trial wall time:   {total:8.2f} s  ({total / args.trials:.2f} s per trial)")
    print(f"training:          {training:8.2f} s")
    print(f"storage + Optuna:  {overhead:8.2f} s  ({overhead / args.trials * 1000:.0f} ms per trial)")
    print(f"overhead / trial time: {overhead / total:.2%}  (target < 2%)")


if __name__ == "__main__":
    main()
