"""Can tuning recover what accumulation loses? The fair comparison, from a replication of each
accumulation value's best searched configuration.

* **Equal effort**: one search per accumulation value (``study.lib.experiment``), each with the
  same number of trials (``trials_per_accumulation`` counts them) and the same nuisance space;
  Hyperband prunes a trial only against trials of its own value (each value is its own study).
* **Paired by seed, scored on test**: the configurations were *selected* on validation accuracy, so
  the comparison is read on the test split; every configuration was re-run over the same fresh
  seeds, so tuned N minus tuned 1 is a paired difference per seed (n = seeds), at equal epochs and,
  where the accumulated configuration also trained N times the epochs, at matched optimizer steps.
  Validation accuracy is shown beside it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from analysis.lib.compare import best_so_far
from analysis.lib.document import Block, Figure, Heading, Paragraph, Table
from analysis.lib.figures import png, pyplot
from analysis.lib.importance import importance, importance_blocks, searched_params
from analysis.lib.overfitting import Run
from analysis.lib.stats import MeanCI, mean_ci
from study.lib import records
from study.lib.workers import settled

CONFIG_KEYS = ("lr_scaling", "base_lr", "lr", "weight_decay", "dropout", "drop_path", "optimizer", "epochs")
SCORES = ("test_accuracy", "val_accuracy")


def replicated_runs(replicate: optuna.Study) -> dict[int, dict[int, dict[str, Any]]]:
    """accumulation value -> seed -> the run: its config and its scores at each recorded epoch
    (the checkpoints; a run without them, at its last epoch)."""
    out: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for t in replicate.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cfg = records.config(t)
        if not cfg:
            continue
        at = {int(e): {k: m.get(k) for k in SCORES} for e, m in records.checkpoints(t).items()}
        at.setdefault(cfg["epochs"], {k: records.metric(t, k) for k in SCORES})
        out[cfg["accumulation_steps"]][cfg["seed"]] = {"config": cfg, "at": at}
    return dict(out)


def paired(
    base: dict[int, dict], acc: dict[int, dict], *, acc_epoch: int, base_epoch: int
) -> dict[str, MeanCI]:
    """Accumulated minus baseline, per seed both have, at those epochs: mean and CI over seeds."""
    seeds = sorted(
        s for s in base.keys() & acc.keys() if acc_epoch in acc[s]["at"] and base_epoch in base[s]["at"]
    )
    return {
        k: mean_ci([acc[s]["at"][acc_epoch][k] - base[s]["at"][base_epoch][k] for s in seeds]) for k in SCORES
    }


def _search_effort(searches: dict[int, optuna.Study], single_search: optuna.Study | None) -> dict[str, Any]:
    """Trials per accumulation value and how pruning compared them: one search per value, or an older
    single search over every value (its trials counted by their accumulation_steps param). A trial
    counts once it has settled (``study.lib.workers.settled``): an attempt lost when its worker
    stopped was retried, and its retry is the trial."""
    if searches or single_search is None:
        counts = {v: sum(settled(t) for t in s.get_trials(deepcopy=False)) for v, s in searches.items()}
        pruning = "within each accumulation value: one search study per value"
    else:
        counts = Counter(t.params["accumulation_steps"] for t in single_search.get_trials(deepcopy=False)
                         if "accumulation_steps" in t.params and settled(t))  # fmt: skip
        pruning = "across accumulation values: one search over all of them, trials compared at equal epochs"
    return {"trials_per_accumulation": {str(v): counts[v] for v in sorted(counts)}, "pruning": pruning}


def tuned(
    replicate: optuna.Study | None,
    searches: dict[int, optuna.Study] | None = None,
    single_search: optuna.Study | None = None,
) -> dict[str, Any] | None:
    """The tuned comparison (module docstring), as plain data for ``verdict.json``; None without
    replicated runs. ``searches``: one search per accumulation value; ``single_search``: an older
    design's one search over every value instead, whose trials per value are counted from their
    params and whose pruning compared trials across values."""
    runs = replicated_runs(replicate) if replicate is not None else {}
    if not runs:
        return None
    values = sorted(runs)
    out: dict[str, Any] = {
        "paired": True,
        "scored_on": "test split (the configurations were selected on validation accuracy)",
        "seeds": {str(v): sorted(runs[v]) for v in values},
        "configs": {str(v): {k: next(iter(runs[v].values()))["config"].get(k) for k in CONFIG_KEYS} for v in values},
        "per_value": {str(v): {k: mean_ci([r["at"][max(r["at"])][k] for r in runs[v].values()]) for k in SCORES}
                      for v in values},
        **_search_effort(searches or {}, single_search),
    }  # fmt: skip
    base = runs.get(1, {})
    out["difference"] = {}
    for n in (v for v in values if v != 1 and base):
        epoch = min(e for r in base.values() for e in r["at"])  # the searched epochs
        diff = {"equal_epochs": {"epochs": epoch, **paired(base, runs[n], acc_epoch=epoch, base_epoch=epoch)}}
        longest = max(e for r in runs[n].values() for e in r["at"])
        if longest == n * epoch:
            diff["matched_steps"] = {
                "epochs": longest,
                **paired(base, runs[n], acc_epoch=longest, base_epoch=epoch),
            }
        out["difference"][str(n)] = diff
    return out


def pruning_fidelity(grid_runs: list[Run], searches: dict[int, optuna.Study]) -> dict[str, Any] | None:
    """Would the pruner have kept the right trials? Hyperband stops a search trial at a rung, on its
    validation accuracy there. The grid's runs (``runs_from_study``: never pruned; the same data,
    protocol and epochs)
    say how well the ranking at each epoch where a search pruned predicts the ranking at the
    searches' last epoch: Spearman's rank correlation per accumulation value, n = grid runs. None
    when no search pruned a trial."""
    pruned = [t for s in searches.values() for t in s.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]  # fmt: skip
    finals = {c["epochs"] for s in searches.values() for t in s.get_trials(deepcopy=False) if (c := records.config(t))}
    if not pruned or len(finals) != 1:
        return None
    (final,) = finals
    pruned_at = Counter(max(t.intermediate_values) for t in pruned)
    curves: dict[int, list[dict[int, float]]] = defaultdict(list)
    for run in grid_runs:
        curves[run.accumulation_steps].append(dict(zip(run.epochs, run.history["val_accuracy"], strict=True)))
    correlation: dict[str, dict[str, dict[str, float]]] = {}
    for value in sorted(searches):
        correlation[str(value)] = {}
        for epoch in sorted(pruned_at):
            pairs = [(c[epoch], c[final]) for c in curves.get(value, []) if epoch in c and final in c]
            early, last = zip(*pairs, strict=True) if pairs else ((), ())
            ranked = len(set(early)) > 1 and len(set(last)) > 1  # a correlation needs no all-tied side
            rho = float(spearmanr(early, last).statistic) if len(pairs) >= 3 and ranked else math.nan
            correlation[str(value)][str(epoch)] = {"spearman": rho, "n": len(pairs)}
    finished = sum(len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
                   for s in searches.values())  # fmt: skip
    return {"final_epoch": final, "trials": finished,
            "pruned_at": {str(e): pruned_at[e] for e in sorted(pruned_at)}, "rank_correlation": correlation}  # fmt: skip


def _rho(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.2f}"


def fidelity_paragraph(fidelity: dict[str, Any]) -> Paragraph:
    """The pruner's evidence in words: where it stopped trials, and how well the grid's ranking there
    predicts the ranking at the end."""
    where = ", ".join(f"{n} at epoch {e}" for e, n in fidelity["pruned_at"].items())
    per_value = "; ".join(
        f"accumulation {v}: " + ", ".join(f"{_rho(c['spearman'])} at epoch {e} (n = {c['n']} runs)" for e, c in by_epoch.items())
        for v, by_epoch in fidelity["rank_correlation"].items()
    )  # fmt: skip
    return Paragraph(
        f"Pruning: Hyperband stopped {sum(fidelity['pruned_at'].values())} of the searches' {fidelity['trials']} "
        f"finished trials ({where}), on their validation accuracy there. How well that early ranking predicts the ranking "
        f"at epoch {fidelity['final_epoch']}, over the grid's runs, which are never pruned (Spearman's rank "
        f"correlation): {per_value}. The grid's runs differ in batch size and lr scaling, not in the searched "
        "regularization, so this is a guide to the pruner's evidence, not a measurement of it; a weak correlation "
        "means the search may have stopped configurations that would have ended best."
    )


def tuning_figure(searches: dict[int, optuna.Study], *, name: str = "tuning") -> Figure:
    """Each accumulation value's best validation accuracy so far against its trials and against
    the epochs it trained (pruned trials included): equal effort on both axes."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for value, study in sorted(searches.items()):
        curve = best_so_far(study)
        axes[0].step(
            range(1, len(curve) + 1), [c[2] for c in curve], where="post", label=f"accumulation {value}"
        )
        axes[1].step(
            [c[1] for c in curve], [c[2] for c in curve], where="post", label=f"accumulation {value}"
        )
    for ax, label in zip(axes, ("trials", "epochs trained (cumulative)"), strict=True):
        ax.set_xlabel(label)
        ax.set_ylabel("best validation accuracy so far")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("tuning effort per accumulation value")
    return Figure(
        name,
        "Best validation accuracy so far per accumulation value, against trials and compute",
        png(fig, dpi=100),
    )


def importance_per_stratum(
    searches: dict[int, optuna.Study], *, seed: int = 0, resamples: int = 40
) -> list[Block]:
    """Which nuisance parameters matter within each accumulation value: the objective's importance
    over completed trials and at a Hyperband rung, or why it is not shown (the trials it needs)."""
    blocks: list[Block] = []
    for value, study in sorted(searches.items()):
        params, _ = searched_params(study)
        results = importance(study, params, seed=seed, resamples=resamples) if params else []
        objective = [r for r in results[:1]] + [r for r in results if " at epoch " in r.target]
        section = importance_blocks(objective, params, seed, resamples)
        blocks.append(Heading(f"Parameter importance within accumulation {value} ({study.study_name})", 3))
        blocks += [b for b in section[1:] if not (isinstance(b, Heading) and b.level == 2)]
    return blocks


def tuning_blocks(tuning: dict[str, Any], searches: dict[int, optuna.Study]) -> list[Block]:
    """The section: the searches' effort and their pruner's evidence, the replicated configurations,
    the paired differences."""
    rows = [[v, ", ".join(f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}" for k, x in tuning["configs"][v].items()),
             *(f"{tuning['per_value'][v][k].format(3, signed=False)}" for k in SCORES), str(len(tuning["seeds"][v]))]
            for v in tuning["configs"]]  # fmt: skip
    blocks: list[Block] = [
        Heading("Can tuning recover it? The best searched configurations, paired by seed, scored on test"),
        Paragraph("Trials searched per accumulation value: "
                  + (", ".join(f"{v}: {n}" for v, n in tuning["trials_per_accumulation"].items()) or "-")
                  + f"; pruning {tuning['pruning']}. The best configuration of each accumulation value, re-run without "
                  "pruning over the same fresh seeds:"),
        Table(["accumulation", "configuration", "test acc", "val acc", "seeds"], rows),
        *([fidelity_paragraph(tuning["pruning_fidelity"])] if tuning.get("pruning_fidelity") else []),
    ]  # fmt: skip
    for n, diff in tuning["difference"].items():
        for where, d in diff.items():
            what = "at equal epochs" if where == "equal_epochs" else "at matched optimizer steps"
            blocks.append(Paragraph(f"Tuned accumulation {n} minus tuned accumulation 1, {what} ({d['epochs']} epochs "
                                    f"for {n}): test accuracy {d['test_accuracy'].sentence()}, validation accuracy "
                                    f"{d['val_accuracy'].sentence()} (paired by seed)."))  # fmt: skip
    if searches:
        blocks.append(tuning_figure(searches))
        blocks += importance_per_stratum(searches)
    return blocks


def searches_of(studies: dict[str, optuna.Study]) -> dict[int, optuna.Study]:
    """accumulation value -> its search study, from the roles ``search-xN``."""
    return {
        int(role.removeprefix("search-x")): s for role, s in studies.items() if role.startswith("search-x")
    }
