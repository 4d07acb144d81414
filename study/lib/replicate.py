"""The replication of ``python -m study.replicate``: which trials, which seeds, the plan.

A search's best trial was *selected* for its score, so its own seed carries the selection's
optimism: it is re-run with fresh seeds, the original seed + 1, + 2, ... Trials of studies searched
with the same seed get the same fresh seeds, so their re-runs are **paired by seed** (the tuned
comparison of ``study.experiment``). With ``step_matched``, a configuration with accumulation N
trains N times its epochs, as many optimizer steps as an accumulation-1 run of the same epochs,
and records its test accuracy at both lengths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any

import optuna
from optuna.trial import TrialState

from study.lib import records
from study.lib.cli import render_table
from study.lib.config import TrainConfig
from study.lib.jsonsafe import finite_or_none
from study.lib.session import Plan, StudyError

METRICS = ("val_accuracy", "test_accuracy", "train_accuracy", "generalization_gap")
FORMATS = ("table", "markdown", "json")


def best_trials(
    study: optuna.Study, top: int, *, per: str | None = None, values: tuple[Any, ...] | None = None
) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` completed trials by value; with ``per`` (a parameter name), the ``top`` of each
    of its values (of ``values`` only, when given).

    Pruning compares trials at equal epochs, where an accumulated trial has made N times fewer
    optimizer steps, so a value can end with every trial pruned. Such a value is not left out: its
    trials that trained longest (then scored best at their last report) stand in, and re-running
    them unpruned over seeds is what answers whether tuning recovers its accuracy.
    """
    with_config = [t for t in study.get_trials(deepcopy=False) if records.config(t)]
    done = sorted(
        (t for t in with_config if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True
    )
    if per is None:
        return done[:top]
    chosen = []
    present = sorted({t.params[per] for t in with_config if per in t.params}, key=repr)
    for value in [v for v in present if values is None or v in values]:
        completed = [t for t in done if t.params.get(per) == value]
        pruned = sorted(
            (t for t in with_config if t.state == TrialState.PRUNED and t.params.get(per) == value),
            key=lambda t: (
                (len(t.intermediate_values), t.intermediate_values[max(t.intermediate_values)])
                if t.intermediate_values
                else (0, -math.inf)
            ),
            reverse=True,
        )
        chosen += (completed + pruned)[:top]
    return chosen


def source_key(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """How a replicated trial names its source: ``STUDY:NUMBER``."""
    return f"{study.study_name}:{trial.number}"


def sources(
    chosen: list[tuple[optuna.Study, optuna.trial.FrozenTrial]], *, seeds: int, step_matched: bool
) -> dict[str, dict[str, Any]]:
    """``source key -> {"config", "seeds", "checkpoints"}``: each chosen trial's stored config (its
    epochs times its accumulation with ``step_matched``), the fresh seeds, and the epochs at which
    the re-run is recorded whole (its own epochs and, stretched, the original ones too)."""
    out = {}
    for study, trial in chosen:
        config = {f.name: records.config(trial)[f.name] for f in dataclasses.fields(TrainConfig)}
        epochs = config["epochs"]
        if step_matched:
            config["epochs"] = epochs * config["accumulation_steps"]
        out[source_key(study, trial)] = {
            "config": config,
            "seeds": [config["seed"] + 1 + i for i in range(seeds)],
            "checkpoints": sorted({epochs, config["epochs"]}),
        }
    return out


def check_sources(url: str, name: str, chosen_sources: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume replication study ``name`` when it re-runs other trials or seeds than
    ``chosen_sources`` (``sources``) would.

    The best trials change when a search is extended after its replication began, the seeds with
    ``--seeds``; Optuna would then fail the first run with "CategoricalDistribution does not support
    dynamic value space".

    Raises:
        StudyError: the study exists and its runs name other sources or seeds.
    """
    from study.lib.storage import open_storage, study_exists

    storage = open_storage(url, create=False)
    if not study_exists(storage, name):
        return
    wanted = {"source": sorted(chosen_sources), "seed": _seeds(chosen_sources)}
    for trial in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
        for param, choices in wanted.items():
            recorded = trial.distributions.get(param)
            if recorded is not None and list(recorded.choices) != choices:
                raise StudyError(
                    f"{name} re-runs {param} {', '.join(map(str, recorded.choices))}, but this replication has "
                    f"{', '.join(map(str, choices))}; give --new-study NAME for it"
                )


def _seeds(chosen_sources: dict[str, dict[str, Any]]) -> list[int]:
    return sorted({s for c in chosen_sources.values() for s in c["seeds"]})


def replicate_plan(chosen_sources: dict[str, dict[str, Any]], raw: Any, *, name: str, identity: dict[str, Any],
                   run: dict[str, Any], header: str, stream: Any, store: Any = None) -> Plan:  # fmt: skip
    """Every (source, seed) re-run the study lacks, unpruned, into study ``name``."""
    from study.lib.objective import Objective  # trains: imported only where a replication runs

    keys, seeds = sorted(chosen_sources), _seeds(chosen_sources)

    def configure(trial: optuna.Trial) -> TrainConfig:
        source = trial.suggest_categorical("source", keys)
        seed = trial.suggest_categorical("seed", seeds)
        return TrainConfig(**{**chosen_sources[source]["config"], **run, "seed": seed})

    checkpoints = tuple(sorted({e for c in chosen_sources.values() for e in c["checkpoints"]}))
    return Plan(
        study_name=name, identity=identity, sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(), objective=Objective(configure, raw, points=checkpoints, store=store),
        runs=[{"source": k, "seed": s} for k in keys for s in chosen_sources[k]["seeds"]],
        header=lambda study, existed, todo: f"{header}: {todo} runs to do", stream=stream,
        worker_flags=lambda share: ["--new-study", name],  # its workers take queued runs until none is left
    )  # fmt: skip


def report(
    replicas: optuna.Study, chosen: list[tuple[optuna.Study, optuna.trial.FrozenTrial]]
) -> list[dict[str, Any]]:
    """Per chosen trial: its original score, and the mean and standard deviation of its re-runs."""
    by_source: dict[str, list] = {source_key(s, t): [] for s, t in chosen}
    for t in replicas.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params.get("source") in by_source:
            by_source[t.params["source"]].append(t)
    rows = []
    for study, original in chosen:
        runs = by_source[source_key(study, original)]
        row: dict[str, Any] = {
            "source": source_key(study, original),
            "params": original.params,
            # a pruned stand-in (see best_trials) has no value: its last reported one
            "original_val_accuracy": original.value
            if original.value is not None
            else original.intermediate_values[max(original.intermediate_values)]
            if original.intermediate_values
            else math.nan,
            "original_state": original.state.name.lower(),
            "seeds": sorted(t.params["seed"] for t in runs),
            "n": len(runs),
        }
        for m in METRICS:
            values = [records.metric(t, m) for t in runs if records.metric(t, m) is not None]
            row[m] = {
                "mean": statistics.fmean(values) if values else math.nan,
                "std": statistics.stdev(values) if len(values) > 1 else math.nan,
            }
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], fmt: str, study_name: str) -> str:
    """The report as a table (``table``, ``markdown``) or JSON."""
    if fmt == "json":
        return json.dumps(finite_or_none({"study": study_name, "configurations": rows}), indent=2) + "\n"
    header = ["source", "n", "original val", *(f"{m} (mean ± std)" for m in METRICS), "params"]
    table = [
        [r["source"], str(r["n"]), f"{r['original_val_accuracy']:.4f}",
         *(f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in METRICS),
         ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())]
        for r in rows
    ]  # fmt: skip
    return render_table(header, table, markdown=fmt == "markdown")


def choose(
    studies: list[optuna.Study], top: int, *, per: str | None, values_text: str | None
) -> list[tuple[optuna.Study, optuna.trial.FrozenTrial]]:
    """The trials to re-run: the ``top`` best of each study (of each value of ``per`` in it, of the
    ``values_text`` values when given).

    Raises:
        StudyError: ``per`` is not a parameter, a value is absent, or nothing was completed.
    """
    chosen = []
    for study in studies:
        trials = study.get_trials(deepcopy=False)
        searched = {name for t in trials for name in t.params}
        if per is not None and per not in searched:
            raise StudyError(f"--best-per {per}: not a parameter of {study.study_name}; its parameters: "
                             + (", ".join(sorted(searched)) or "none"))  # fmt: skip
        if values_text is not None and per is None:
            raise StudyError("--values needs --best-per PARAM")
        values = None
        if values_text is not None:
            by_text = {str(t.params[per]): t.params[per] for t in trials if per in t.params}
            wanted = [v.strip() for v in values_text.split(",") if v.strip()]
            if missing := [v for v in wanted if v not in by_text]:
                raise StudyError(f"--values {','.join(missing)}: no trial of {study.study_name} has {per} = that; "
                                 f"it has {', '.join(sorted(by_text))}")  # fmt: skip
            values = tuple(by_text[v] for v in wanted)
        best = best_trials(study, top, per=per, values=values)
        if not best:
            raise StudyError(f"study {study.study_name!r} has no completed trial with a recorded config")
        chosen += [(study, t) for t in best]
    return chosen
