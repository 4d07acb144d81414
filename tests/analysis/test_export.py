"""Trial records: a study written to JSON lines and imported on a machine without its database."""

import optuna
import pytest
from optuna.trial import TrialState

from analysis.lib.export import RecordsError, import_records, write_records
from study.lib.replicate import best_trials, source_key
from study.lib.workers import settled

optuna.logging.set_verbosity(optuna.logging.WARNING)


def pruner() -> optuna.pruners.BasePruner:
    # rungs at steps 1, 2, 4: a trial goes on only while it is in the better half at each
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)


def run(study: optuna.Study, lr: float, reports: list[float], *, lose: bool = False) -> TrialState:
    """One trial of ``lr`` reporting ``reports``, pruned where the pruner says; lost (FAIL without a
    reason, as when its worker dies) with ``lose``."""
    study.enqueue_trial({"lr": lr})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.set_user_attr("config", {"lr": lr})
    if lose:
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    for step, value in enumerate(reports, start=1):
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
    study.tell(trial, reports[-1])
    return TrialState.COMPLETE


def search(tmp_path, name: str = "a.db") -> optuna.Study:
    """Trial 0 completes, 1 is lost, 2 is pruned at its first rung, 3 completes best."""
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / name}",
                                direction="maximize", pruner=pruner())  # fmt: skip
    assert run(study, 0.01, [0.5, 0.6, 0.6, 0.7]) == TrialState.COMPLETE
    assert run(study, 0.1, [], lose=True) == TrialState.FAIL
    assert run(study, 0.3, [0.1, 0.1]) == TrialState.PRUNED
    assert run(study, 0.001, [0.6, 0.7, 0.8, 0.9]) == TrialState.COMPLETE
    return study


def fresh(tmp_path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'b.db'}")


def numbered(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.values, t.system_attrs) for t in study.trials]


def test_a_study_imported_from_records_is_the_study_that_ran(tmp_path):
    """A replication names its sources STUDY:NUMBER and Hyperband brackets trials by number, so an
    imported search keeps its numbers (past an attempt lost when a session ended), its pruned
    trials' values and the rungs its pruner compares new trials with."""
    ran = search(tmp_path)
    path = write_records(ran, tmp_path / "records" / "s.jsonl")
    assert len(path.read_text().splitlines()) == 1 + 4  # every finished trial, the lost attempt too

    storage = fresh(tmp_path)
    assert import_records(storage, path) == ("s", 4)
    study = optuna.load_study(study_name="s", storage=storage, pruner=pruner())
    assert numbered(study) == numbered(ran)
    assert source_key(study, best_trials(study, 1)[0]) == source_key(ran, best_trials(ran, 1)[0]) == "s:3"
    assert not settled(study.trials[1])
    assert write_records(study, tmp_path / "again.jsonl").read_text() == path.read_text()
    assert import_records(storage, path) == ("s", 0)  # imported again, nothing is added

    # A new trial as poor as trial 2 is pruned at the first rung: it is compared with the imported ones.
    assert run(study, 0.5, [0.2, 0.2]) == TrialState.PRUNED


def test_an_import_that_was_stopped_goes_on_at_the_recorded_numbers(tmp_path):
    ran = search(tmp_path)
    path = write_records(ran, tmp_path / "s.jsonl")
    lines = path.read_text().splitlines()
    half = tmp_path / "half.jsonl"
    half.write_text("\n".join(lines[:3]) + "\n")  # the import stopped after trial 1

    storage = fresh(tmp_path)
    assert import_records(storage, half) == ("s", 2)
    assert import_records(storage, path) == ("s", 2)
    assert numbered(optuna.load_study(study_name="s", storage=storage)) == numbered(ran)


def test_a_number_the_records_lack_is_held(tmp_path):
    """Older records kept settled trials only: the number of a left-out attempt is held by a FAIL
    trial of status unrecorded, which is no run (not settled)."""
    path = write_records(search(tmp_path), tmp_path / "s.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if '"number": 1,' not in line) + "\n")

    storage = fresh(tmp_path)
    assert import_records(storage, path) == ("s", 3)
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.number for t in study.trials if settled(t)] == [0, 2, 3]
    held = study.trials[1]
    assert held.state == TrialState.FAIL and held.user_attrs["status"] == "unrecorded" and not settled(held)
    assert source_key(study, best_trials(study, 1)[0]) == "s:3"


def test_a_number_recorded_twice_is_refused(tmp_path):
    path = write_records(search(tmp_path), tmp_path / "s.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[-1]]) + "\n")
    with pytest.raises(RecordsError, match="recorded twice"):
        import_records(fresh(tmp_path), path)
    assert not optuna.get_all_study_names(fresh(tmp_path))  # nothing half-written
