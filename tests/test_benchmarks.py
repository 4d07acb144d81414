"""The learnability, overfitting and budget-cost benchmarks run, on digits, with their references learning.

The benchmarks are what the budgets were chosen from; a change to the trainer's API once broke the
learnability benchmark's MLP without any test noticing. These runs are tiny (seconds): they check
that each benchmark trains every model it lists and that the references learn, not any speed."""

import json

from tests.conftest import cli


def test_learnability_trains_the_candidate_beside_logistic_regression_and_the_mlp(tmp_path):
    out = tmp_path / "rows.json"
    proc = cli("benchmarks.learnability", "--dataset", "digits", "--train-subset", "512", "--val-size", "200",
               "--epochs", "2", "--candidates", "nano-p4w4", "--base-lr", "2e-3", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Adam lr 0.002" in proc.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["logistic-regression", "mlp-256", "nano-p4w4"]
    assert len(rows["mlp-256"]["val_accuracy"]) == 2 and len(rows["nano-p4w4"]["val_accuracy"]) == 2
    assert rows["mlp-256"]["val_accuracy"][-1] > 0.8 and rows["logistic-regression"]["val_accuracy"][0] > 0.8


def test_overfitting_benchmark_curves_and_criteria(tmp_path):
    out = tmp_path / "overfitting.json"
    proc = cli("benchmarks.overfitting", "--dataset", "digits", "--settings", "512x3", "--eval-every", "1",
               "--val-size", "200", "--train-eval-size", "256", "--epoch-points", "1,2,3", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    curves = {c["model"]: c for c in result["curves"]}
    assert set(curves) == {"swin-nano", "mlp-256", "cnn-small"}
    assert all(c["epoch"] == [1, 2, 3] for c in curves.values())
    assert max(curves["mlp-256"]["val_accuracy"]) > 0.8
    (check,) = result["criteria"]
    assert check["setting"] == "512x3" and "beats the MLP by 0.05" in check


def test_budget_cost_times_accumulation_against_both_of_its_references():
    proc = cli("benchmarks.budget_cost", "--dataset", "digits", "--budget", "quick", "--batch-sizes", "16",
               "--epochs", "1", "--rounds", "1", "--accumulation-steps", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("16 x 2:")]
    assert "16 x 1:" in line and "32 x 1:" in line
    assert "same micro-batch" in line and "same effective batch" in line
