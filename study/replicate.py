"""``python -m study.replicate --study NAME --top K --seeds S``: believe a result only after seeds.

(It trains, so it lives in study/, not analysis/: analysis never trains.)

Re-runs the best K completed trials of a study (by validation accuracy), each with S fresh seeds
(the original seed + 1, + 2, ...: the original run was *selected* for its score, so re-using its
seed would carry the selection's optimism into the estimate), as trials of a new study
(default ``NAME-replicate``, no pruning), then reports per configuration the mean and standard
deviation of validation, test and train accuracy and of the gap, next to the original value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from typing import Any

import optuna
from optuna.trial import TrialState

from study.lib import records
from study.lib.cli import ArgumentParser, add_storage_flag, add_training_flags, fail, render_table
from study.lib.config import TrainConfig
from study.lib.data import DataError, load_raw
from study.lib.jsonsafe import finite_or_none
from study.lib.objective import Objective
from study.lib.session import StudyError, load_studies, missing_runs, open_study, run_enqueued
from study.lib.storage import StorageError, resolve_url
from study.lib.workers import run_main

PROG = "study.replicate"
METRICS = ("val_accuracy", "test_accuracy", "train_accuracy", "generalization_gap")
FORMATS = ("table", "markdown", "json")


def replicate_config(sources: dict[int, dict[str, Any]], run: dict[str, Any]):
    """``trial -> TrainConfig`` of a replication: the stored config of the trial's ``source_trial``
    with the trial's ``seed`` (both enqueued) and this machine's ``run`` settings (data dir, device)."""
    seeds = sorted({s for c in sources.values() for s in c["seeds"]})

    def configure(trial: optuna.Trial) -> TrainConfig:
        source = trial.suggest_categorical("source_trial", sorted(sources))
        seed = trial.suggest_categorical("seed", seeds)
        return TrainConfig(**{**sources[source]["config"], **run, "seed": seed})

    return configure


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


def report(source: optuna.Study, replicas: optuna.Study, chosen: list) -> list[dict[str, Any]]:
    by_source: dict[int, list] = {t.number: [] for t in chosen}
    for t in replicas.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE and t.params.get("source_trial") in by_source:
            by_source[t.params["source_trial"]].append(t)
    rows = []
    for original in chosen:
        runs = by_source[original.number]
        row: dict[str, Any] = {
            "source_trial": original.number,
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
    if fmt == "json":
        return json.dumps(finite_or_none({"study": study_name, "configurations": rows}), indent=2) + "\n"
    header = ["source trial", "n", "original val", *(f"{m} (mean ± std)" for m in METRICS), "params"]
    table = [
        [str(r["source_trial"]), str(r["n"]), f"{r['original_val_accuracy']:.4f}",
         *(f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in METRICS),
         ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())]
        for r in rows
    ]  # fmt: skip
    return render_table(header, table, markdown=fmt == "markdown")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study whose best trials are re-run")
    parser.add_argument("--top", type=int, default=3, help="how many of the best trials (default: 3)")
    parser.add_argument(
        "--best-per",
        metavar="PARAM",
        help="take the --top best trials for EACH value of this parameter (e.g. accumulation_steps), a "
        "value whose trials were all pruned being represented by the ones that trained longest",
    )
    parser.add_argument(
        "--values", help="with --best-per: only these values, comma-separated (e.g. 1,4); default: all"
    )
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds per trial (default: 3)")
    parser.add_argument(
        "--new-study", help="where the re-runs go (default: STUDY-replicate); resumed if it exists"
    )
    add_storage_flag(parser)
    parser.add_argument("--format", choices=FORMATS, default="table")
    add_training_flags(parser)
    args = parser.parse_args(argv)
    if args.top < 1 or args.seeds < 1:
        fail(parser.prog, f"--top and --seeds must be >= 1; got {args.top} and {args.seeds}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        (source,) = load_studies([args.study], args.storage)
        searched = {name for t in source.get_trials(deepcopy=False) for name in t.params}
        if args.best_per is not None and args.best_per not in searched:
            raise StudyError(
                f"--best-per {args.best_per}: not a parameter of {args.study}; its parameters: "
                + (", ".join(sorted(searched)) or "none")
            )
        values = None
        if args.values is not None:
            if args.best_per is None:
                raise StudyError("--values needs --best-per PARAM")
            present = {
                t.params[args.best_per]
                for t in source.get_trials(deepcopy=False)
                if args.best_per in t.params
            }
            by_text = {str(v): v for v in present}
            wanted = [v.strip() for v in args.values.split(",") if v.strip()]
            missing = [v for v in wanted if v not in by_text]
            if missing:
                raise StudyError(
                    f"--values {','.join(missing)}: no trial of {args.study} has {args.best_per} = that; "
                    f"it has {', '.join(sorted(by_text))}"
                )
            values = tuple(by_text[v] for v in wanted)
        chosen = best_trials(source, args.top, per=args.best_per, values=values)
        if not chosen:
            raise StudyError(f"study {args.study!r} has no completed trial with a recorded config")
        sources = {
            t.number: {
                "config": {f.name: records.config(t)[f.name] for f in dataclasses.fields(TrainConfig)},
                "seeds": [records.config(t)["seed"] + 1 + i for i in range(args.seeds)],
            }
            for t in chosen
        }
        dataset = next(iter(sources.values()))["config"]["dataset"]
        raw = load_raw(dataset, args.data_dir)
        url = resolve_url(args.storage)
    except (StudyError, StorageError, DataError) as exc:
        fail(parser.prog, str(exc))
    objective = Objective(replicate_config(sources, {"data_dir": args.data_dir, "device": args.device}), raw)
    name = args.new_study or f"{args.study}-replicate"
    try:
        study, _ = open_study(
            url,
            name,
            {records.KIND: records.REPLICATE, records.SOURCE_STUDY: args.study, records.DATASET: dataset},
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=optuna.pruners.NopPruner(),
        )
    except StudyError as exc:
        fail(parser.prog, str(exc))
    todo = missing_runs(
        study, [{"source_trial": n, "seed": s} for n, src in sources.items() for s in src["seeds"]]
    )
    print(
        f"replicating the best {len(chosen)} trials of {args.study} with {args.seeds} seeds into {name}: {len(todo)} runs to do",
        file=sys.stderr,
        flush=True,
    )
    run_enqueued(study, objective, todo, quiet=args.quiet, stream=sys.stderr)
    sys.stdout.write(render(report(source, study, chosen), args.format, name))
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
