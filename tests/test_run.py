"""python -m study.run end to end, on digits with the quick space, against real SQLite files."""

import hashlib
import io
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from search_spaces import load_space
from study.lib.data import load_raw
from study.lib.objective import search_objective
from study.lib.records import FINAL_KEYS
from study.lib.session import optimize
from study.lib.storage import mask, resolve_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
CONFIG_ATTRS = (
    "dataset",
    "model",
    "batch_size",
    "accumulation_steps",
    "protocol",
    "epochs",
    "base_lr",
    "lr_scaling",
    "weight_decay",
    "dropout",
    "drop_path",
    "seed",
    "effective_batch_size",
)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "study.run", *args], capture_output=True, text=True, env=env, timeout=600
    )


def quick_args(db, name="t", n_trials="4"):
    return [
        "--dataset",
        "digits",
        "--space",
        "quick",
        "--n-trials",
        n_trials,
        "--storage",
        f"sqlite:///{db}",
        "--study-name",
        name,
        "--budget",
        "quick",
        "--quiet",
    ]


@pytest.mark.slow
def test_study_finishes_records_everything_and_resumes(tmp_path):
    db = tmp_path / "s.db"
    first = run_cli(*quick_args(db))
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert len(trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # the paper-protocol default is the first, enqueued trial
    assert trials[0].params["accumulation_steps"] == 1 and trials[0].params["lr_scaling"] == "none"
    for t in trials:
        assert {"accumulation_steps", "lr_scaling", "base_lr", "weight_decay"} <= set(t.params)
        assert {"dropout", "drop_path"} & set(t.params)
        for key in FINAL_KEYS + ("status", "environment", "history", "config"):
            assert key in t.user_attrs, (t.number, key)
        for key in CONFIG_ATTRS:
            assert key in t.user_attrs["config"], (t.number, key)
        for key in ("device", "torch", "timm", "optuna", "num_parameters"):
            assert key in t.user_attrs["environment"], (t.number, key)
        assert t.user_attrs["config"]["base_lr"] == t.params["base_lr"]
        assert t.user_attrs["effective_batch_size"] == 16 * t.params["accumulation_steps"]
        assert t.user_attrs["status"] in ("completed", "stopped")
        assert len(t.user_attrs["history"]["val_accuracy"]) == len(t.intermediate_values)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.value == t.user_attrs["val_accuracy"] for t in done)
    assert "study t (new)" in first.stdout and "best: trial" in first.stdout
    assert "python -m analysis.report --study t" in first.stdout
    assert first.stdout.count(" COMPLETE: ") + first.stdout.count(" PRUNED: ") == 4

    again = run_cli(*quick_args(db, n_trials="2"))
    assert again.returncode == 0, again.stderr
    assert "resumed, 4 trials so far" in again.stdout
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert len(study.trials) == 6
    assert sum(t.user_attrs.get("baseline", False) for t in study.trials) == 1  # not enqueued twice


def _pruning_space(tmp_path):
    path = tmp_path / "prune.toml"
    path.write_text(
        textwrap.dedent("""
        [fixed]
        model = "swin-nano"
        batch_size = 16
        epochs = 4
        train_eval_size = 200
        [params.base_lr]
        type = "categorical"
        choices = [0.001, 1e-7]
        role = "nuisance"
    """)
    )
    return load_space(str(path))


@pytest.mark.slow
def test_pruning_stops_a_trial_that_cannot_learn(tmp_path):
    # A learning rate of 1e-7 leaves the model at its initial accuracy while the first trial
    # (lr 1e-3, same seed, same batches) improves every epoch: the median pruner must stop it.
    space = _pruning_space(tmp_path)
    objective = search_objective(
        space, "quick", load_raw("digits", "data"), dataset="digits", device="cpu", seed=0
    )
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    study.enqueue_trial({"base_lr": 0.001})
    study.enqueue_trial({"base_lr": 1e-7})
    study.optimize(objective, n_trials=2)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and len(good.intermediate_values) == 4
    assert bad.state == TrialState.PRUNED
    assert len(bad.intermediate_values) < 4
    assert bad.user_attrs["status"] == "stopped"
    assert bad.user_attrs["epochs_trained"] == len(bad.intermediate_values)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


BAD_INPUTS = [
    (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
    (["--dataset", "digits", "--space", "nonexistent"], "no such search-space file"),
    (["--dataset", "digits", "--space", "{broken}"], "not valid TOML"),
    (["--dataset", "digits", "--space", "{invalid}"], "params.base_lr: low (0.1) must be < high (0.01)"),
    (["--dataset", "digits", "--storage", "not a url"], "malformed storage URL"),
    (["--dataset", "digits", "--storage", "nosuchdb://x/y"], "unusable storage URL"),
    (["--dataset", "digits", "--n-trials", "0"], "--n-trials must be >= 1; got 0"),
    (["--dataset", "digits", "--n-trials", "-3"], "--n-trials must be >= 1; got -3"),
    (
        ["--dataset", "digits", "--sampler", "bayes"],
        "unknown sampler 'bayes'; choose one of tpe, qmc, random",
    ),
    (
        ["--dataset", "digits", "--pruner", "asha"],
        "unknown pruner 'asha'; choose one of hyperband, median, none",
    ),
    (["--dataset", "mnist", "--data-dir", "{empty}"], "mnist is not in"),
    (["--dataset", "digits", "--workers", "0"], "--workers must be >= 1"),
    (["--dataset", "digits", "--device", "cuda"], "no CUDA device is available"),
    (["--dataset", "digits", "--space", "{too_big}"], "params.accumulation_steps = 512 cannot run"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[m[:30] for _, m in BAD_INPUTS])
@pytest.mark.parametrize("existing", [False, True], ids=["new-db", "existing-db"])
def test_bad_input_exits_2_with_one_line_and_leaves_storage_alone(
    tmp_path, offline_env, args, message, existing
):
    if "--device" in args and __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is present")
    db = tmp_path / "s.db"
    if existing:  # a study already there must be left byte-for-byte as it was
        optuna.create_study(study_name="keep", storage=f"sqlite:///{db}").optimize(lambda t: 1.0, n_trials=1)
    before = _digest(db)
    (tmp_path / "broken.toml").write_text("[params\n")
    (tmp_path / "invalid.toml").write_text(
        '[params.base_lr]\ntype = "float"\nlow = 0.1\nhigh = 0.01\nrole = "nuisance"\n'
    )
    (tmp_path / "too_big.toml").write_text(
        '[fixed]\nbatch_size = 64\n[params.accumulation_steps]\ntype = "categorical"\n'
        'choices = [1, 512]\nrole = "scientific"\n'
    )
    (tmp_path / "empty").mkdir()
    args = [
        a.format(
            broken=tmp_path / "broken.toml",
            invalid=tmp_path / "invalid.toml",
            too_big=tmp_path / "too_big.toml",
            empty=tmp_path / "empty",
        )
        for a in args
    ]
    if "--storage" not in args:
        args += ["--storage", f"sqlite:///{db}"]
    proc = run_cli(*args, "--budget", "quick", "--quiet")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("study.run: error: ") and message in lines[0], lines[0]
    assert _digest(db) == before
    assert not (tmp_path / "storage").exists()


def test_resuming_with_another_dataset_is_refused(tmp_path):
    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{db}", direction="maximize")
    study.set_user_attr("dataset", "mnist")
    before = _digest(db)
    proc = run_cli(*quick_args(db))
    assert proc.returncode == 2
    assert "study 't' was created with dataset=mnist; pick another --study-name" in proc.stderr
    assert _digest(db) == before


@pytest.mark.slow
def test_two_workers_share_one_sqlite_file(tmp_path):
    db = tmp_path / "s.db"
    proc = run_cli(*quick_args(db, name="w", n_trials="4"), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="w", storage=f"sqlite:///{db}").get_trials()
    assert len(trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert "[worker 0]" in proc.stdout and "[worker 1]" in proc.stdout
    assert len({t.number for t in trials}) == 4


def test_password_in_storage_url_never_printed(tmp_path, monkeypatch):
    secret = "s3cr3t-pw"
    url = f"postgresql+psycopg://alice:{secret}@127.0.0.1:1/studies"
    assert mask(url) == "postgresql+psycopg://alice:***@127.0.0.1:1/studies"
    for args, env in (
        (["--storage", url], None),  # on the command line
        ([], {"STUDY_STORAGE": url}),  # from the environment
        (["--storage", f"postgresql://alice:{secret}@127.0.0.1:1/studies"], None),
    ):
        full_env = None if env is None else {**__import__("os").environ, **env}
        proc = run_cli("--dataset", "digits", "--space", "quick", "--budget", "quick", *args, env=full_env)
        assert proc.returncode == 2
        assert secret not in proc.stdout + proc.stderr
        assert "alice:***@127.0.0.1" in proc.stderr
    monkeypatch.setenv("STUDY_STORAGE", url)
    assert resolve_url(None) == url


@pytest.mark.slow
def test_resuming_draws_new_points(tmp_path):
    """The same command run twice with the same --seed must not re-draw the first run's points."""
    db = tmp_path / "s.db"
    for _ in range(2):
        proc = run_cli(*quick_args(db, name="r", n_trials="2"), "--sampler", "random", "--pruner", "none")
        assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="r", storage=f"sqlite:///{db}").trials
    assert len(trials) == 4 and trials[0].user_attrs.get("baseline")
    sampled = [tuple(sorted(t.params.items())) for t in trials[1:]]
    assert len(set(sampled)) == 3, sampled


class FlushRecording(io.StringIO):
    """A stream that keeps what had been written at each flush."""

    def __init__(self):
        super().__init__()
        self.flushed: list[str] = []

    def flush(self):
        self.flushed.append(self.getvalue())
        super().flush()


def test_every_trial_line_is_flushed_as_it_is_written():
    """A long study run as ``nohup python -m study.experiment ... > log`` shows each finished trial
    at once: a file is block-buffered, and its lines once waited for 8 KiB to accumulate."""
    study = optuna.create_study(direction="maximize")
    stream = FlushRecording()
    optimize(study, lambda t: t.suggest_float("x", 0, 1), n_trials=3, quiet=True, stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(f"trial {i} COMPLETE" in line for i, line in enumerate(lines))
    assert {1, 2, 3} <= {text.count("\n") for text in stream.flushed}  # flushed after each line
