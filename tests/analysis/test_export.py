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
    """A replication names its sources STUDY:NUMBER, so an imported search must keep its numbers,
    also past an attempt lost when a session ended."""
    ran = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}", direction="maximize")
    ran.add_trial(trial(TrialState.COMPLETE, 0.01, 0.5))
    lost = ran.ask()  # a lost attempt: FAIL without a reason, not settled (its run is retried)
    ran.tell(lost, state=TrialState.FAIL)
    ran.add_trial(trial(TrialState.PRUNED, 0.3, 0.2))
    ran.add_trial(trial(TrialState.COMPLETE, 0.001, 0.7))
    path = write_records(ran, tmp_path / "records" / "s.jsonl")
    assert len(path.read_text().splitlines()) == 1 + 4  # every finished trial, the lost attempt too

    fresh_storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'b.db'}")
    assert import_records(fresh_storage, path) == ("s", 4)
    fresh = optuna.load_study(study_name="s", storage=fresh_storage)
    assert [(t.number, t.state, t.params) for t in fresh.trials] == [(t.number, t.state, t.params) for t in ran.trials]
    assert source_key(fresh, best_trials(fresh, 1)[0]) == source_key(ran, best_trials(ran, 1)[0]) == "s:3"
    assert not settled(fresh.trials[1])
    assert write_records(fresh, tmp_path / "again.jsonl").read_text() == path.read_text()
    assert import_records(fresh_storage, path) == ("s", 0)  # imported again, nothing is added


def test_a_number_the_records_lack_is_held(tmp_path):
    """Older records kept settled trials only: the number of a left-out attempt is held by a FAIL
    trial of status unrecorded, which is no run (not settled, written out as it is)."""
    ran = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}", direction="maximize")
    ran.add_trial(trial(TrialState.COMPLETE, 0.01, 0.5))
    ran.tell(ran.ask(), state=TrialState.FAIL)
    ran.add_trial(trial(TrialState.COMPLETE, 0.001, 0.7))
    path = write_records(ran, tmp_path / "s.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if '"number": 1,' not in line) + "\n")

    fresh_storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'b.db'}")
    assert import_records(fresh_storage, path) == ("s", 2)
    fresh = optuna.load_study(study_name="s", storage=fresh_storage)
    assert [t.number for t in fresh.trials if settled(t)] == [0, 2]
    held = fresh.trials[1]
    assert held.state == TrialState.FAIL and held.user_attrs["status"] == "unrecorded" and not settled(held)
    assert source_key(fresh, best_trials(fresh, 1)[0]) == "s:2"
