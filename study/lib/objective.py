"""The Optuna objective: suggest -> TrainConfig -> train -> report / prune -> return.

The trainer never sees Optuna: pruning goes through ``train``'s ``on_epoch`` callback.
"""

from __future__ import annotations

import functools
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search_spaces import SearchSpace
from study.lib import records
from study.lib.config import DATASET_SIZES, TrainConfig, available_training_images
from study.lib.data import RawDataset
from study.lib.records import OBJECTIVE_METRICS
from study.lib.train import DIVERGED, STOPPED, EpochMetrics, train


@functools.cache
def environment() -> dict[str, str]:
    """Package versions and the git commit, recorded on every trial."""
    import timm
    import torch

    env = {"torch": torch.__version__, "timm": timm.__version__, "optuna": optuna.__version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if commit.returncode == 0:
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def build_config(
    settings: dict[str, Any], params: dict[str, Any], *, pool: int | None = None, **run: Any
) -> TrainConfig:
    """The TrainConfig of one run: fixed ``settings`` (a space's for its budget, or the grid's),
    then ``params``, then per-run settings (dataset, data_dir, device, seed).

    A ``train_subset`` is capped at what the dataset has, so one space serves every dataset
    (digits has only 1293 training images): of ``pool`` training images actually read when given
    (a partial copy of a dataset), else of the official split.
    """
    values = {**settings, **params, **run}
    if values.get("train_subset") is not None and values.get("dataset") in DATASET_SIZES:
        val_size = values.get("val_size", TrainConfig.val_size)
        available = available_training_images(values["dataset"], val_size, pool=pool)
        values["train_subset"] = min(values["train_subset"], available)
    return TrainConfig(**values)


@dataclass
class Objective:
    """Callable objective for ``study.optimize``: configure -> train -> report / prune -> record.

    Returns the validation accuracy of the **last** epoch, not the best one: every trial trains for
    the same fixed number of epochs (the paper's protocol), the last-epoch model is the one that
    would be used, and picking the best epoch would be early stopping on the validation set, an
    unlisted hyperparameter that flatters noisy trials. The test set is never used for selection.

    What each trial stores is ``study.lib.records``' schema: ``config`` (every resolved TrainConfig
    value, with effective_batch_size, micro_batch_size and the scaled lr), the final metrics under
    the names of ``study.train --json``, ``history``, ``status``, ``environment`` and, for a
    failed trial, ``fail_reason`` (``records.write_run``).

    Args:
        configure: ``trial -> TrainConfig``: suggests (or, for an enqueued run, reads) the trial's
            parameters and resolves its whole config. A search builds it from its space, the grid
            from its design, a replication from the stored config it re-runs.
        raw: The dataset, read once per process and shared by its trials.
        checkpoints: Epochs at which the run is also recorded whole, test accuracy included, in
            the user attr ``checkpoints`` ({"10": {...}, "20": {...}}): the fixed grid's
            10/20/50-epoch points of one constant-lr run.
        objectives: Names in ``records.OBJECTIVE_METRICS``. One objective: its value is returned and every epoch's
            validation accuracy is reported for pruning. Several (``("accuracy", "time")``): a
            tuple is returned and nothing is reported, since Optuna prunes only single-objective
            studies.
    """

    configure: Callable[[optuna.Trial], TrainConfig]
    raw: RawDataset
    checkpoints: tuple[int, ...] = ()
    objectives: tuple[str, ...] = ("accuracy",)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        cfg = self.configure(trial)
        # Few, grouped writes: every user attr is one storage transaction (see
        # benchmarks/study_overhead.py), so the config and the environment go in one attr each.
        records.write_config(trial, cfg.to_dict())

        def report(m: EpochMetrics) -> bool:
            trial.report(m.val_accuracy, m.epoch)
            return trial.should_prune()

        try:
            result = train(
                cfg,
                on_epoch=report if len(self.objectives) == 1 else None,
                raw=self.raw,
                test_at=self.checkpoints,
            )
        except RuntimeError as exc:  # CUDA out of memory and other run-time failures
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            records.write_failure(trial, status="error", reason=f"{type(exc).__name__}: {first_line}"[:500],
                                  environment=environment())  # fmt: skip
            raise
        records.write_run(
            trial,
            result.to_dict(),
            environment={**environment(), "device": result.device, "num_parameters": result.num_parameters},
            checkpoints=self.checkpoints,
        )
        if result.status == DIVERGED:
            # Not an ordinary low score: the trial FAILs with its reason, so samplers and the
            # analysis do not read a broken run as a bad-but-valid configuration.
            records.write_diverged(trial)
            return math.nan if len(self.objectives) == 1 else tuple(math.nan for _ in self.objectives)
        if result.status == STOPPED:
            raise optuna.TrialPruned(f"pruned after epoch {result.final['epochs_trained']}")
        values = tuple(result.final[OBJECTIVE_METRICS[name][0]] for name in self.objectives)
        return values[0] if len(values) == 1 else values


def space_config(
    space: SearchSpace, budget: str, raw: RawDataset, **run: Any
) -> Callable[[dict[str, Any]], TrainConfig]:
    """``params -> TrainConfig`` of a search: the space's settings at ``budget``, then the params,
    then ``run`` (dataset, data_dir, device, seed), the subset capped at the images read."""
    settings, pool = space.settings(budget, run.get("dataset")), len(raw.train_labels)
    return lambda params: build_config(settings, params, pool=pool, **run)


def search_objective(
    space: SearchSpace,
    budget: str,
    raw: RawDataset,
    *,
    objectives: tuple[str, ...] = ("accuracy",),
    **run: Any,
) -> Objective:
    """The objective of a search: each trial suggests the space's parameters (``space.suggest``)."""
    config = space_config(space, budget, raw, **run)
    return Objective(lambda trial: config(space.suggest(trial)), raw, objectives=objectives)
