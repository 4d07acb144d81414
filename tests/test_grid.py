"""python -m study.grid: the paper's fixed grid as a study."""

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_grid(*args):
    return subprocess.run(
        [sys.executable, "-m", "study.grid", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_quick_grid_on_digits_has_six_runs_with_three_epoch_points(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    proc = run_grid("--dataset", "digits", "--budget", "quick", "--storage", url, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "epoch points 1, 2, 5 (the paper's 10, 20, 50 divided by 10)" in proc.stdout
    study = optuna.load_study(study_name="digits-grid-quick", storage=url)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    cells = {(t.params["batch_size"], t.params["accumulation_steps"]) for t in trials}
    assert cells == {(b, a) for b in (32, 64, 128) for a in (1, 4)}
    for t in trials:
        cfg = t.user_attrs["config"]
        assert cfg["optimizer"] == "adam" and cfg["schedule"] == "constant" and cfg["lr_scaling"] == "none"
        assert cfg["weight_decay"] == 0 and cfg["dropout"] == 0 and cfg["drop_path"] == 0
        points = t.user_attrs["checkpoints"]
        assert sorted(points, key=int) == ["1", "2", "5"]
        for m in points.values():
            for key in (
                "train_accuracy",
                "val_accuracy",
                "test_accuracy",
                "generalization_gap",
                "wall_seconds",
                "optimizer_steps",
            ):
                assert m[key] is not None, key
        assert sorted(t.intermediate_values) == [1, 2, 3, 4, 5]
        # steps at each point follow from the effective batch: 1024 // (batch x accumulation) per epoch
        per_epoch = 1024 // (t.params["batch_size"] * t.params["accumulation_steps"])
        assert [points[e]["optimizer_steps"] for e in ("1", "2", "5")] == [
            per_epoch,
            2 * per_epoch,
            5 * per_epoch,
        ]
    # batch 32 x 4 and batch 128 x 1 are the same effective batch, seed and samples: same numbers
    by_cell = {(t.params["batch_size"], t.params["accumulation_steps"]): t for t in trials}
    a, b = by_cell[(32, 4)].user_attrs["checkpoints"]["5"], by_cell[(128, 1)].user_attrs["checkpoints"]["5"]
    assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.01)

    again = run_grid("--dataset", "digits", "--budget", "quick", "--storage", url, "--quiet")
    assert again.returncode == 0 and "0 of 6 runs to do" in again.stdout
    assert len(optuna.load_study(study_name="digits-grid-quick", storage=url).trials) == 6

    # Learning-rate arms grow the grid: only the accumulated runs are added, one per arm; the
    # accumulation-1 runs are shared (run once, lr unscaled under every rule).
    arms = run_grid(
        "--dataset", "digits", "--budget", "quick", "--storage", url, "--quiet", "--lr-scaling", "none,linear,sqrt"
    )  # fmt: skip
    assert arms.returncode == 0, arms.stderr
    assert "6 of 12 runs to do" in arms.stdout
    study = optuna.load_study(study_name="digits-grid-quick", storage=url)
    assert study.user_attrs["arms"] == ["none", "linear", "sqrt"]
    runs = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(runs) == 12
    assert sum(t.params["accumulation_steps"] == 1 for t in runs) == 3  # one per micro-batch, shared
    scale = {"none": 1.0, "linear": 4.0, "sqrt": 2.0}
    for t in runs:
        cfg = t.user_attrs["config"]
        assert cfg["reference_batch_size"] == cfg["batch_size"]  # scaled relative to the micro-batch run
        expected = 1e-3 * (scale[cfg["lr_scaling"]] if cfg["accumulation_steps"] == 4 else 1.0)
        assert cfg["lr"] == pytest.approx(expected)
    assert {(t.params["accumulation_steps"], t.params["lr_scaling"]) for t in runs} == {
        (1, "none"),
        (4, "none"),
        (4, "linear"),
        (4, "sqrt"),
    }


@pytest.mark.slow
def test_step_matched_runs_make_their_baselines_steps_and_twins_join_the_grid(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    proc = run_grid(
        "--dataset", "digits", "--budget", "quick", "--storage", url, "--quiet", "--step-matched", "none", "--twins"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "accumulated runs of none train 4 x 5 epochs (step-matched)" in proc.stdout
    runs = {
        (t.params["batch_size"], t.params["accumulation_steps"]): t
        for t in optuna.load_study(study_name="digits-grid-quick", storage=url).get_trials()
    }
    # 3 baselines, 3 step-matched accumulated runs, the twins 64 x 4 -> 256 x 1 and 128 x 4 -> 512 x 1
    assert set(runs) == {(32, 1), (64, 1), (128, 1), (32, 4), (64, 4), (128, 4), (256, 1), (512, 1)}
    for batch in (32, 64, 128):
        base, accumulated = runs[(batch, 1)], runs[(batch, 4)]
        assert base.params["epochs"] == 5 and accumulated.params["epochs"] == 20
        assert (
            accumulated.user_attrs["optimizer_steps"]
            == base.user_attrs["optimizer_steps"]
            == 5 * 1024 // batch
        )
        points = accumulated.user_attrs["checkpoints"]
        assert sorted(points, key=int) == ["1", "2", "4", "5", "8", "20"]  # equal epochs and 4 x them
        assert points["20"]["optimizer_steps"] == base.user_attrs["checkpoints"]["5"]["optimizer_steps"]
        # evaluated as often per optimizer step as the baseline: every 4 epochs, plus the points
        assert accumulated.user_attrs["history"]["epoch"] == [1, 2, 4, 5, 8, 12, 16, 20]
    for twin in (256, 512):
        assert runs[(twin, 1)].params["epochs"] == 5 and runs[(twin, 1)].user_attrs["config"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--accumulation-steps", "1"], "--accumulation-steps must be >= 2"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--storage", "not a url"], "malformed storage URL"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--accumulation-steps", "64"], "the grid cannot run on digits: effective batch 2048"),
        (["--lr-scaling", "none,cubic"], "--lr-scaling takes arms of none, linear, sqrt"),
        (["--budget", "huge"], "invalid choice: 'huge'"),
        (["--models", "swin,resnet"], "--models takes model families of swin, vit, bn-cnn"),
        (["--models", "swin,vit", "--study-name", "g"], "--study-name names one grid"),
        (["--batch-sizes", "32,48"], "--batch-sizes takes micro-batches of 32, 64, 128"),
    ],
)
def test_grid_bad_input(tmp_path, args, message):
    db = tmp_path / "g.db"
    base = ["--dataset", "digits", "--budget", "quick", "--storage", f"sqlite:///{db}"]
    proc = run_grid(*base, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not db.exists()


@pytest.mark.slow
def test_grid_workers_share_the_runs_each_run_once(tmp_path):
    """--workers 2: two processes take the queued runs between them; every run of the grid is run
    exactly once and no trial is sampled off the grid."""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    args = ("--dataset", "digits", "--budget", "quick", "--lr-scaling", "none,linear", "--storage", url)
    proc = run_grid(*args, "--workers", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "9 of 9 runs to do, 2 workers" in proc.stdout
    trials = optuna.load_study(study_name="digits-grid-quick", storage=url).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    design = sorted(
        (t.params["batch_size"], t.params["accumulation_steps"], t.params["lr_scaling"]) for t in trials
    )
    expected = sorted(
        [(b, 1, "none") for b in (32, 64, 128)]
        + [(b, 4, arm) for b in (32, 64, 128) for arm in ("none", "linear")]
    )
    assert design == expected
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    again = run_grid(*args, "--workers", "2", "--quiet")
    assert again.returncode == 0 and "0 of 9 runs to do" in again.stdout
    assert len(optuna.load_study(study_name="digits-grid-quick", storage=url).trials) == 9


def test_cifar10_cpu_design_step_matches_micro_batch_32_only():
    from study.lib.grid import grid_design

    design = grid_design(dataset="cifar10", accumulation=4, seeds=5, budget="cpu", base_lr=1e-3,
                         arms=("none", "linear", "sqrt"))  # fmt: skip
    stretched = {(r["batch_size"], r["lr_scaling"]) for r in design.runs if r["epochs"] == 800}
    assert stretched == {(32, "none")}
    # per seed: 3 baselines, 3 x 3 accumulated runs, the twins 256 x 1 and 512 x 1
    assert len(design.runs) == 5 * 14
    assert {r["epochs"] for r in design.runs} == {200, 800}


def test_a_reduced_design_keeps_its_micro_batches_step_matched_runs_and_twins():
    from study.lib.grid import grid_design

    design = grid_design(dataset="cifar10", accumulation=4, seeds=5, budget="cpu", base_lr=1e-3, batches=(32,))
    per_seed = sorted((r["batch_size"], r["accumulation_steps"], r["epochs"]) for r in design.runs if r["seed"] == 0)
    # the baseline, its step-matched accumulated run, and its twin 128 x 1 (no micro-batch 128 run here)
    assert per_seed == [(32, 1, 200), (32, 4, 800), (128, 1, 200)]
    assert len(design.runs) == 5 * 3 and "batch (32,)" in design.description


@pytest.mark.slow
def test_each_model_family_gets_its_own_grid_of_the_same_design(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    proc = run_grid("--dataset", "digits", "--budget", "quick", "--storage", url, "--quiet", "--models", "vit,bn-cnn",
                    "--workers", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {"digits-grid-quick-vit", "digits-grid-quick-bn-cnn"}  # no Swin grid: not asked for
    for family in ("vit", "bn-cnn"):
        trials = optuna.load_study(study_name=f"digits-grid-quick-{family}", storage=url).get_trials()
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert {(t.params["batch_size"], t.params["accumulation_steps"]) for t in trials} == {
            (b, a) for b in (32, 64, 128) for a in (1, 4)
        }
        assert {(t.user_attrs["config"]["model"], t.user_attrs["config"]["family"]) for t in trials} == {
            (f"{family}-nano", family)
        }


def test_a_resumed_queue_holds_one_copy_of_each_missing_run_the_furthest_resuming_one(tmp_path):
    """What a grid resumed after a lost session finds: a done run with a queued copy, a lost run
    (RUNNING, silent) with a checkpoint and a fresh copy queued beside it, a run queued twice, and
    a run never queued. Each missing run must run once, and a lost run from its checkpoint."""
    import time

    from study.lib import records
    from study.lib.checkpoint import Checkpoints
    from study.lib.session import queue_runs
    from study.lib.storage import open_storage
    from study.lib.workers import settled

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="q", storage=open_storage(url, heartbeat_interval=1, grace_period=2))
    store = Checkpoints(tmp_path / "artifacts")
    runs = [{"cell": c} for c in "ABCD"]
    cells = optuna.distributions.CategoricalDistribution(list("ABCD"))
    study.add_trial(optuna.trial.create_trial(params={"cell": "A"}, distributions={"cell": cells}, value=0.5))
    study.enqueue_trial({"cell": "B"})
    lost = study.ask()  # 1: B, lost after epoch 50 with its checkpoint
    lost.suggest_categorical("cell", list("ABCD"))
    for epoch in (10, 30, 50):
        lost.report(0.1, epoch)
    study._storage.record_heartbeat(lost._trial_id)
    store.folder.mkdir()
    store.path("q", lost.number).write_bytes(b"state")
    study.enqueue_trial({"cell": "A"})  # 2: a copy of a done run
    study.enqueue_trial({"cell": "B"})  # 3: a fresh copy, queued before the lost run was seen
    study.enqueue_trial({"cell": "D"})  # 4, 5: D twice
    study.enqueue_trial({"cell": "D"})
    time.sleep(3)  # past the grace period: trial 1 is stale

    todo = queue_runs(study, runs, resume_point=store.resume_point)

    trials = study.get_trials()
    waiting = {t.number: t.system_attrs["fixed_params"]["cell"] for t in trials if t.state == TrialState.WAITING}
    retry = next(t.number for t in trials if t.system_attrs.get("failed_trial") == lost.number)
    assert todo == 3
    assert sorted(waiting.values()) == ["B", "C", "D"]
    assert retry in waiting and 4 in waiting  # B from its checkpoint; D's first copy
    withdrawn = [t for t in trials if t.user_attrs.get(records.STATUS) == records.WITHDRAWN]
    assert sorted(t.number for t in withdrawn) == [2, 3, 5]
    assert all(t.state == TrialState.FAIL and not settled(t) for t in withdrawn)
    assert "trial 0, which is done" in trials[2].user_attrs[records.FAIL_REASON]
    # asked again, the queue is already right: nothing is added or withdrawn
    assert queue_runs(study, runs, resume_point=store.resume_point) == 3
    assert len(study.get_trials()) == len(trials)
    assert {t.number for t in study.get_trials() if t.state == TrialState.WAITING} == set(waiting)
