"""The Optuna objective: suggest -> TrainConfig -> train -> report / prune -> return.

The trainer never sees Optuna: pruning goes through ``train``'s ``on_epoch`` callback.
"""

from __future__ import annotations

import functools
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search_spaces import SearchSpace
from study.config import DATASET_SIZES, TrainConfig, available_training_images
from study.data import RawDataset, load_raw
from study.train import DIVERGED, STOPPED, EpochMetrics, train

# Per-epoch series stored on each trial (user attr "history"), for the overfitting analysis.
HISTORY_KEYS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "generalization_gap",
    "optimizer_steps",
    "samples_seen",
    "wall_seconds",
    "train_seconds",
)
# Recorded at each checkpoint epoch (user attr "checkpoints").
CHECKPOINT_KEYS = (
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "generalization_gap",
    "optimizer_steps",
    "samples_seen",
    "wall_seconds",
    "train_seconds",
)
# Final metrics stored as user attrs, under the names of study.train's JSON "final".
FINAL_KEYS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "generalization_gap",
    "optimizer_steps",
    "samples_seen",
    "wall_seconds",
    "train_seconds",
    "images_per_second",
    "peak_memory_bytes",
    "lr",
    "effective_batch_size",
    "micro_batch_size",
    "epochs_trained",
)
# What ``--objectives`` can ask for: name -> (final metric returned, direction).
OBJECTIVES = {
    "accuracy": ("val_accuracy", "maximize"),  # the last epoch's validation accuracy
    "time": ("train_seconds", "minimize"),  # training seconds (evaluation excluded): the paper's cost
}


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
    space: SearchSpace, params: dict[str, Any], *, budget: str, pool: int | None = None, **run: Any
) -> TrainConfig:
    """The TrainConfig of one trial: the space's fixed settings for ``budget``, then ``params``,
    then per-run settings (dataset, data_dir, device, seed).

    A budget's ``train_subset`` is capped at what the dataset has, so one space serves every
    dataset (digits has only 1293 training images): of ``pool`` training images actually read
    when given (a partial copy of a dataset), else of the official split.
    """
    values = {**space.settings(budget), **params, **run}
    if values.get("train_subset") is not None and values.get("dataset") in DATASET_SIZES:
        val_size = values.get("val_size", TrainConfig.val_size)
        available = available_training_images(values["dataset"], val_size, pool=pool)
        values["train_subset"] = min(values["train_subset"], available)
    return TrainConfig(**values)


@dataclass
class Objective:
    """Callable objective for ``study.optimize``.

    Returns the validation accuracy of the **last** epoch, not the best one: every trial trains for
    the same fixed number of epochs (the paper's protocol), the last-epoch model is the one that
    would be used, and picking the best epoch would be early stopping on the validation set, an
    unlisted hyperparameter that flatters noisy trials. The test set is never used for selection.

    User attrs of each trial: ``config`` (every resolved TrainConfig value, with
    effective_batch_size, micro_batch_size and the scaled lr), the final metrics under the names of
    ``study.train --json`` (``FINAL_KEYS``), ``history`` (per-epoch series, ``HISTORY_KEYS``),
    ``status`` (completed, stopped, diverged, error), ``environment`` (device, parameter count,
    package versions, git commit) and, for a failed trial, ``fail_reason``.

    Args:
        space: The search space.
        budget: ``quick`` or ``standard`` (selects the space's budget overrides).
        run: Per-run TrainConfig values: dataset, data_dir, device, seed.
        checkpoints: Epochs at which the run is also recorded whole, test accuracy included, in
            the user attr ``checkpoints`` ({"10": {...}, "20": {...}}): the fixed grid's
            10/20/50-epoch points of one constant-lr run.
        objectives: Names in ``OBJECTIVES``. One objective: its value is returned and every epoch's
            validation accuracy is reported for pruning. Several (``("accuracy", "time")``): a
            tuple is returned and nothing is reported, since Optuna prunes only single-objective
            studies.
    """

    space: SearchSpace
    budget: str
    run: dict[str, Any]
    checkpoints: tuple[int, ...] = ()
    objectives: tuple[str, ...] = ("accuracy",)
    _raw: RawDataset | None = None

    def config(self, params: dict[str, Any]) -> TrainConfig:
        pool = None if self._raw is None else len(self._raw.train_labels)
        return build_config(self.space, params, budget=self.budget, pool=pool, **self.run)

    def raw(self) -> RawDataset:
        """The dataset, read once per process and shared by its trials."""
        if self._raw is None:
            self._raw = load_raw(self.run["dataset"], self.run.get("data_dir", "data"))
        return self._raw

    def trial_config(self, trial: optuna.Trial) -> TrainConfig:
        """Suggest the space's parameters and build the trial's config."""
        return self.config(self.space.suggest(trial))

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.trial_config(trial)
        # Few, grouped writes: every user attr is one storage transaction (see
        # benchmarks/study_overhead.py), so the config and the environment go in one attr each.
        trial.set_user_attr("config", cfg.to_dict())

        def report(m: EpochMetrics) -> bool:
            trial.report(m.val_accuracy, m.epoch)
            return trial.should_prune()

        try:
            result = train(
                cfg,
                on_epoch=report if len(self.objectives) == 1 else None,
                raw=self.raw(),
                test_at=self.checkpoints,
            )
        except RuntimeError as exc:  # CUDA out of memory and other run-time failures
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            trial.set_user_attr("status", "error")
            trial.set_user_attr("environment", environment())
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {first_line}"[:500])
            raise
        record = result.to_dict()  # NaN -> None, so the storage holds valid JSON
        trial.set_user_attr("status", result.status)
        trial.set_user_attr(
            "environment",
            {**environment(), "device": result.device, "num_parameters": result.num_parameters},
        )
        for key in FINAL_KEYS:
            trial.set_user_attr(key, record["final"][key])
        trial.set_user_attr("history", {k: [m[k] for m in record["history"]] for k in HISTORY_KEYS})
        if self.checkpoints:
            trial.set_user_attr(
                "checkpoints",
                {
                    str(m["epoch"]): {k: m[k] for k in CHECKPOINT_KEYS}
                    for m in record["history"]
                    if m["epoch"] in self.checkpoints
                },
            )
        if result.status == DIVERGED:
            # Not an ordinary low score: the trial FAILs with its reason, so samplers and the
            # analysis do not read a broken run as a bad-but-valid configuration.
            trial.set_user_attr("fail_reason", "diverged: the training loss became NaN or infinite")
            return math.nan if len(self.objectives) == 1 else tuple(math.nan for _ in self.objectives)
        if result.status == STOPPED:
            raise optuna.TrialPruned(f"pruned after epoch {result.final['epochs_trained']}")
        values = tuple(result.final[OBJECTIVES[name][0]] for name in self.objectives)
        return values[0] if len(values) == 1 else values
