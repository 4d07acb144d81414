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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from analysis.common import AnalysisError, load_studies
from search_spaces import SearchSpace
from study.cli import render_table
from study.config import TrainConfig
from study.data import DataError
from study.jsonsafe import finite_or_none
from study.objective import Objective
from study.workers import run_main

PROG = "study.replicate"
METRICS = ("val_accuracy", "test_accuracy", "train_accuracy", "generalization_gap")
FORMATS = ("table", "markdown", "json")


@dataclass
class ReplicateObjective(Objective):
    """Runs a stored configuration (``source_trial``) with a given ``seed``."""

    sources: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def trial_config(self, trial: optuna.Trial) -> TrainConfig:
        source = trial.suggest_categorical("source_trial", sorted(self.sources))
        seed = trial.suggest_categorical(
            "seed", sorted({s for c in self.sources.values() for s in c["seeds"]})
        )
        return TrainConfig(**{**self.sources[source]["config"], **self.run, "seed": seed})


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
    with_config = [t for t in study.get_trials(deepcopy=False) if "config" in t.user_attrs]
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
            values = [t.user_attrs[m] for t in runs if t.user_attrs.get(m) is not None]
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
    from study.cli import ArgumentParser, fail
    from study.run import missing_runs, open_study, run_enqueued
    from study.storage import resolve_url

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
    parser.add_argument(
        "--storage", help="SQLAlchemy URL (default: $STUDY_STORAGE or sqlite:///storage/studies.db)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.top < 1 or args.seeds < 1:
        fail(parser.prog, f"--top and --seeds must be >= 1; got {args.top} and {args.seeds}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        (source,) = load_studies([args.study], args.storage)
        searched = {name for t in source.get_trials(deepcopy=False) for name in t.params}
        if args.best_per is not None and args.best_per not in searched:
            raise AnalysisError(
                f"--best-per {args.best_per}: not a parameter of {args.study}; its parameters: "
                + (", ".join(sorted(searched)) or "none")
            )
        values = None
        if args.values is not None:
            if args.best_per is None:
                raise AnalysisError("--values needs --best-per PARAM")
            present = {
                t.params[args.best_per]
                for t in source.get_trials(deepcopy=False)
                if args.best_per in t.params
            }
            by_text = {str(v): v for v in present}
            wanted = [v.strip() for v in args.values.split(",") if v.strip()]
            missing = [v for v in wanted if v not in by_text]
            if missing:
                raise AnalysisError(
                    f"--values {','.join(missing)}: no trial of {args.study} has {args.best_per} = that; "
                    f"it has {', '.join(sorted(by_text))}"
                )
            values = tuple(by_text[v] for v in wanted)
        chosen = best_trials(source, args.top, per=args.best_per, values=values)
        if not chosen:
            raise AnalysisError(f"study {args.study!r} has no completed trial with a recorded config")
        sources = {
            t.number: {
                "config": {f.name: t.user_attrs["config"][f.name] for f in dataclasses.fields(TrainConfig)},
                "seeds": [t.user_attrs["config"]["seed"] + 1 + i for i in range(args.seeds)],
            }
            for t in chosen
        }
        dataset = next(iter(sources.values()))["config"]["dataset"]
        run = {"dataset": dataset, "data_dir": args.data_dir, "device": args.device}
        space = SearchSpace("replicate", Path(args.study), "", {}, {}, {})  # configs come from `sources`
        objective = ReplicateObjective(space, "replicate", run, sources=sources)
        objective.raw()
    except (AnalysisError, DataError) as exc:
        fail(parser.prog, str(exc))
    name = args.new_study or f"{args.study}-replicate"
    study, _ = open_study(
        parser.prog,
        resolve_url(args.storage),
        name,
        {"kind": "replicate", "source_study": args.study, "dataset": dataset},
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
    )
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
