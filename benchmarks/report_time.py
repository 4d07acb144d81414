"""How long a report of a 100-trial study takes, and what the bootstrap intervals cost.

A synthetic study (no training: its values are drawn), shaped like a real search of the overfitting
space: 6 parameters (two categorical, four numeric, two of them log), ``--trials`` trials of which
about 60% are pruned at Hyperband-like rungs (epochs 1 and 3 of 9). Measured side by side in one
run: ``python -m analysis.report`` end to end (``--no-interactive``), the importance with bootstrap
intervals alone (every target, ``--bootstrap`` resamples), and plain Optuna (one fit per evaluator
and target, 64-tree forests, no interval).

Usage::

    python -m benchmarks.report_time                    # 100 trials, 40 resamples
    python -m benchmarks.report_time --trials 200 --bootstrap 20
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.lib.importance import BOOTSTRAP, importance, searched_params, targets

DISTRIBUTIONS = {
    "accumulation_steps": CategoricalDistribution((1, 2, 4, 8, 16)),
    "lr_scaling": CategoricalDistribution(("none", "linear", "sqrt")),
    "base_lr": FloatDistribution(1e-4, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.3),
    "drop_path": FloatDistribution(0.0, 0.3),
    "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),
}


def synthetic_study(url: str, n_trials: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    study = optuna.create_study(storage=url, study_name="bench", direction="maximize")
    for _ in range(n_trials):
        params = {
            name: rng.choice(d.choices)
            if isinstance(d, CategoricalDistribution)
            else rng.uniform(d.low, d.high)  # log ranges drawn linearly: fine for timing
            for name, d in DISTRIBUTIONS.items()
        }
        value = 0.8 - 0.02 * params["accumulation_steps"] ** 0.5 + 5 * params["base_lr"] + rng.gauss(0, 0.01)
        last = rng.choices((1, 3, 9), weights=(4, 2, 4))[0]
        curve = {e: value - 0.1 / e for e in (1, 3, 9) if e <= last}
        done = last == 9
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE if done else TrialState.PRUNED,
                params=params,
                distributions=DISTRIBUTIONS,
                value=value if done else None,
                intermediate_values=curve,
                user_attrs={"generalization_gap": rng.gauss(0.03, 0.01), "wall_seconds": rng.uniform(60, 300)}
                if done
                else {},
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        synthetic_study(url, args.trials)
        study = optuna.load_study(study_name="bench", storage=url)
        params, _ = searched_params(study)
        complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
        print(
            f"{args.trials} trials ({complete} complete, {args.trials - complete} pruned), {len(params)} parameters"
        )

        start = time.perf_counter()
        for target in targets(study):
            for evaluator in (
                optuna.importance.FanovaImportanceEvaluator(n_trees=64, max_depth=64, seed=0),
                optuna.importance.PedAnovaImportanceEvaluator(),
                optuna.importance.MeanDecreaseImpurityImportanceEvaluator(n_trees=64, max_depth=64, seed=0),
            ):
                optuna.importance.get_param_importances(study, evaluator=evaluator, target=target.value)
        plain = time.perf_counter() - start

        start = time.perf_counter()
        results = importance(study, params, seed=0, resamples=args.bootstrap)
        ours = time.perf_counter() - start

        start = time.perf_counter()
        command = [sys.executable, "-m", "analysis.report", "--study", "bench", "--storage", url, "--out",
                   str(Path(folder) / "report"), "--no-interactive", "--quiet", "--bootstrap", str(args.bootstrap)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
        report = time.perf_counter() - start

    print(f"targets: {', '.join(f'{r.target} ({r.n_trials})' for r in results)}")
    print(f"plain Optuna, one fit per evaluator and target (no interval):  {plain:6.1f} s")
    print(f"importance with {args.bootstrap} bootstrap resamples per target:       {ours:6.1f} s")
    print(f"  ratio:                                                      {ours / plain:6.1f}x")
    print(f"python -m analysis.report end to end (--no-interactive):      {report:6.1f} s")


if __name__ == "__main__":
    main()
