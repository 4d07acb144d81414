"""``python -m study.experiment``: the whole controlled experiment, resumable, written to results/.

One command answers the project's question for a dataset at a budget:

1. **the grid** (``study.grid``): the paper's fixed grid with learning-rate arms (``none``, ``linear``,
   ``sqrt``: the accumulated runs scale the lr by N or sqrt N; the accumulation-1 runs are shared by
   all arms), over ``--seeds`` seeds. This is the controlled test the verdict is drawn from; its
   runs measure the gradient noise scale (``study.lib.noise``) that says why accumulation costs accuracy;
2. **the search** (``study.run``): ``--n-trials`` trials of the overfitting space (Hyperband
   pruning, as users run it);
3. **the replication** (``study.replicate``): the best searched configuration for accumulation 1
   and for N, re-run **without pruning** over ``--replicate-seeds`` fresh seeds. Pruning compares
   trials at equal epochs, where an accumulated trial has made N times fewer optimizer steps, so
   the search's own ranking is not evidence; the unpruned replicates are, and they answer whether
   tuning recovers the accuracy lost with accumulation;
4. **the results** (``analysis.results``): ``report.md`` with its PNG figures, ``verdict.json`` and
   the trials as CSV (never a database) under ``--out``.

Each step resumes: a finished run is never repeated, so after a stop (Ctrl-C, a killed machine)
the same command goes on where it was. The steps run as child processes of the commands above, so
each keeps its own progress, Ctrl-C and retry handling; the storage URL travels in the
environment, never on a command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

from study.lib.cli import ArgumentParser, fail
from study.lib.config import DATASET_SIZES, LR_SCALING_EXPONENTS
from study.lib.session import BUDGETS, EXPERIMENT_SPACE, experiment_study_names
from study.lib.storage import STORAGE_ENV, StorageError, mask, open_storage, resolve_url, study_exists
from study.lib.workers import EXIT_INTERRUPTED, run_main, settled

PROG = "study.experiment"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Run the controlled experiment (grid with lr-scaling arms over seeds, a search, the "
        "replication of its best configurations without pruning) and write results/: report.md, "
        "figures, verdict.json, trials as CSV. Resumable: run the same command again after a stop.",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES))
    parser.add_argument(
        "--budget",
        required=True,
        choices=BUDGETS,
        help="quick (smoke run), cpu (the science at CPU scale: the committed results) or standard (the "
        "paper's scale, on a GPU)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="grid seeds (default: 5)")
    parser.add_argument(
        "--accumulation-steps", type=int, default=4, help="the accumulation value besides 1 (default: 4)"
    )
    parser.add_argument(
        "--lr-scaling", default="none,linear,sqrt", help="grid arms (default: none,linear,sqrt)"
    )
    parser.add_argument("--n-trials", type=int, default=30, help="search trials in all (default: 30)")
    parser.add_argument(
        "--replicate-seeds",
        type=int,
        default=3,
        help="fresh seeds for each replicated configuration (default: 3)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes for the grid and the search, each with cores/N threads (default: 1); "
        "on 2 CPU cores, 2 workers finish the grid about twice as fast",
    )
    parser.add_argument("--out", help="results folder (default: results/DATASET-BUDGET)")
    parser.add_argument(
        "--storage", help=f"SQLAlchemy URL (default: ${STORAGE_ENV} or sqlite:///storage/studies.db)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def settled_trials(url: str, name: str) -> int:
    """Trials of study ``name`` that need not run again (0 when the study does not exist yet)."""
    storage = open_storage(url)
    if not study_exists(storage, name):
        return 0
    study = optuna.load_study(study_name=name, storage=storage)
    return sum(settled(t) for t in study.get_trials(deepcopy=False))


def resume_from_records(url: str, out: Path) -> None:
    """Import the trial records committed under ``out/records`` that the storage lacks, so that an
    experiment stopped on one machine resumes on another from its committed results."""
    from analysis.lib.export import import_records

    records = sorted((out / "records").glob("*.jsonl")) if (out / "records").is_dir() else []
    if not records:
        return
    storage = open_storage(url)
    for path in records:
        name, added = import_records(storage, path)
        if added:
            print(f"resumed from {path}: {added} finished trial(s) of {name} imported", flush=True)


def searched_values(url: str, name: str, param: str) -> set:
    """The values of ``param`` that the trials of study ``name`` tried."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return {t.params[param] for t in study.get_trials(deepcopy=False) if param in t.params}


def step(title: str, module: str, args: list[str], env: dict[str, str]) -> None:
    """Run one command of the experiment; stop the experiment with its exit code if it fails."""
    print(f"\n== {title}: python -m {module} {' '.join(args)}", flush=True)
    code = subprocess.run([sys.executable, "-m", module, *args], env=env).returncode
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt(f"interrupted during {title}")
    if code != 0:
        print(f"{PROG}: {title} failed (exit {code}); fix what it said and run the same command to resume")
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("seeds", "n_trials", "replicate_seeds", "workers"):
        if getattr(args, name) < 1:
            fail(PROG, f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.accumulation_steps < 2:
        fail(PROG, f"--accumulation-steps must be >= 2; got {args.accumulation_steps}")
    arms = [a.strip() for a in args.lr_scaling.split(",") if a.strip()]
    if not arms or any(a not in LR_SCALING_EXPONENTS for a in arms):
        fail(PROG, f"--lr-scaling takes arms of {', '.join(LR_SCALING_EXPONENTS)}; got {args.lr_scaling!r}")
    out = Path(args.out or f"results/{args.dataset}-{args.budget}")
    if out.exists() and not out.is_dir():
        fail(PROG, f"--out {out} is a file; give a folder")
    try:
        url = resolve_url(args.storage)
    except StorageError as exc:
        fail(PROG, str(exc))
    names = experiment_study_names(args.dataset, args.budget)
    env = {**os.environ, STORAGE_ENV: url}  # the URL (and any password) stays off command lines
    common = ["--dataset", args.dataset, "--budget", args.budget, "--device", args.device]
    common += ["--data-dir", args.data_dir] + (["--quiet"] if args.quiet else [])
    print(f"experiment {args.dataset} at budget {args.budget} on {mask(url)}; results in {out}/", flush=True)
    resume_from_records(url, out)

    step(
        "1/4 the grid",
        "study.grid",
        [*common, "--seeds", str(args.seeds), "--accumulation-steps", str(args.accumulation_steps), "--lr-scaling", ",".join(arms),
         "--study-name", names["grid"], "--workers", str(args.workers), "--noise-scale"],
        env,
    )  # fmt: skip
    remaining = args.n_trials - settled_trials(url, names["search"])
    if remaining > 0:
        step(
            f"2/4 the search ({remaining} of {args.n_trials} trials to run)",
            "study.run",
            [
                *common,
                "--space",
                EXPERIMENT_SPACE,
                "--n-trials",
                str(remaining),
                "--study-name",
                names["search"],
                "--workers",
                str(args.workers),
            ],
            env,
        )
    else:
        print(f"\n== 2/4 the search: {args.n_trials} trials already in {names['search']}", flush=True)
    n = args.accumulation_steps
    values = [v for v in (1, n) if v in searched_values(url, names["search"], "accumulation_steps")]
    if n not in values:
        print(f"note: no search trial has accumulation_steps = {n}; only accumulation 1 is replicated")
    step(
        "3/4 the replication of the best configuration for accumulation 1 and N, without pruning",
        "study.replicate",
        ["--study", names["search"], "--new-study", names["replicate"], "--best-per", "accumulation_steps",
         "--values", ",".join(map(str, values)), "--top", "1", "--seeds", str(args.replicate_seeds),
         "--device", args.device, "--data-dir", args.data_dir, *(["--quiet"] if args.quiet else [])],
        env,
    )  # fmt: skip

    from analysis.lib.results import write_results  # analysis reads the storage, never trains

    print(f"\n== 4/4 the results: {out}/", flush=True)
    written = write_results(url, names, out)
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
