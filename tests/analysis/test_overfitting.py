"""The overfitting verdict on synthetic studies whose answer is known by construction."""

import json
import math
import random
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from analysis.overfitting import NO_DIFFERENCE, OVERFITTING, UNDER_TRAINING, analyse, collect

optuna.logging.set_verbosity(optuna.logging.WARNING)
ACCUMULATION = (1, 2, 4, 8)
STEPS_AT_1 = 400  # optimizer steps of accumulation 1 after 10 epochs


def add_run(study, *, accumulation, seed, train_acc, val_acc, epochs=10, batch=32, rule="none"):
    steps = STEPS_AT_1 // accumulation
    per_epoch = steps // epochs
    # a history that ends at the final values (used by the matched-steps comparison)
    history = {
        "train_accuracy": [train_acc * (e + 1) / epochs for e in range(epochs)],
        "val_accuracy": [val_acc * (e + 1) / epochs for e in range(epochs)],
        "optimizer_steps": [per_epoch * (e + 1) for e in range(epochs)],
    }
    history["generalization_gap"] = [
        t - v for t, v in zip(history["train_accuracy"], history["val_accuracy"], strict=True)
    ]
    config = {
        "dataset": "digits",
        "lr_scaling": rule,
        "batch_size": batch,
        "accumulation_steps": accumulation,
        "seed": seed,
        "epochs": epochs,
    }
    study.add_trial(
        create_trial(
            params={"accumulation_steps": accumulation},
            distributions={"accumulation_steps": CategoricalDistribution(ACCUMULATION)},
            value=val_acc,
            user_attrs={
                "config": config,
                "train_accuracy": train_acc,
                "val_accuracy": val_acc,
                "generalization_gap": train_acc - val_acc,
                "optimizer_steps": steps,
                "history": history,
            },
        )
    )


def synthetic(kind, storage=None, name=None, seeds=5):
    study = optuna.create_study(direction="maximize", storage=storage, study_name=name)
    study.set_user_attr("kind", "grid")  # every seed counts, as in a grid study
    rng = random.Random(kind)
    for n in ACCUMULATION:
        d = math.log2(n)
        for seed in range(seeds):
            noise = lambda: rng.gauss(0, 0.004)  # noqa: E731
            if kind == OVERFITTING:  # train accuracy stays, validation falls: the gap grows
                train, val = 0.99 + noise(), 0.95 - 0.03 * d + noise()
            elif kind == UNDER_TRAINING:  # both fall together: the gap stays
                train = 0.97 - 0.04 * d + noise()
                val = train - 0.02 + noise()
            else:
                train, val = 0.97 + noise(), 0.95 + noise()
            add_run(study, accumulation=n, seed=seed, train_acc=train, val_acc=val)
    return study


@pytest.mark.parametrize("kind", [OVERFITTING, UNDER_TRAINING, NO_DIFFERENCE])
def test_verdict_matches_the_construction(kind):
    (analysis,) = analyse(collect([synthetic(kind)], top_k=5))
    assert analysis["verdict"] == kind, analysis["reason"]
    gap, train = analysis["tests"]["gap_slope"], analysis["tests"]["train_accuracy_slope"]
    if kind == OVERFITTING:
        assert gap["low"] > 0 and gap["estimate"] == pytest.approx(0.03, abs=0.006)
    elif kind == UNDER_TRAINING:
        assert train["high"] < 0 and train["estimate"] == pytest.approx(-0.04, abs=0.006)
        assert gap["low"] <= 0 <= gap["high"]
    else:
        assert gap["low"] <= 0 <= gap["high"] and train["low"] <= 0 <= train["high"]
    assert "per doubling of accumulation" in analysis["reason"]


def test_groups_have_means_and_confidence_intervals():
    (analysis,) = analyse(collect([synthetic(UNDER_TRAINING)], top_k=5))
    rows = {r["accumulation_steps"]: r for r in analysis["groups"]}
    assert sorted(rows) == list(ACCUMULATION) and all(r["n"] == 5 for r in rows.values())
    first, last = rows[1]["train_accuracy"], rows[8]["train_accuracy"]
    assert first["low"] < first["mean"] < first["high"]
    assert last["mean"] == pytest.approx(0.97 - 0.12, abs=0.01)
    assert rows[8]["optimizer_steps"] == STEPS_AT_1 // 8


def test_matched_steps_compare_against_the_baseline_history():
    (analysis,) = analyse(collect([synthetic(UNDER_TRAINING)], top_k=5))
    matched = {r["accumulation_steps"]: r for r in analysis["matched_steps"]}
    assert sorted(matched) == [2, 4, 8]
    # accumulation 4 makes 100 steps in 10 epochs: accumulation 1 reached that after 2.5 epochs
    assert matched[4]["optimizer_steps"] == 100
    assert matched[4]["baseline_epoch"] in (2, 3)


def test_a_search_uses_the_top_k_trials_per_accumulation():
    study = synthetic(NO_DIFFERENCE, seeds=6)
    study.set_user_attr("kind", "search")
    (analysis,) = analyse(collect([study], top_k=2))
    assert all(r["n"] == 2 for r in analysis["groups"])


def test_lr_scaling_rules_are_analysed_separately():
    study = synthetic(UNDER_TRAINING)
    for n in ACCUMULATION:
        for seed in range(3):
            add_run(study, accumulation=n, seed=seed, train_acc=0.97, val_acc=0.95, rule="linear")
    analyses = analyse(collect([study], top_k=5))
    verdicts = {a["lr_scaling"]: a["verdict"] for a in analyses}
    assert verdicts == {"none": UNDER_TRAINING, "linear": NO_DIFFERENCE}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "analysis.overfitting", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize("fmt", ["table", "markdown", "json", "csv"])
def test_cli_formats(tmp_path, fmt):
    url = f"sqlite:///{tmp_path / 's.db'}"
    synthetic(OVERFITTING, storage=url, name="over")
    proc = _cli("--study", "over", "--storage", url, "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    if fmt == "json":
        assert json.loads(out)["analyses"][0]["verdict"] == OVERFITTING
    elif fmt == "csv":
        lines = out.strip().splitlines()
        assert lines[0].startswith("dataset,lr_scaling,batch_size") and len(lines) == 1 + len(ACCUMULATION)
        assert lines[1].endswith(",overfitting")
    else:
        assert "verdict" in out.lower() and OVERFITTING in out and "matched optimizer steps" in out


def test_cli_bad_input(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    synthetic(NO_DIFFERENCE, storage=url, name="flat")
    cases = [
        (["--study", "nope", "--storage", url], "no study 'nope' in sqlite:///"),
        (["--study", "flat", "--storage", f"sqlite:///{tmp_path / 'missing.db'}"], "no database at"),
        (["--study", "flat", "--storage", "not a url"], "malformed storage URL"),
    ]
    for args, message in cases:
        proc = _cli(*args)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "missing.db").exists()
