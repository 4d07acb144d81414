"""The plan of ``python -m study.experiment``: its studies and the commands that fill them.

One experiment answers the project's question for a dataset at a budget, from four kinds of study:

1. **the grid** (``study.grid``): the paper's fixed grid with its lr-scaling arms over seeds, the
   step-matched runs and twins where the budget has them, measuring the gradient noise scale;
   the designed runs every verdict is drawn from;
2. **the tuning searches** (``study.run --fix accumulation_steps=N --fix lr_scaling=none``): one
   study per accumulation value (1 and N), each with the same number of trials, the same sampler
   seed and the same nuisance space (base lr, dropout, drop-path, weight decay; the searched base
   lr is the lr itself, since the scaling rule only multiplies it). Tuning effort is equal by
   construction, and Hyperband prunes a trial only against trials of its own accumulation value,
   which made as many optimizer steps per epoch;
3. **the replication** (``study.replicate``): the best configuration of each search re-run
   without pruning over the same fresh seeds, so that tuned N and tuned 1 are **paired by seed**;
   at a budget with step-matched runs the accumulated configuration trains N times the epochs too;
4. **the results** (``analysis.results``): ``results/DATASET-BUDGET/``.

The search, the replication and the grid share one optimizer: the space's AdamW; the grid's Adam
without weight decay is the same update, bit for bit (``tests/test_train.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from study.lib.config import FAMILIES
from study.lib.grid import grid_budget, grid_study_name

SPACE = "overfitting"  # the search space of the experiment


def study_names(dataset: str, budget: str, accumulation: int = 4) -> dict[str, str]:
    """Role -> study name: ``grid``, ``search-x1``, ``search-xN``, ``replicate`` and the control
    families' grids ``grid-vit`` and ``grid-bn-cnn``, named so that each command's default would
    find them again."""
    search = f"{dataset}-{SPACE}-{budget}"
    return {
        "grid": grid_study_name(dataset, budget),
        **{f"grid-{f}": grid_study_name(dataset, budget, f) for f in FAMILIES if f != "swin"},
        **{f"search-x{n}": f"{search}-accumulation_steps={n}" for n in (1, accumulation)},
        "replicate": f"{search}-tuned",
    }


@dataclass(frozen=True)
class Step:
    """One command of the experiment: ``python -m module args``."""

    title: str
    module: str
    args: list[str]


def steps(
    *,
    dataset: str,
    budget: str,
    accumulation: int,
    seeds: int,
    arms: list[str],
    n_trials: dict[int, int],
    replicate_seeds: int,
    workers: int,
    device: str = "auto",
    data_dir: str = "data",
    quiet: bool = False,
    controls: tuple[str, ...] = (),
    control_arms: tuple[str, ...] = ("none",),
    control_batches: tuple[str, ...] = ("32",),
    control_step_matched: tuple[str, ...] = (),
) -> list[Step]:
    """The commands, in order. ``n_trials`` maps each accumulation value to the search trials it
    still lacks (0: its search is done and is skipped). ``controls``: model families other than the
    Swin, each given the grid of the same design with the ``control_arms`` at the micro-batches
    ``control_batches`` (the search is the Swin's), after the Swin's replication; the arms
    ``control_step_matched`` train N times the epochs there (none by default)."""
    names = study_names(dataset, budget, accumulation)
    machine = ["--device", device, "--data-dir", data_dir] + (["--quiet"] if quiet else [])
    common = ["--dataset", dataset, "--budget", budget, *machine]
    out = [Step("1/4 the grid", "study.grid",
                [*common, "--seeds", str(seeds), "--accumulation-steps", str(accumulation), "--lr-scaling",
                 ",".join(arms), "--study-name", names["grid"], "--workers", str(workers), "--noise-scale"])]  # fmt: skip
    for n, remaining in n_trials.items():
        if remaining > 0:
            out.append(Step(f"2/4 the tuning search of accumulation {n} ({remaining} trials to run)", "study.run",
                            [*common, "--space", SPACE, "--fix", f"accumulation_steps={n}", "--fix", "lr_scaling=none",
                             "--n-trials", str(remaining), "--study-name", names[f"search-x{n}"],
                             "--workers", str(workers)]))  # fmt: skip
    studies = [arg for n in n_trials for arg in ("--study", names[f"search-x{n}"])]
    stretch = ["--step-matched"] if grid_budget(budget, dataset).step_matched else []
    out.append(Step("3/4 the replication of each search's best configuration, paired by seed, without pruning",
                    "study.replicate",
                    [*studies, "--new-study", names["replicate"], "--top", "1", "--seeds", str(replicate_seeds),
                     *stretch, "--workers", str(workers), *machine]))  # fmt: skip
    for family in controls:
        out.append(Step(f"3/4 the grid of the {family} control (arms {', '.join(control_arms)})", "study.grid",
                        [*common, "--seeds", str(seeds), "--accumulation-steps", str(accumulation), "--lr-scaling",
                         ",".join(control_arms), "--batch-sizes", ",".join(control_batches),
                         "--step-matched", ",".join(control_step_matched), "--models", family, "--study-name", names[f"grid-{family}"],
                         "--workers", str(workers)]))  # fmt: skip
    return out
