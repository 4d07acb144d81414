"""The Optuna objective: suggest -> TrainConfig -> train -> report / prune -> return.

The trainer never sees Optuna: pruning goes through ``train``'s ``on_epoch`` callback.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search_spaces import SearchSpace
from study.lib import records
from study.lib.checkpoint import CheckpointError, Checkpoints
from study.lib.config import DATASET_SIZES, TrainConfig, available_training_images
from study.lib.data import RawDataset
from study.lib.records import OBJECTIVE_METRICS
from study.lib.train import DIVERGED, STOPPED, EpochMetrics, ResumeError, train


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
        points: Epochs at which the run is also recorded whole, test accuracy included, in the
            user attr ``checkpoints`` ({"10": {...}, "20": {...}}): the fixed grid's 10/20/50-epoch
            points of one constant-lr run.
        objectives: Names in ``records.OBJECTIVE_METRICS``. One objective: its value is returned and every epoch's
            validation accuracy is reported for pruning. Several (``("accuracy", "time")``): a
            tuple is returned and nothing is reported, since Optuna prunes only single-objective
            studies.
        store: Where the trial checkpoints its run, and resumes from a predecessor's checkpoint
            (None: no checkpoints).
    """

    configure: Callable[[optuna.Trial], TrainConfig]
    raw: RawDataset
    points: tuple[int, ...] = ()
    objectives: tuple[str, ...] = ("accuracy",)
    store: Checkpoints | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        cfg = self.configure(trial)
        # Few, grouped writes: every user attr is one storage transaction (see
        # benchmarks/study_overhead.py), so the config and the environment go in one attr each.
        records.write_config(trial, cfg.to_dict())
        single = len(self.objectives) == 1

        def report(m: EpochMetrics) -> bool:
            trial.report(m.val_accuracy, m.epoch)
            return trial.should_prune()

        try:
            result = self._train(trial, cfg, report if single else None)
        except RuntimeError as exc:  # CUDA out of memory and other run-time failures
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            records.write_failure(trial, status="error", reason=f"{type(exc).__name__}: {first_line}"[:500],
                                  environment=environment())  # fmt: skip
            self._discard(trial)
            raise
        records.write_run(
            trial,
            result.to_dict(),
            environment={**environment(), "device": result.device, "num_parameters": result.num_parameters},
            checkpoints=self.points,
        )
        self._discard(trial)
        if result.status == DIVERGED:
            # Not an ordinary low score: the trial FAILs with its reason, so samplers and the
            # analysis do not read a broken run as a bad-but-valid configuration.
            records.write_diverged(trial)
            return math.nan if single else tuple(math.nan for _ in self.objectives)
        if result.status == STOPPED:
            raise optuna.TrialPruned(f"pruned after epoch {result.final['epochs_trained']}")
        values = tuple(result.final[OBJECTIVE_METRICS[name][0]] for name in self.objectives)
        return values[0] if single else values

    def _train(self, trial: optuna.Trial, cfg: TrainConfig, report):
        """Train, from the newest usable checkpoint of the trials this one retries when there is one
        (``study.lib.checkpoint``), writing checkpoints as it goes."""
        kwargs = {"on_epoch": report, "raw": self.raw, "test_at": self.points}
        if self.store is None:
            return train(cfg, **kwargs)
        kwargs["on_checkpoint"] = self.store.saver(trial)
        if (state := self._checkpoint(trial, cfg)) is None:
            return train(cfg, **kwargs)

        def resumed(run) -> None:  # the predecessor's curve, once: its pruning decisions stand
            if report is not None:
                for m in run.history:
                    trial.report(m.val_accuracy, m.epoch)
            records.write_resumed(trial, run.epoch)
            print(f"trial {trial.number}: resumed from epoch {run.epoch}", file=sys.stderr, flush=True)

        try:
            return train(cfg, resume=state, on_resume=resumed, **kwargs)
        except ResumeError as exc:  # the checkpoint's model is not this code's model
            print(f"trial {trial.number}: {exc}; starting from epoch 0", file=sys.stderr, flush=True)
            return train(cfg, **kwargs)

    def _checkpoint(self, trial: optuna.Trial, cfg: TrainConfig) -> dict | None:
        """The predecessors' newest checkpoint written for this configuration, or None (one line
        naming the file when there is one that cannot be used)."""
        if (path := self.store.newest(trial)) is None:
            return None
        try:
            return self.store.load(path, cfg.to_dict())
        except CheckpointError as exc:
            print(f"trial {trial.number}: {exc}; starting from epoch 0", file=sys.stderr, flush=True)
            return None

    def _discard(self, trial: optuna.Trial) -> None:
        if self.store is not None:
            self.store.discard(trial)


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
    store: Checkpoints | None = None,
    **run: Any,
) -> Objective:
    """The objective of a search: each trial suggests the space's parameters (``space.suggest``)."""
    config = space_config(space, budget, raw, **run)
    return Objective(lambda trial: config(space.suggest(trial)), raw, objectives=objectives, store=store)
