"""python -m analysis.results: an experiment's results folder from a synthetic grid study, the
storage only read."""

import csv
import hashlib
import json
import subprocess
import sys

import optuna

from tests.analysis.synthetic import stored


def results(*args):
    return subprocess.run(
        [sys.executable, "-m", "analysis.results", *args], capture_output=True, text=True, timeout=300
    )


def test_results_folder_from_the_grid_alone(tmp_path):
    url = stored(tmp_path, "under-training", name="fashion-mnist-grid-cpu")
    db = tmp_path / "v.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = tmp_path / "out"
    proc = results("--dataset", "fashion-mnist", "--budget", "cpu", "--storage", url, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("report.md", "verdict.json", "grid-runs.csv", "grid-history.csv", "records/grid.jsonl",
                 "figures/steps-none-x4.png", "figures/progress-none-x4.png"):  # fmt: skip
        assert (out / name).is_file(), name
        assert str(out / name) in proc.stdout.splitlines(), name
    verdict = json.loads((out / "verdict.json").read_text())
    assert [a["verdict"] for a in verdict["arms"]] == ["under-training"]
    assert [e["micro_batch"] for e in verdict["equivalence"]] == [32, 64, 128]
    assert (
        verdict["baseline_overfits"]["micro_batch"] == 32
        and len(verdict["baseline_overfits"]["per_seed"]) == 3
    )
    assert "noise_scale" not in verdict  # the grid did not measure it: no section, no figure
    assert not (out / "figures" / "noise-scale.png").exists()
    report = (out / "report.md").read_text()
    assert "(figures/steps-none-x4.png)" in report and "(figures/progress-none-x4.png)" in report
    assert report.index("(b x N) against (bN x 1)") < report.index("The verdict per lr-scaling arm")
    assert not (out / "search-trials.csv").exists()  # no search study: skipped
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_results_without_a_grid_exits_2_with_one_line(tmp_path):
    url = stored(tmp_path, "under-training", name="another-name")
    proc = results(
        "--dataset", "fashion-mnist", "--budget", "cpu", "--storage", url, "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no grid study 'fashion-mnist-grid-cpu'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_tables_only_writes_the_records_and_no_verdict(tmp_path):
    """What is committed of an experiment still running: its finished runs as records and tables."""
    url = stored(tmp_path, "under-training", name="fashion-mnist-grid-cpu")
    grid = optuna.load_study(study_name="fashion-mnist-grid-cpu", storage=url)
    finished = len(grid.trials)
    grid.enqueue_trial({"batch_size": 32, "accumulation_steps": 4, "lr_scaling": "none", "seed": 9})  # a waiting run
    db = tmp_path / "v.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = tmp_path / "out"
    proc = results(
        "--dataset", "fashion-mnist", "--budget", "cpu", "--storage", url, "--out", str(out), "--tables-only"
    )
    assert proc.returncode == 0, proc.stderr
    written = proc.stdout.splitlines()
    assert sorted(written) == sorted(
        str(out / n) for n in ("records/grid.jsonl", "grid-runs.csv", "grid-history.csv")
    )
    assert not (out / "report.md").exists() and not (out / "verdict.json").exists()
    assert not (out / "figures").exists()
    with open(out / "grid-runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == finished and {r["state"] for r in rows} == {"complete"}
    assert len((out / "records" / "grid.jsonl").read_text().splitlines()) == 1 + finished
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
