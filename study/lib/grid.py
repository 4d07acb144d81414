"""Study designs as data: the paper's fixed grid at each budget, built here and run by the commands.

The paper protocol: Adam, constant learning rate, no weight decay, no dropout or drop-path, no
learning-rate scaling; micro-batch in {32, 64, 128}, accumulation in {1, N},
epochs in {10, 20, 50}. With a constant learning rate a 50-epoch run passes through its 10- and
20-epoch points unchanged, so each (batch, accumulation) pair is **one** run that records all
three points: the 18 grid points of a dataset come from 6 runs (times the seeds).

Beside the paper's runs a grid can hold:

* **learning-rate arms** (``arms``): the accumulated runs scale the learning rate by the
  accumulation factor (N for ``linear``, sqrt N for ``sqrt``) relative to the micro-batch run, so an
  accumulation-1 run has the base learning rate under every rule and is run once, shared by all arms;
* **step-matched runs** (``step_matched``: the arms whose accumulated runs train N times the epochs,
  so that they make as many optimizer steps as their baseline and can reach the same point of the
  overfitting curve). A constant learning rate makes the equal-epoch points part of the same run;
  such a run costs N times an equal-epoch one;
* **twins** (``twins``): for each accumulated micro-batch b, the run (b N x 1) without
  accumulation, which is the same update as (b x N, unscaled): what accumulation itself changes.
  The twin of 32 x 4 is the micro-batch-128 baseline, already in the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from study.lib import records
from study.lib.config import LR_SCALING_EXPONENTS, TrainConfig, family_of
from study.lib.session import Plan
from study.lib.storage import mask

BATCH_SIZES = (32, 64, 128)
EPOCH_POINTS = (10, 20, 50)
# The paper protocol: everything but batch, accumulation and epochs is fixed.
PAPER_PROTOCOL: dict[str, Any] = {
    "protocol": "paper",
    "optimizer": "adam",
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "lr_scaling": "none",
    "weight_decay": 0.0,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "drop_path": 0.0,
    "label_smoothing": 0.0,
}


@dataclass(frozen=True)
class GridBudget:
    """The scale of a grid at one budget for one dataset.

    Args:
        epoch_points: The paper's 10/20/50 or the same 1:2:5 ratio.
        model: The model preset.
        train_subset: Training images (None: the whole training split).
        note: Why this scale, in a few words (printed and stored with the study).
        settings: Other TrainConfig values of every run (validation size, train-eval size,
            evaluation schedule).
        step_matched: Arms whose accumulated runs train N times the epochs by default.
        step_matched_batches: The micro-batches whose accumulated runs are step-matched (None: all).
        twins: Whether the grid has the (bN x 1) twins by default.
    """

    epoch_points: tuple[int, int, int]
    model: str
    train_subset: int | None
    note: str
    settings: dict[str, Any] = field(default_factory=dict)
    step_matched: tuple[str, ...] = ()
    step_matched_batches: tuple[int, ...] | None = None
    twins: bool = False


GRID_BUDGETS: dict[str, GridBudget] = {
    # 1,024 images: a multiple of the largest effective batch (128 x 4), so that a step-matched run
    # makes exactly its baseline's optimizer steps (no incomplete batch is dropped)
    "quick": GridBudget((1, 2, 5), "swin-nano", 1024, "the paper's 10, 20, 50 divided by 10"),
    # Fashion-MNIST, chosen with benchmarks.learnability: swin-nano on 20,480 images reaches 0.85
    # validation accuracy by epoch 10 and is within 0.02 of it by epoch 6. 20,480 images are a
    # multiple of 128 x 4 x 40: every epoch of an accumulation-4 run that is a multiple of 4 has an
    # exactly step-matched epoch of the accumulation-1 run (epochs 4, 8, 12 <-> 1, 2, 3).
    "cpu": GridBudget(
        (3, 6, 15), "swin-nano", 20_480, "the paper's 1:2:5 ratio at CPU scale", {"train_eval_size": 5000}
    ),
    "standard": GridBudget(EPOCH_POINTS, "swin-micro", None, "the paper's epochs, full data"),
}
# Budgets that differ per dataset. CIFAR-10 at CPU scale: few images trained long, so that the
# baseline clearly overfits (benchmarks.overfitting; docs/design.md, "The CIFAR-10 budget").
DATASET_GRID_BUDGETS: dict[tuple[str, str], GridBudget] = {
    ("cifar10", "cpu"): GridBudget(
        (40, 80, 200),
        "swin-nano",
        2560,
        "few images, long training: the baseline overfits by the last point",
        {"val_size": 5000, "train_eval_size": 5000, "eval_every": 5},
        step_matched=("none",),
        # micro-batch 32 only: its baseline makes the most steps (the others end earlier on the
        # curve), and a step-matched run costs 4 times an equal-epoch one (docs/design.md, its cost)
        step_matched_batches=(32,),
        twins=True,
    ),
}


def grid_budget(budget: str, dataset: str) -> GridBudget:
    """The grid's scale for ``dataset`` at ``budget``."""
    return DATASET_GRID_BUDGETS.get((dataset, budget), GRID_BUDGETS[budget])


def grid_runs(
    *,
    accumulation: int,
    seeds: int,
    arms: tuple[str, ...],
    epochs: int,
    step_matched: tuple[str, ...] = (),
    step_matched_batches: tuple[int, ...] | None = None,
    twins: bool = False,
    batches: tuple[int, ...] = BATCH_SIZES,
) -> list[dict[str, Any]]:
    """Every run of a grid, as the parameters of its trial: per seed and micro-batch (of
    ``batches``, the paper's by default) the accumulation-1 run (lr scaling "none", the same lr
    under every rule), then the accumulated run of each arm (N x ``epochs`` in the ``step_matched``
    arms, for the ``step_matched_batches`` micro-batches, all when None); then the (bN x 1) twins
    missing from the micro-batches."""
    runs = []
    for seed in range(seeds):
        for batch in batches:
            stretched = step_matched if step_matched_batches is None or batch in step_matched_batches else ()
            runs.append(_run(batch, 1, "none", seed, epochs))
            runs += [
                _run(batch, accumulation, arm, seed, epochs * (accumulation if arm in stretched else 1))
                for arm in arms
            ]
        if twins:
            runs += [_run(b * accumulation, 1, "none", seed, epochs) for b in twin_batches(accumulation, batches)]
    return runs


def twin_batches(accumulation: int, batches: tuple[int, ...] = BATCH_SIZES) -> list[int]:
    """Micro-batches whose (b N x 1) twin is not already a micro-batch of the grid."""
    return [b for b in batches if b * accumulation not in batches]


def _run(batch: int, accumulation: int, arm: str, seed: int, epochs: int) -> dict[str, Any]:
    return {"batch_size": batch, "accumulation_steps": accumulation, "lr_scaling": arm, "seed": seed,
            "epochs": epochs}  # fmt: skip


@dataclass(frozen=True)
class GridDesign:
    """The grid of one command: fixed settings (the paper protocol at a budget), the parameter
    choices (the GridSampler's grid; only the combinations of ``runs`` are run), the epoch
    points, the runs and a description for the study."""

    settings: dict[str, Any]
    choices: dict[str, tuple[Any, ...]]
    epoch_points: tuple[int, ...]
    runs: list[dict[str, Any]]
    description: str

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The run's parameters (an enqueued run's fixed values), recorded as the trial's params."""
        return {name: trial.suggest_categorical(name, list(values)) for name, values in self.choices.items()}

    def config(self, params: dict[str, Any], *, pool: int | None = None, **run: Any) -> TrainConfig:
        """A grid run's config. The learning rate is scaled relative to the micro-batch run
        (reference batch = micro-batch), so lr = base_lr x accumulation_steps ** p for the run's
        rule. A step-matched run evaluates N times less often per epoch: as often per step."""
        from study.lib.objective import build_config  # the objective imports torch; a design need not

        stretch = params.get("epochs", self.settings["epochs"]) // self.settings["epochs"]
        every = self.settings.get("eval_every", 1) * stretch
        settings = {**self.settings, "eval_every": every}
        return build_config(
            settings, {**params, "reference_batch_size": params["batch_size"]}, pool=pool, **run
        )


def grid_design(
    *,
    dataset: str,
    accumulation: int,
    seeds: int,
    budget: str,
    base_lr: float,
    arms: tuple[str, ...] = ("none",),
    step_matched: tuple[str, ...] | None = None,
    twins: bool | None = None,
    noise_scale: bool = False,
    family: str = "swin",
    batches: tuple[int, ...] = BATCH_SIZES,
) -> GridDesign:
    """The grid: batch_size x accumulation_steps x lr_scaling x seed (x epochs, for step-matched
    runs) at the budget's scale for ``dataset``; ``step_matched`` and ``twins`` default to the
    budget's; ``noise_scale`` makes every run measure the gradient noise scale (study.lib.noise);
    ``family`` takes the budget's preset size in another model family (the same design);
    ``batches``: the micro-batches, a subset of the paper's (a reduced design)."""
    from study.lib.model import family_preset  # the model imports torch; a design need not

    scale = grid_budget(budget, dataset)
    step_matched = scale.step_matched if step_matched is None else step_matched
    step_matched = tuple(a for a in step_matched if a in arms)
    twins = scale.twins if twins is None else twins
    points = scale.epoch_points
    epochs = max(points)
    settings = {
        **PAPER_PROTOCOL,
        **scale.settings,
        "base_lr": base_lr,
        "epochs": epochs,
        "model": family_preset(family, scale.model),
    }
    if noise_scale:
        settings["noise_scale"] = True
    del settings["lr_scaling"]  # a grid parameter: the arm of an accumulated run
    if scale.train_subset is not None:
        settings["train_subset"] = scale.train_subset
    runs = grid_runs(
        accumulation=accumulation,
        seeds=seeds,
        arms=arms,
        epochs=epochs,
        step_matched=step_matched,
        step_matched_batches=scale.step_matched_batches,
        twins=twins,
        batches=batches,
    )
    choices = {
        "batch_size": tuple(sorted({r["batch_size"] for r in runs} | set(BATCH_SIZES))),
        "accumulation_steps": (1, accumulation),
        "lr_scaling": tuple(LR_SCALING_EXPONENTS),
        "seed": tuple(range(seeds)),
        "epochs": tuple(sorted({epochs, *(epochs * accumulation for _ in step_matched)})),
    }
    scaled = [a for a in arms if a != "none"]
    description = (
        f"The paper's fixed grid: batch {batches} x accumulation (1, {accumulation}) x epochs {points}, "
        f"{seeds} seed(s); Adam, constant lr {base_lr:g}, no regularization, "
        + (f"no lr scaling, and arms whose accumulated runs scale the lr ({', '.join(scaled)})" if scaled else "no lr scaling")
        + (f"; accumulated runs of {', '.join(step_matched)}"
           + ("" if scale.step_matched_batches is None else f" at micro-batch {', '.join(map(str, scale.step_matched_batches))}")
           + f" train {accumulation} x {epochs} epochs (step-matched)" if step_matched else "")
        + ("; with the (bN x 1) twins of the accumulated micro-batches" if twins else "")
        + "."
    )  # fmt: skip
    return GridDesign(settings, choices, points, runs, description)


def grid_study_name(dataset: str, budget: str, family: str = "swin") -> str:
    """The default name of a grid: ``DATASET-grid-BUDGET``, with ``-FAMILY`` for a family other than
    the Swin (each family's grid is its own study: they share nothing)."""
    return f"{dataset}-grid-{budget}" + ("" if family == "swin" else f"-{family}")


def checkpoint_epochs(design: GridDesign) -> tuple[int, ...]:
    """The epochs recorded whole: the epoch points and, for step-matched runs, N times each."""
    stretches = {e // max(design.epoch_points) for e in design.choices["epochs"]}
    return tuple(sorted({p * k for p in design.epoch_points for k in stretches}))


def grid_plan(design: GridDesign, args: Any, raw: Any, *, run: dict[str, Any], url: str, note: str,
              arms: tuple[str, ...], store: Any = None) -> Plan:  # fmt: skip
    """The plan of ``python -m study.grid``: the design's runs the study lacks, one trial each
    (GridSampler over the design's choices, no pruning). Every run's config is built first, so a
    run the dataset cannot hold (an effective batch larger than its images) fails before the storage
    is touched (ValueError)."""
    from study.lib.objective import Objective  # the objective imports torch; a design need not

    pool = len(raw.train_labels)
    for params in design.runs:
        design.config(params, pool=pool, **run)
    study_name = args.study_name or grid_study_name(args.dataset, args.budget, family_of(design.settings["model"]))
    first = design.config(design.runs[0], pool=pool, **run)

    def header(study, existed: bool, todo: int) -> str:
        return (f"grid {study_name} ({'resumed' if existed else 'new'}) on {mask(url)}\n"
                f"dataset {args.dataset}, budget {args.budget} ({note}): epoch points "
                f"{', '.join(map(str, design.epoch_points))} ({grid_budget(args.budget, args.dataset).note}), "
                f"model {first.model}, {first.num_train if first.train_subset is None else first.train_subset} "
                f"training images, Adam lr {args.base_lr:g}\n{design.description}\n"
                f"{todo} of {len(design.runs)} runs to do" + (f", {args.workers} workers" if args.workers > 1 else ""))  # fmt: skip

    return Plan(
        study_name=study_name,
        identity={records.DATASET: args.dataset, records.SPACE: "grid", records.BUDGET: args.budget,
                  records.KIND: records.GRID, records.ACCUMULATION: args.accumulation_steps},
        sampler=optuna.samplers.GridSampler({k: list(v) for k, v in design.choices.items()}, seed=0),
        pruner=optuna.pruners.NopPruner(),
        objective=Objective(lambda trial: design.config(design.suggest(trial), pool=pool, **run), raw, store=store,
                            points=checkpoint_epochs(design)),
        runs=design.runs,
        run_defaults={"epochs": max(design.epoch_points)},  # grids made before step-matched runs
        prepare=lambda study, existed: records.describe_grid(study, epoch_points=design.epoch_points, arms=arms,
                                                             description=design.description, new=not existed),
        header=header,
        worker_flags=lambda share: ["--study-name", study_name, "--budget", args.budget,
                                    "--models", family_of(design.settings["model"])],
        footer=f"verdict: python -m analysis.overfitting --study {study_name}"
        + ("" if args.storage is None else f" --storage '{mask(url)}'"),
    )  # fmt: skip
