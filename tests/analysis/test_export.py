"""Trial records: a study written to JSON lines and imported on a machine without its database."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.lib.export import import_records, write_records
from study.lib.replicate import best_trials, source_key
from study.lib.workers import settled

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = {"lr": FloatDistribution(1e-4, 1.0, log=True)}


def trial(state: TrialState, lr: float, value: float) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        params={"lr": lr},
        distributions=LR,
        value=value if state == TrialState.COMPLETE else None,
        intermediate_values={1: value},
        user_attrs={"config": {"lr": lr, "epochs": 2}},
    )


def test_a_study_imported_from_records_keeps_its_trial_numbers(tmp_path):
    """A replication names its sources STUDY:NUMBER, so an imported search must keep its numbers even
    where the records leave an attempt out (a worker lost when a session ended)."""
    ran = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}", direction="maximize")
    ran.add_trial(trial(TrialState.COMPLETE, 0.01, 0.5))
    lost = ran.ask()  # the lost attempt: FAIL without a reason, not settled, so not recorded
    ran.tell(lost, state=TrialState.FAIL)
    ran.add_trial(trial(TrialState.PRUNED, 0.3, 0.2))
    ran.add_trial(trial(TrialState.COMPLETE, 0.001, 0.7))
    path = write_records(ran, tmp_path / "records" / "s.jsonl")
    assert len(path.read_text().splitlines()) == 1 + 3

    fresh_storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'b.db'}")
    assert import_records(fresh_storage, path) == ("s", 3)
    fresh = optuna.load_study(study_name="s", storage=fresh_storage)
    assert [(t.number, t.state, t.params) for t in fresh.trials if settled(t)] == [
        (t.number, t.state, t.params) for t in ran.trials if settled(t)
    ]
    assert source_key(fresh, best_trials(fresh, 1)[0]) == source_key(ran, best_trials(ran, 1)[0]) == "s:3"
    held = fresh.trials[1]
    assert held.state == TrialState.FAIL and held.user_attrs["status"] == "unrecorded" and not settled(held)

    # The held number is no run: written again, the records are the same; imported again, nothing is added.
    again = write_records(fresh, tmp_path / "again.jsonl")
    assert again.read_text() == path.read_text()
    assert import_records(fresh_storage, path) == ("s", 0)
