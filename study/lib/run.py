"""The search of ``python -m study.run``: its flag checks and its plan (``study.lib.session.Plan``).

A study searches the space's parameters at a budget (``search_spaces``); its first trial is the
space's ``[baseline]`` (the paper protocol), enqueued once; a resumed study, or a worker process,
draws new sampler points (``sampler_seed``).
"""

from __future__ import annotations

import argparse

from search_spaces import SearchSpace, SpaceError
from study.lib import records
from study.lib.cli import fail
from study.lib.data import RawDataset
from study.lib.objective import search_objective
from study.lib.session import PRUNERS, SAMPLERS, Plan, make_pruner, make_sampler, sampler_seed
from study.lib.storage import mask

OBJECTIVE_SETS = (("accuracy",), ("accuracy", "time"))


def check_flags(prog: str, args: argparse.Namespace) -> None:
    """The search's own flags (one line, exit 2): sampler, objectives and the pruner they allow."""
    if args.workers < 1:
        fail(prog, f"--workers must be >= 1; got {args.workers}")
    if args.sampler not in SAMPLERS:
        fail(prog, f"unknown sampler {args.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    args.objectives = tuple(name.strip() for name in args.objectives.split(","))
    if args.objectives not in OBJECTIVE_SETS:
        fail(prog, f"--objectives must be accuracy or accuracy,time; got {','.join(args.objectives)!r}")
    multi = len(args.objectives) > 1
    if args.pruner is None:
        args.pruner = "none" if multi else "hyperband"
    if args.pruner not in PRUNERS:
        fail(prog, f"unknown pruner {args.pruner!r}; choose one of {', '.join(PRUNERS)}")
    if multi and args.pruner != "none":
        fail(
            prog,
            f"--pruner {args.pruner} with --objectives accuracy,time: Optuna prunes only single-objective studies",
        )


def parse_fixes(items: list[str]) -> dict[str, str]:
    """``["accumulation_steps=4", ...]`` -> ``{"accumulation_steps": "4"}`` (SpaceError on a bad item)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpaceError(f"--fix takes PARAM=VALUE; got {item!r}")
        out[name.strip()] = value.strip()
    return out


def search_plan(
    args: argparse.Namespace,
    space: SearchSpace,
    raw: RawDataset,
    *,
    epochs: int,
    url: str,
    note: str,
    store=None,
) -> Plan:
    """The plan of a search: ``args.n_trials`` new trials of ``space`` at ``args.budget``."""
    run = {"dataset": args.dataset, "data_dir": args.data_dir, "device": args.device, "seed": args.seed}
    multi = len(args.objectives) > 1
    fixed = {k: space.fixed[k] for k in parse_fixes(args.fix)}
    stratum = "".join(f"-{k}={v}" for k, v in fixed.items())
    study_name = args.study_name or f"{args.dataset}-{space.name}-{args.budget}{stratum}" + (
        "-time" if multi else ""
    )

    def prepare(study, existed: bool) -> None:
        if not existed:
            records.describe_search(study, roles=space.roles(), description=space.description.strip())
            if space.baseline:  # the paper protocol's default first, so every study contains it
                study.enqueue_trial(space.baseline, user_attrs={records.BASELINE: True}, skip_if_exists=True)

    def header(study, existed: bool, todo: int) -> str:
        where = f"resumed, {len(study.trials)} trials so far" if existed else "new"
        return (f"study {study_name} ({where}) on {mask(url)}\n"
                f"dataset {args.dataset}, space {space.name}, budget {args.budget} ({note}), sampler {args.sampler}, "
                f"pruner {args.pruner}, objectives {','.join(args.objectives)}, {todo} trials, {args.workers} worker(s)")  # fmt: skip

    def on_open(study, existed: bool) -> None:
        # A worker, or a resumed study, must not re-draw the random points the first run drew (QMC
        # continues its own sequence from the stored trials).
        if existed and args.sampler != "qmc":
            study.sampler = make_sampler(
                args.sampler, sampler_seed(args.seed, args.worker_index, len(study.trials))
            )

    return Plan(
        study_name=study_name,
        identity={records.DATASET: args.dataset, records.SPACE: space.name, records.BUDGET: args.budget,
                  records.OBJECTIVES: ",".join(args.objectives), records.STRATUM: fixed},
        sampler=make_sampler(args.sampler, args.seed),
        pruner=make_pruner(args.pruner, epochs),
        objective=search_objective(space, args.budget, raw, objectives=args.objectives, store=store, **run),
        n_trials=args.n_trials, objectives=args.objectives, timeout=args.timeout, on_open=on_open, prepare=prepare,
        header=header,
        worker_flags=lambda share: ["--space", str(space.path), "--study-name", study_name, "--budget", args.budget,
                                    "--pruner", args.pruner, "--n-trials", str(share)],
    )  # fmt: skip
