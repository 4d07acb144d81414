"""The noise-scale analysis (analysis.lib.noise_scale, python -m analysis.noise_scale) on synthetic grids."""

import json
import math
from dataclasses import replace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from analysis.lib.noise_scale import (
    configuration_table,
    noise_runs,
    per_epoch,
    position,
    sentence,
    summarize,
    table_rows,
)
from tests.conftest import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS = 5


def b_true(epoch: int) -> float:
    """The synthetic B_simple: 20 at epoch 1, doubling every epoch (it grows as training goes on)."""
    return 20.0 * 2 ** (epoch - 1)


def add_run(study, *, batch, accumulation, seed, noise=True, scale=1.0, spread=1.0):
    """A grid run whose per-epoch estimates give exactly b_true x ``spread``; ``scale`` multiplies
    both estimates (a run with larger gradients), which leaves its ratio alone."""
    params = {"batch_size": batch, "accumulation_steps": accumulation, "lr_scaling": "none", "seed": seed}
    g2 = [scale * 1.0 / e for e in range(1, EPOCHS + 1)]
    history = {"optimizer_steps": list(range(1, EPOCHS + 1)), "val_accuracy": [0.5] * EPOCHS,
               "train_eval_loss": [2.0 / e for e in range(1, EPOCHS + 1)]}  # fmt: skip
    if noise:
        history |= {
            "grad_norm_sq": g2,
            "grad_trace_sigma": [g * b_true(e) * spread for e, g in enumerate(g2, start=1)],
            "grad_noise_scale": [b_true(e) * spread for e in range(1, EPOCHS + 1)],
        }
    cfg = {
        "dataset": "fashion-mnist",
        **params,
        "micro_batch_size": batch,
        "effective_batch_size": batch * accumulation,
    }
    study.add_trial(
        create_trial(
            params=params,
            distributions={
                "batch_size": CategoricalDistribution((32, 64, 128)),
                "accumulation_steps": CategoricalDistribution((1, 4)),
                "lr_scaling": CategoricalDistribution(("none",)),
                "seed": CategoricalDistribution((0, 1)),
            },
            value=0.5,
            user_attrs={"config": cfg, "history": history},
        )
    )


def grid(url=None, *, noise=True) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name="g", direction="maximize")
    study.set_user_attr("kind", "grid")
    study.set_user_attr("dataset", "fashion-mnist")
    for seed in range(2):
        for batch in (32, 64, 128):
            for accumulation in (1, 4):
                add_run(study, batch=batch, accumulation=accumulation, seed=seed, noise=noise, scale=1 + seed)
    return study


def test_the_noise_scale_per_epoch_is_the_known_one_whatever_the_gradient_size():
    runs = noise_runs(grid())  # two seeds whose gradients differ in size by 2x: the same ratio
    assert len(runs) == 12
    curve = per_epoch(runs)
    assert [row["epoch"] for row in curve] == list(range(1, EPOCHS + 1))
    for row in curve:
        assert row["b_simple"] == pytest.approx(b_true(row["epoch"]))
        assert row["low"] == pytest.approx(row["high"]) and row["runs"] == 12


def test_per_run_values_give_the_median_and_a_95_percent_interval_of_runs():
    """Five runs whose B_simple is b_true x 0.5, 0.8, 1, 1.25, 2, one of them with 10x larger
    gradients: the median is b_true (a pooled ratio of means would be pulled to the big run's 0.5x),
    the interval the 2.5th and 97.5th percentiles of the five."""
    study = optuna.create_study(direction="maximize")
    spreads = [0.5, 0.8, 1.0, 1.25, 2.0]
    for seed, spread in enumerate(spreads):
        add_run(
            study,
            batch=32,
            accumulation=4,
            seed=seed % 2,
            spread=spread,
            scale=10.0 if spread == 0.5 else 1.0,
        )
    row = per_epoch(noise_runs(study))[2]  # epoch 3
    assert row["b_simple"] == pytest.approx(b_true(3)) and row["runs"] == 5
    # linear-interpolated percentiles of the sorted values (positions 0.1 and 3.9 of 0..4)
    assert row["low"] == pytest.approx(b_true(3) * (0.5 + 0.1 * 0.3))
    assert row["high"] == pytest.approx(b_true(3) * (1.25 + 0.9 * 0.75))
    hacked = replace(noise_runs(study)[0], norm_sq=[-0.5] * EPOCHS)  # a non-positive |G|^2: no value
    assert math.isnan(hacked.b_simple(1))
    assert per_epoch([hacked, *noise_runs(study)[1:]])[0]["runs"] == 4


def test_batches_below_near_and_above():
    assert position(32, 100) == "below" and position(64, 100) == "near" and position(200, 100) == "near"
    assert position(256, 100) == "above" and position(32, math.nan) == "unknown"
    summary = summarize("fashion-mnist", noise_runs(grid()))
    assert summary["last_epoch"] == EPOCHS and summary["per_epoch"][-1]["b_simple"] == pytest.approx(320)
    # at epoch 5, B_simple = 320: 32, 64, 128 below (x2 < 320), 256 and 512 near
    assert summary["positions_at_last_epoch"] == {
        "32": "below",
        "64": "below",
        "128": "below",
        "256": "near",
        "512": "near",
    }
    text = summary["sentence"]
    assert "grows from 20 at epoch 1 (95% of runs 20 to 20) to 320 at epoch 5 (320 to 320)" in text
    # at epoch 1, B_simple = 20: 32 near, the rest above
    assert summary["positions_at_first_epoch"] == {
        "32": "near",
        "64": "above",
        "128": "above",
        "256": "above",
        "512": "above",
    }
    assert (
        "at epoch 1: 32 near; 64, 128, 256, 512 above; at epoch 5: 32, 64, 128 below; 256, 512 near" in text
    )
    assert "which explanation holds is read at matched training progress" in text


def test_the_sentence_says_whether_b_simple_grows_or_falls():
    """On CIFAR-10's overfitting baseline B_simple fell over training (255 to 209); the sentence
    must say so, not that it grows."""

    def at(b, epoch):
        return {"b_simple": b, "epoch": epoch, "low": b, "high": b}

    def said(first, last):
        return sentence("cifar10", 3, at(first, 5), at(last, 200), {32: "below"}, {32: "below"}, {})

    assert "B_simple, the median of 3 run(s), falls from 255 at epoch 5" in said(255, 209)
    assert "grows from 20 at epoch 5" in said(20, 320)
    assert "changes little from 100 at epoch 5" in said(100, 105)


def test_runs_without_the_measurement_are_left_out():
    assert noise_runs(grid(noise=False)) == []
    summary = summarize("fashion-mnist", [])
    assert summary["runs"] == 0 and "not measured" in summary["sentence"]


def test_cli_prints_and_writes_the_section(tmp_path):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    grid(url)
    out = tmp_path / "out"
    proc = cli("analysis.noise_scale", "--study", "g", "--storage", url, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "grows from 20 at epoch 1 (95% of runs 20 to 20) to 320 at epoch 5" in proc.stdout
    doc = json.loads((out / "noise-scale.json").read_text())
    assert [round(r["b_simple"]) for r in doc["per_epoch"]] == [20, 40, 80, 160, 320]
    assert "figures/noise-scale.png" in (out / "noise-scale.md").read_text()
    assert (out / "figures" / "noise-scale.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "no study 'nope'"),
        (["--study", "plain"], "has no finished run that measured the noise scale"),
        (["--study", "g", "--out", "FILE"], "is a file; give a folder"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    grid(url)
    optuna.create_study(storage=url, study_name="plain")
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    proc = cli("analysis.noise_scale", *args, "--storage", url)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analysis.noise_scale: error: ") and message in lines[0]


def test_a_few_longer_runs_do_not_stand_for_the_grid():
    """A step-matched run trains 4x the epochs of the others: the reading and the table end at the
    last epoch most runs reached, where B_simple is the grid's, not at that one run's last epoch."""
    study = grid()
    longer = optuna.create_study(direction="maximize")
    add_run(longer, batch=32, accumulation=4, seed=0, spread=3.0)
    run = noise_runs(longer)[0]
    late = replace(run, epochs=[e + EPOCHS for e in run.epochs])  # epochs 6..10, seen by this run only
    summary = summarize("fashion-mnist", [*noise_runs(study), late])
    assert summary["per_epoch"][-1]["epoch"] == 2 * EPOCHS and summary["per_epoch"][-1]["runs"] == 1
    assert summary["last_epoch"] == EPOCHS and summary["shared_epochs"] == list(range(1, EPOCHS + 1))
    assert "to 320 at epoch 5 (320 to 320)" in summary["sentence"]
    assert [row[0] for row in table_rows(summary)] == [str(e) for e in range(1, EPOCHS + 1)]


def test_b_simple_per_run_configuration_is_the_geometric_mean_over_its_seeds():
    """Two seeds of one configuration whose B_simple is b_true x 0.5 and x 2: the geometric mean is
    b_true (the arithmetic one would be 1.25 b_true), with the t interval on the log scale; the table
    is read at the grid's epoch points, and a configuration is only the runs that differ by seed."""
    study = optuna.create_study(direction="maximize")
    for seed, spread in ((0, 0.5), (1, 2.0)):
        add_run(study, batch=32, accumulation=4, seed=seed, spread=spread)
    add_run(study, batch=128, accumulation=1, seed=0, spread=3.0)
    summary = summarize("fashion-mnist", noise_runs(study), epoch_points=[2, 5])
    rows = {r["configuration"]: r for r in summary["per_configuration"]}
    assert list(rows) == ["128 x 1", "32 x 4 none"]  # the twins, the (bN x 1) run first
    at5 = rows["32 x 4 none"]["at_epoch"][1]
    assert at5["epoch"] == 5 and at5["n"] == 2 and at5["mean"] == pytest.approx(b_true(5))
    half = 12.706204736 * math.log(4) / 2  # t(0.975, 1) x sd(log) / sqrt(2), sd(log) = log(4) / sqrt(2)
    assert at5["low"] == pytest.approx(b_true(5) * math.exp(-half))
    single = rows["128 x 1"]["at_epoch"][0]
    assert single["mean"] == pytest.approx(3 * b_true(2)) and single["n"] == 1 and math.isnan(single["low"])
    table = configuration_table(summary)
    assert table.header == ("run", "effective batch", "epoch 2", "epoch 5")
    assert table.rows[0] == ("128 x 1", "128", f"{3 * b_true(2):.0f} (1)", f"{3 * b_true(5):.0f} (1)")
    # without epoch points: the first and the last epoch most runs reached
    first = summarize("x", noise_runs(study))["per_configuration"][0]
    assert [a["epoch"] for a in first["at_epoch"]] == [1, 5]
