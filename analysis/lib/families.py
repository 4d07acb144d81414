"""Is it the Swin? The same grid for each model family, side by side.

``study.grid --models swin,vit,bn-cnn`` runs one grid per family (``study.lib.grid.grid_study_name``),
of the same design and sharing nothing. Read here:

* **the verdict per family** (``analysis.lib.overfitting.analyse`` on each family's grid);
* **the family contrast**: a control family's accumulation effect at matched training progress
  minus the Swin's on the same micro-batches (a control may run a reduced design: the Swin's grid
  is then read on the control's micro-batches only), per lr-scaling arm, at equal training loss (validation loss) and at the best
  epoch (best validation loss, and the rise after it). The families' runs are independent (a seed
  index does not pair runs of different models), so the interval is Welch's over the two families'
  per-seed effects; n is the smaller number of seeds;
* **(b x N) against (bN x 1)** per family: the same update with LayerNorm (swin, vit: differences
  are round-off), not with BatchNorm (bn-cnn: each micro-batch is normalized with its own
  statistics), where the signed validation-accuracy difference says whether the micro-batches'
  statistics help or hurt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from analysis.lib.document import Block, Heading, Paragraph, Table
from analysis.lib.overfitting import ArmAnalysis, analyse, deciding_loss_row, reason, runs_from_study, twins
from analysis.lib.stats import MeanCI, difference

REFERENCE = "swin"
# (where, metric) of the effects contrasted between families
CONTRASTED = (("at equal training loss", "val_loss"), ("at the best epoch", "val_loss"), ("at the best epoch", "rise"))


@dataclass
class Contrast:
    """One effect of accumulation in a control family against the Swin's."""

    family: str
    arm: str
    where: str
    metric: str
    swin: MeanCI
    other: MeanCI
    difference: MeanCI  # other - swin
    micro_batches: list[int]  # the cells compared: the control's micro-batches


def effects(a: ArmAnalysis) -> dict[tuple[str, str], MeanCI]:
    """An arm's effects at matched training progress, by (where, metric)."""
    out = {("at the best epoch", m): a.at_minimum.effects[m] for m in ("val_loss", "rise")}
    if (deciding := deciding_loss_row(a.at_train_loss, len(a.seeds))) is not None:
        out[("at equal training loss", "val_loss")] = deciding.effects["val_loss"]
    return out


def contrasts(
    analyses: dict[str, list[ArmAnalysis]], references: dict[str, list[ArmAnalysis]] | None = None
) -> list[Contrast]:
    """Every control family's effects against the Swin's, arm by arm, where both exist.
    ``references``: per control family, the Swin's analysis on that family's micro-batches (a
    reduced design is compared with the same cells of the Swin's grid); the Swin's whole grid
    where none is given."""
    references = references or {}
    rows = []
    for family, arms in analyses.items():
        if family == REFERENCE:
            continue
        reference = {a.arm: effects(a) for a in references.get(family, analyses.get(REFERENCE, []))}
        for a in arms:
            mine, ref = effects(a), reference.get(a.arm, {})
            for where, metric in CONTRASTED:
                key = (where, metric)
                if key in mine and key in ref:
                    rows.append(Contrast(family, a.arm, where, metric, ref[key], mine[key],
                                         difference(ref[key], mine[key]), a.batch_sizes))  # fmt: skip
    return rows


def swin_on_the_same_cells(
    grids: dict[str, optuna.Study], analyses: dict[str, list[ArmAnalysis]]
) -> dict[str, list[ArmAnalysis]]:
    """Per control family whose design is smaller than the Swin's (fewer micro-batches, or shorter
    runs: no step-matched run): the Swin's grid analysed on that family's micro-batches, each run
    read up to the family's longest run, so that the contrast compares like with like."""
    if REFERENCE not in grids:
        return {}
    swin, swin_longest = {b for a in analyses.get(REFERENCE, []) for b in a.batch_sizes}, _longest(grids[REFERENCE])
    out = {}
    for family, arms in analyses.items():
        mine, longest = sorted({b for a in arms for b in a.batch_sizes}), _longest(grids[family])
        if family != REFERENCE and mine and (set(mine) != swin or longest < swin_longest):
            out[family] = analyse(grids[REFERENCE], batch_sizes=mine, stop_at=longest)
    return out


def _longest(grid: optuna.Study) -> int:
    """The last evaluated epoch of a grid's longest run."""
    return max((r.last_epoch for r in runs_from_study(grid)), default=0)


def family_summary(
    grids: dict[str, optuna.Study], analysed: dict[str, list[ArmAnalysis]] | None = None
) -> dict[str, Any]:
    """verdict.json's ``families``: per family its arms' verdicts and its equivalence table, and the
    contrast with the Swin. ``analysed``: families whose grids the caller has already analysed."""
    analysed = analysed or {}
    analyses = {family: analysed.get(family) or analyse(grid) for family, grid in grids.items()}
    return {
        "per_family": {
            family: {
                "arms": [{"arm": a.arm, "verdict": a.verdict, "seeds": a.seeds, "reason": reason(a)} for a in arms],
                "equivalence": [t.__dict__ for t in twins(runs_from_study(grids[family]))],
            }
            for family, arms in analyses.items()
        },
        "contrast": [c.__dict__ for c in contrasts(analyses, swin_on_the_same_cells(grids, analyses))],
    }


def family_blocks(summary: dict[str, Any]) -> list[Block]:
    """The report's section: verdicts per family, the contrast, and (b x N) against (bN x 1)."""
    per = summary["per_family"]
    verdicts = [[family, a["arm"], a["verdict"], str(len(a["seeds"]))] for family, f in per.items() for a in f["arms"]]
    contrast = [[c["family"], c["arm"], ", ".join(map(str, c["micro_batches"])), f"{c['metric']} {c['where']}",
                 c["swin"].format(), c["other"].format(), c["difference"].format()] for c in summary["contrast"]]  # fmt: skip
    equal = [[family, f"{t['micro_batch']} x {t['accumulation_steps']} vs {t['micro_batch'] * t['accumulation_steps']} x 1",
              f"{t['max_train_loss_difference']:.2e}", str(t["identical_through_epoch"]),
              t["val_accuracy_difference"].format(4)] for family, f in per.items() for t in f["equivalence"]]  # fmt: skip
    return [
        Heading("Is it the Swin? The same grid per model family"),
        Paragraph("Each family ran the same design in its own grid: vit is a plain ViT (global attention, no windows, "
                  "no shift), bn-cnn a small BatchNorm ResNet, each near the Swin preset's size and cost."),
        Table(["family", "arm", "verdict", "seeds"], verdicts),
        Paragraph("The family contrast: each effect of accumulation (accumulated minus baseline, at matched "
                  "training progress) in the control family minus the Swin's, with a Welch 95% interval over "
                  "the two families' seeds, on the control's micro-batches (the Swin's grid read on the same cells). "
                  "An interval that excludes 0 means the effect depends on the model."),
        Table(["family", "arm", "micro-batches", "effect", "swin", "family", "family - swin"], contrast),
        Paragraph("(b x N) against (bN x 1): the same update with LayerNorm, so the differences are round-off; with "
                  "BatchNorm each micro-batch is normalized with its own statistics, so they differ. The signed "
                  "difference in validation accuracy (b x N minus bN x 1, last common epoch, paired by seed) says "
                  "whether the micro-batches' statistics help (> 0) or hurt."),
        Table(["family", "runs", "largest train loss difference", "train losses within 1e-4 through epoch",
               "val acc difference"], equal),  # fmt: skip
    ]
