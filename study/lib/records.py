"""What a study and its trials store, named in one place: written here, read back through here.

Optuna keeps free-form ``user_attrs`` on studies and trials; this module is the schema. The
objective writes a run's record with ``write_run``; the commands mark what kind of study they
created (``KIND``); the analysis reads through ``config``, ``history``, ``checkpoints``,
``metric`` and ``kind`` instead of bare strings.

A study's kind:
    ``grid``: designed runs of ``study.grid`` (fixed parameters, every run recorded at its epoch
    points); ``search``: an Optuna search of a space (``study.run``), its trials *selected* by the
    sampler and possibly pruned; ``replicate``: re-runs of a search's chosen trials over fresh seeds
    (``study.replicate``), designed runs again.
"""

from __future__ import annotations

from typing import Any

import optuna

# --- study attrs ---------------------------------------------------------------------------------
KIND = "kind"
GRID, SEARCH, REPLICATE = "grid", "search", "replicate"
DATASET = "dataset"
SPACE = "space"
BUDGET = "budget"
OBJECTIVES = "objectives"  # "accuracy" or "accuracy,time"
EPOCH_POINTS = "epoch_points"  # grid: the epochs recorded whole (the paper's 10/20/50 or 1:2:5)
ARMS = "arms"  # grid: lr-scaling arms of the accumulated runs
ACCUMULATION = "accumulation_steps"  # grid: the accumulation value besides 1 (older grids: "n_gao")
ROLES = "roles"  # search: parameter -> scientific / nuisance / fixed
STRATUM = "stratum"  # search: searched parameters fixed for this study ({} for none), e.g. accumulation_steps
SPACE_DESCRIPTION = "space_description"
SOURCE_STUDY = "source_study"  # replicate: the study whose trials are re-run

# What ``--objectives`` can ask for: name -> (final metric returned, direction).
OBJECTIVE_METRICS = {
    "accuracy": ("val_accuracy", "maximize"),  # the last epoch's validation accuracy
    "time": ("train_seconds", "minimize"),  # training seconds (evaluation excluded): the paper's cost
}

# --- trial attrs ---------------------------------------------------------------------------------
CONFIG = "config"  # every resolved TrainConfig value, with effective batch and scaled lr
HISTORY = "history"  # per-epoch series, HISTORY_KEYS
CHECKPOINTS = "checkpoints"  # grid: {"10": {...CHECKPOINT_KEYS}, ...}
STATUS = "status"  # completed, stopped, diverged, error, interrupted, withdrawn, unrecorded
WITHDRAWN = "withdrawn"  # status of a queued copy taken out of the queue unrun (``withdraw``)
# Status of a FAIL trial that holds a number the committed records lack (older records kept settled
# trials only), so that imported trials keep their numbers (``analysis.lib.export.import_records``).
UNRECORDED = "unrecorded"
ENVIRONMENT = "environment"  # device, parameter count, package versions, git commit
FAIL_REASON = "fail_reason"
WORKER = "worker"  # host:pid of the process that ran the attempt
BASELINE = "baseline"  # search: the enqueued paper-protocol trial
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # the epoch a retried trial continued from (absent: from 0)
# User attrs that describe one attempt at a trial (which process ran it, how it ended), not its
# configuration: a retry starts without them.
ATTEMPT_ATTRS = (WORKER, STATUS, FAIL_REASON, RESUMED_FROM_EPOCH)

# Per-epoch series stored on each trial (user attr HISTORY), for the overfitting analysis.
HISTORY_KEYS = (
    "epoch",  # the evaluated epochs (every epoch unless TrainConfig.eval_every > 1)
    "train_loss",  # running mean of the steps since the previous evaluated epoch (train mode)
    "train_eval_loss",  # eval mode, on the fixed training subset: the progress measure
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "generalization_gap",
    "optimizer_steps",
    "samples_seen",
    "wall_seconds",
    "train_seconds",
)
# Added to HISTORY by runs that measure the gradient noise scale (TrainConfig.noise_scale; the
# names of study.lib.noise.NOISE_KEYS, which this module does not import: it loads no torch).
NOISE_KEYS = ("grad_norm_sq", "grad_trace_sigma", "grad_noise_scale")
# Recorded at each checkpoint epoch (user attr CHECKPOINTS).
CHECKPOINT_KEYS = (
    "train_eval_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy", "generalization_gap",
    "optimizer_steps", "samples_seen", "wall_seconds", "train_seconds",
)  # fmt: skip
# Final metrics stored as user attrs, under the names of study.train's JSON "final".
FINAL_KEYS = (
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
    "generalization_gap", "optimizer_steps", "samples_seen", "wall_seconds", "train_seconds",
    "images_per_second", "peak_memory_bytes", "lr", "effective_batch_size", "micro_batch_size",
    "epochs_trained",
)  # fmt: skip


# --- writing -------------------------------------------------------------------------------------
def write_study_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Store ``attrs`` on a study (its identity when created; a study imported from records)."""
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def describe_search(study: optuna.Study, *, roles: dict[str, str], description: str) -> None:
    """Mark a new study as a search of a space, with its parameters' roles."""
    write_study_attrs(study, {KIND: SEARCH, ROLES: roles, SPACE_DESCRIPTION: description})


def start_attempt(trial: optuna.Trial, *, worker: str) -> None:
    """The process that runs this attempt at the trial (``host:pid``)."""
    trial.set_user_attr(WORKER, worker)


def write_config(trial: optuna.Trial, config: dict[str, Any]) -> None:
    """The resolved TrainConfig of the trial, one attr (every attr is one storage transaction)."""
    trial.set_user_attr(CONFIG, config)


def write_failure(
    trial: optuna.Trial, *, status: str, reason: str, environment: dict[str, Any] | None = None
) -> None:
    """How an attempt ended when it did not finish: ``error`` (with the environment), ``interrupted``,
    ``withdrawn`` (a trial nobody queued, handed to a worker draining the queue)."""
    trial.set_user_attr(STATUS, status)
    if environment is not None:
        trial.set_user_attr(ENVIRONMENT, environment)
    trial.set_user_attr(FAIL_REASON, reason)


def write_diverged(trial: optuna.Trial) -> None:
    """A run whose loss became NaN or infinite: a FAIL with its reason, not a low score."""
    trial.set_user_attr(FAIL_REASON, "diverged: the training loss became NaN or infinite")


def withdraw(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    """Take a WAITING trial out of the queue without running it: FAIL, status ``withdrawn``, with
    the reason (its run is done, running, or queued in another trial)."""
    storage = study._storage  # Optuna has no public call that fails a trial before it has run
    storage.set_trial_user_attr(trial._trial_id, STATUS, WITHDRAWN)
    storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
    storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def write_resumed(trial: optuna.Trial, epoch: int) -> None:
    """The epoch of the predecessor's checkpoint this attempt continued from."""
    trial.set_user_attr(RESUMED_FROM_EPOCH, epoch)


def write_run(
    trial: optuna.Trial,
    record: dict[str, Any],
    *,
    environment: dict[str, Any],
    checkpoints: tuple[int, ...] = (),
) -> None:
    """Store a finished run on its trial: status, environment, the final metrics (FINAL_KEYS), the
    per-epoch history (HISTORY_KEYS, and NOISE_KEYS when measured) and, at the ``checkpoints`` epochs, the run whole.

    ``record`` is ``TrainResult.to_dict()`` (NaN already None, so the storage holds valid JSON).
    Each user attr is one storage transaction, so related values are grouped.
    """
    trial.set_user_attr(STATUS, record["status"])
    trial.set_user_attr(ENVIRONMENT, environment)
    for key in FINAL_KEYS:
        trial.set_user_attr(key, record["final"][key])
    epochs = record["history"]
    keys = HISTORY_KEYS + tuple(k for k in NOISE_KEYS if epochs and k in epochs[0])
    trial.set_user_attr(HISTORY, {k: [m[k] for m in epochs] for k in keys})
    if checkpoints:
        trial.set_user_attr(
            CHECKPOINTS,
            {
                str(m["epoch"]): {k: m[k] for k in CHECKPOINT_KEYS}
                for m in epochs
                if m["epoch"] in checkpoints
            },
        )


def describe_grid(
    study: optuna.Study, *, epoch_points: tuple[int, ...], arms: tuple[str, ...], description: str, new: bool
) -> tuple[str, ...]:
    """Store a grid's design on its study: the epoch points (once, when ``new``), the lr-scaling arms
    run so far (a resumed grid adds its arms to the stored ones; returned) and the description."""
    if new:
        study.set_user_attr(EPOCH_POINTS, list(epoch_points))
    every = tuple(dict.fromkeys([*study.user_attrs.get(ARMS, []), *arms]))
    write_study_attrs(study, {ARMS: list(every), SPACE_DESCRIPTION: description})
    return every


# --- reading -------------------------------------------------------------------------------------
def kind(study: optuna.Study | Any) -> str | None:
    """The kind of a study (GRID, SEARCH, REPLICATE), or None for a study made elsewhere.
    Takes a Study or anything with ``user_attrs`` (a FrozenStudy)."""
    return study.user_attrs.get(KIND)


def config(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    return trial.user_attrs.get(CONFIG)


def history(trial: optuna.trial.FrozenTrial) -> dict[str, list[float]] | None:
    """The per-epoch series of a trial. Records made before runs could skip evaluations hold every
    epoch and no ``epoch`` series; it is filled in (1, 2, ...). Keys a record lacks stay absent
    (older records have no eval-mode ``train_eval_loss``)."""
    stored = trial.user_attrs.get(HISTORY)
    if not stored or "epoch" in stored:
        return stored
    return {"epoch": list(range(1, len(stored["optimizer_steps"]) + 1)), **stored}


def checkpoints(trial: optuna.trial.FrozenTrial) -> dict[str, dict[str, float]]:
    return trial.user_attrs.get(CHECKPOINTS) or {}


def metric(trial: optuna.trial.FrozenTrial, name: str) -> Any:
    """A final metric (FINAL_KEYS) of a trial, None when not recorded."""
    return trial.user_attrs.get(name)


def epochs_trained(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a trial trained (a pruned trial's too; its reports when nothing else was stored)."""
    return int(trial.user_attrs.get("epochs_trained", max(trial.intermediate_values, default=0)))
