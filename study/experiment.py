"""``python -m study.experiment``: the whole controlled experiment, resumable, written to results/.

One command answers the project's question for a dataset at a budget: the grid (the designed runs
of the verdict), one tuning search per accumulation value with equal effort, the replication of each
search's best configuration paired by seed, and the results (``study.lib.experiment`` says what
each step runs and why).

Each step resumes: a finished run is never repeated, so after a stop (Ctrl-C, a killed machine)
the same command goes on where it was; on a machine without the database it first imports the
finished trials from the committed ``records/``. The steps run as child processes of the commands
above, so each keeps its own progress, Ctrl-C and retry handling; the storage URL travels in the
environment, never on a command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

from study.lib.cli import ArgumentParser, fail, parse_arms, parse_choices, parse_families
from study.lib.config import DATASET_SIZES
from study.lib.experiment import Step, steps, study_names
from study.lib.grid import BATCH_SIZES
from study.lib.session import BUDGETS
from study.lib.storage import STORAGE_ENV, StorageError, mask, open_storage, resolve_url, study_exists
from study.lib.workers import EXIT_INTERRUPTED, run_main, settled

PROG = "study.experiment"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Run the controlled experiment (the grid with lr-scaling arms over seeds, one tuning search per "
        "accumulation value, the replication of their best configurations paired by seed) and write results/: "
        "report.md, figures, verdict.json, trials as CSV. Resumable: run the same command again after a stop.",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASET_SIZES))
    parser.add_argument("--budget", required=True, choices=BUDGETS,
                        help="quick (smoke run), cpu (the science at CPU scale: the committed results) or standard "
                        "(the paper's scale, on a GPU)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, help="grid seeds (default: 5)")
    parser.add_argument(
        "--accumulation-steps", type=int, default=4, help="the accumulation value besides 1 (default: 4)"
    )
    parser.add_argument(
        "--lr-scaling", default="none,linear,sqrt", help="grid arms (default: none,linear,sqrt)"
    )
    parser.add_argument("--models", default="swin,vit,bn-cnn",
                        help="model families: swin (the experiment's model, always run) and the controls vit and "
                        "bn-cnn, each given the grid of the same design, reduced to --control-batch-sizes, after "
                        "the Swin's replication (default: swin,vit,bn-cnn; swin alone skips the controls)")  # fmt: skip
    parser.add_argument("--control-batch-sizes", default="32",
                        help="the controls' micro-batches, with their step-matched runs and twins as in the Swin's "
                        "grid (default: 32, the micro-batch whose baseline makes the most steps)")  # fmt: skip
    parser.add_argument("--control-lr-scaling", default="none",
                        help="the controls' grid arms (default: none, the paper's; their search is the Swin's)")  # fmt: skip
    parser.add_argument("--control-step-matched", default="",
                        help="the controls' arms whose accumulated runs train N times the epochs (default: none: on "
                        "the Swin's CIFAR-10 grid every effective batch reached its validation-loss minimum within the "
                        "equal-epoch length, so the step-matched runs, at 3.5 times the cost, added only the rise's "
                        "reach; analysis.overfitting --stop-at shows it)")  # fmt: skip
    parser.add_argument("--n-trials", type=int, default=32,
                        help="tuning-search trials per accumulation value (default: 32: Hyperband stops about two "
                        "in three at their first evaluation, and the importance report needs 10 completed trials "
                        "per value)")  # fmt: skip
    parser.add_argument("--replicate-seeds", type=int, default=5,
                        help="fresh seeds, shared by the replicated configurations (default: 5)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes for the grid and the searches, each with cores/N threads (default: 1)")  # fmt: skip
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
    from analysis.lib.export import RecordsError, import_records

    records = sorted((out / "records").glob("*.jsonl")) if (out / "records").is_dir() else []
    if not records:
        return
    storage = open_storage(url)
    for path in records:
        try:
            name, added = import_records(storage, path)
        except RecordsError as exc:
            fail(PROG, str(exc))
        if added:
            print(f"resumed from {path}: {added} finished trial(s) of {name} imported", flush=True)


def run_step(step: Step, env: dict[str, str]) -> None:
    """Run one command of the experiment; stop the experiment with its exit code if it fails."""
    print(f"\n== {step.title}: python -m {step.module} {' '.join(step.args)}", flush=True)
    code = subprocess.run([sys.executable, "-m", step.module, *step.args], env=env).returncode
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt(f"interrupted during {step.title}")
    if code != 0:
        print(
            f"{PROG}: {step.title} failed (exit {code}); fix what it said and run the same command to resume"
        )
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("seeds", "n_trials", "replicate_seeds", "workers"):
        if getattr(args, name) < 1:
            fail(PROG, f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.accumulation_steps < 2:
        fail(PROG, f"--accumulation-steps must be >= 2; got {args.accumulation_steps}")
    arms = list(parse_arms(PROG, "--lr-scaling", args.lr_scaling))
    controls = tuple(f for f in parse_families(PROG, "--models", args.models) if f != "swin")
    control_arms = parse_arms(PROG, "--control-lr-scaling", args.control_lr_scaling)
    control_batches = parse_choices(PROG, "--control-batch-sizes", args.control_batch_sizes,
                                    tuple(map(str, BATCH_SIZES)), "micro-batches")  # fmt: skip
    control_step_matched = parse_arms(PROG, "--control-step-matched", args.control_step_matched, empty=True)
    out = Path(args.out or f"results/{args.dataset}-{args.budget}")
    if out.exists() and not out.is_dir():
        fail(PROG, f"--out {out} is a file; give a folder")
    try:
        url = resolve_url(args.storage)
    except StorageError as exc:
        fail(PROG, str(exc))
    names = study_names(args.dataset, args.budget, args.accumulation_steps)
    env = {**os.environ, STORAGE_ENV: url}  # the URL (and any password) stays off command lines
    print(f"experiment {args.dataset} at budget {args.budget} on {mask(url)}; results in {out}/", flush=True)
    resume_from_records(url, out)
    remaining = {
        n: args.n_trials - settled_trials(url, names[f"search-x{n}"]) for n in (1, args.accumulation_steps)
    }
    plan = steps(dataset=args.dataset, budget=args.budget, accumulation=args.accumulation_steps, seeds=args.seeds,
                 arms=arms, n_trials=remaining, replicate_seeds=args.replicate_seeds, workers=args.workers,
                 device=args.device, data_dir=args.data_dir, quiet=args.quiet, controls=controls,
                 control_arms=control_arms, control_batches=control_batches,
                 control_step_matched=control_step_matched)  # fmt: skip
    for step in plan:
        run_step(step, env)

    from analysis.lib.results import write_results  # analysis reads the storage, never trains

    print(f"\n== 4/4 the results: {out}/", flush=True)
    for path in write_results(url, names, out):
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
