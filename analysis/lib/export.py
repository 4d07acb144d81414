"""Trials as CSV: what a reader needs to re-analyse a study without its database.

Two tables per study:

* **runs**: one row per trial: number, state, parameters, value, the resolved settings a reader
  needs (dataset, model, batch, accumulation, effective batch, lr rule and computed lr, epochs,
  training images, seed) and the final metrics;
* **history**: one row per trial and epoch: optimizer steps, samples seen, train and validation
  loss and accuracy, the gap, cumulative training seconds (the matched-steps comparisons and the
  figures are drawn from this table).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna

from study.lib import records

CONFIG_COLUMNS = (
    "dataset",
    "model",
    "protocol",
    "batch_size",
    "accumulation_steps",
    "effective_batch_size",
    "lr_scaling",
    "base_lr",
    "lr",
    "epochs",
    "train_subset",
    "weight_decay",
    "dropout",
    "drop_path",
    "seed",
)
FINAL_COLUMNS = (  # the run's status, its final metrics, why it failed
    records.STATUS,
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "generalization_gap",
    "optimizer_steps",
    "train_seconds",
    "wall_seconds",
    "epochs_trained",
    records.FAIL_REASON,
)
CHECKPOINT_COLUMNS = ("val_accuracy", "test_accuracy")  # per checkpoint epoch: the test split is scored only there
HISTORY_COLUMNS = (
    "optimizer_steps",
    "samples_seen",
    "train_loss",
    "train_eval_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "generalization_gap",
    "train_seconds",
)


def _final(t: optuna.trial.FrozenTrial, name: str) -> Any:
    if name in (records.STATUS, records.FAIL_REASON):  # how the run ended, not a metric
        return t.user_attrs.get(name)
    return records.metric(t, name)


def run_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per finished trial of ``study`` (complete, pruned or failed): a trial still waiting
    or running, in a study exported while it runs, has nothing to show yet. Runs recorded whole at
    checkpoint epochs (the grid's epoch points; a step-matched replicate at both of its lengths) add
    ``val_accuracy_epochE`` and ``test_accuracy_epochE`` per checkpoint epoch E of the study."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    params = sorted({name for t in finished for name in t.params})
    marks = sorted({int(e) for t in finished for e in records.checkpoints(t)})
    rows = []
    for t in finished:
        config = records.config(t) or {}
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        row |= {f"param_{name}": t.params.get(name) for name in params}
        row["value"] = t.values[0] if t.values else None
        row |= {name: config.get(name) for name in CONFIG_COLUMNS}
        row |= {name: _final(t, name) for name in FINAL_COLUMNS}
        at = records.checkpoints(t)
        row |= {f"{k}_epoch{e}": at.get(str(e), {}).get(k) for e in marks for k in CHECKPOINT_COLUMNS}
        rows.append(row)
    return rows


def history_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per (trial, epoch) of every trial that recorded a history; with the noise-scale
    columns when any trial measured it."""
    trials = study.get_trials(deepcopy=False)
    columns = HISTORY_COLUMNS
    if any(records.NOISE_KEYS[-1] in (records.history(t) or {}) for t in trials):
        columns = (*HISTORY_COLUMNS, *records.NOISE_KEYS)
    rows = []
    for t in trials:
        history = records.history(t) or {}
        config = records.config(t) or {}
        epochs = len(history.get("optimizer_steps", []))
        for i in range(epochs):
            row: dict[str, Any] = {"trial": t.number}
            row |= {k: config.get(k) for k in ("batch_size", "accumulation_steps", "lr_scaling", "seed")}
            row["epoch"] = history["epoch"][i]
            row |= {k: (history.get(k) or [None] * epochs)[i] for k in columns}
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path``; an empty table gets no header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


# --- trial records: a study's outcome without its database, and resuming from it -----------------
def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """JSON-able records of the study and of its finished trials (COMPLETE, PRUNED and FAIL: a lost
    or withdrawn attempt too, so that an import gives every trial its number): the first record
    holds the study's name, directions and user attrs; each next one a trial whole (params with
    distributions, values, intermediate values, user and system attrs)."""
    from study.lib.jsonsafe import finite_or_none

    out: list[dict[str, Any]] = [
        {
            "study": study.study_name,
            "directions": [d.name.lower() for d in study.directions],
            "user_attrs": study.user_attrs,
        }
    ]
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished():
            continue
        out.append(
            finite_or_none(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "params": t.params,
                    "distributions": {
                        k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()
                    },
                    "values": t.values,
                    "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
                    "user_attrs": t.user_attrs,
                    "system_attrs": t.system_attrs,  # Hyperband's rungs, a retry's predecessor
                    "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                    "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
                }
            )
        )
    return out


def write_records(study: optuna.Study, path: Path) -> Path:
    """The study's records (``trial_records``) as JSON lines."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in trial_records(study):
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return path


class RecordsError(ValueError):
    """A records file that cannot be imported as written (a trial number recorded twice)."""


def import_records(storage: optuna.storages.BaseStorage, path: Path) -> tuple[str, int]:
    """Add to ``storage`` the trials of a records file, creating the study with its recorded
    directions and user attrs when it does not exist.

    This is how an experiment resumes on another machine: its committed records stand in for the
    database it ran on. Every trial keeps its recorded number (a replication names its sources
    ``STUDY:NUMBER``, the reports name trials by number, Hyperband puts a trial in its bracket by
    number) and its system attrs (the rungs Hyperband compares new trials with), as long as the
    study holds nothing but these records (it is new, or an import of them was stopped halfway);
    a number the records lack (older records kept settled trials only; a trial still running) is
    held by a FAIL trial of status ``unrecorded``. A study that went on elsewhere gets only the
    settled trials it lacks (same parameters and state). Returns the study name and the number of
    trials added.

    Raises:
        RecordsError: a trial number is recorded twice.
    """
    import json

    from optuna.trial import TrialState, create_trial

    from study.lib.workers import settled

    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header, trials = lines[0], sorted(lines[1:], key=lambda r: r["number"])
    if len({r["number"] for r in trials}) < len(trials):
        raise RecordsError(f"{path}: a trial number is recorded twice")
    if header["study"] in {s.study_name for s in storage.get_all_studies()}:
        study = optuna.load_study(study_name=header["study"], storage=storage)
    else:
        study = optuna.create_study(
            storage=storage, study_name=header["study"], directions=header["directions"]
        )
        records.write_study_attrs(study, header["user_attrs"])
    held = study.get_trials(deepcopy=False)
    numbered = _holds_only(held, trials)
    present = {(json.dumps(t.params, sort_keys=True), t.state.name) for t in held if t.state.is_finished()}
    added, next_number = 0, len(held)
    for record in trials:
        if numbered and record["number"] < len(held):
            continue  # imported before, by an import that was stopped
        key = (json.dumps(record["params"], sort_keys=True), record["state"])
        if not numbered and key in present:
            continue
        trial = _trial_from_record(record)
        if not numbered and not settled(trial):
            continue
        while numbered and next_number < record["number"]:
            study.add_trial(
                create_trial(state=TrialState.FAIL, user_attrs={records.STATUS: records.UNRECORDED})
            )
            next_number += 1
        study.add_trial(trial)
        present.add(key)
        added, next_number = added + 1, next_number + 1
    return header["study"], added


def _holds_only(held: list[optuna.trial.FrozenTrial], trials: list[dict[str, Any]]) -> bool:
    """Whether the study's trials are the records' first ones, each at its recorded number (or the
    FAIL trial that holds a number the records lack)."""
    by_number = {r["number"]: r for r in trials}
    for t in held:
        record = by_number.get(t.number)
        if record is None:
            if t.user_attrs.get(records.STATUS) != records.UNRECORDED:
                return False
        elif (t.params, t.state.name) != (record["params"], record["state"]):
            return False
    return True


def _trial_from_record(record: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """The trial of one record, with the times it ran (not when it was imported: the report's
    timelines read these)."""
    from datetime import datetime

    from optuna.trial import TrialState, create_trial

    state = TrialState[record["state"]]
    values = record["values"]
    trial = create_trial(
        state=state,
        params=record["params"],
        distributions={
            k: optuna.distributions.json_to_distribution(d) for k, d in record["distributions"].items()
        },
        # a COMPLETE trial's values, a PRUNED one's last report (Optuna's value of it); FAIL: none
        values=[float("nan") if v is None else v for v in values]
        if values and state != TrialState.FAIL
        else None,
        intermediate_values={int(k): v for k, v in record["intermediate_values"].items() if v is not None},
        user_attrs=record["user_attrs"],
        system_attrs=record.get("system_attrs", {}),  # absent from records written before they were kept
    )
    for name in ("datetime_start", "datetime_complete"):
        if record.get(name):
            setattr(trial, name, datetime.fromisoformat(record[name]))
    return trial
