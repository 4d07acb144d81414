"""The family contrast on synthetic grids with planted answers (no training): a control family
that overfits where the Swin is only behind is told apart, one that behaves like the Swin is not."""

import json

import optuna
import pytest

from analysis.lib.families import contrasts, family_summary
from analysis.lib.overfitting import analyse
from analysis.lib.results import write_results
from analysis.lib.stats import difference, mean_ci, welch
from tests.analysis.synthetic import EPOCHS, grid


def test_difference_of_two_intervals_is_welchs_interval_of_their_runs():
    a, b = [0.1, 0.3, 0.2, 0.25, 0.15], [0.5, 0.4, 0.65, 0.45]
    got, want = difference(mean_ci(a), mean_ci(b)), welch(a, b)
    assert got.mean == pytest.approx(want.mean) and got.n == want.n == 4
    assert (got.low, got.high) == pytest.approx((want.low, want.high))


def _at_equal_loss(rows, family):
    (row,) = [c for c in rows if c.family == family and c.where == "at equal training loss"]
    return row


def test_a_family_that_overfits_differs_from_an_under_trained_swin_and_a_like_one_does_not():
    analyses = {"swin": analyse(grid("under-training", seeds=5)), "vit": analyse(grid("overfitting", seeds=5)),
                "bn-cnn": analyse(grid("under-training", seeds=5))}  # fmt: skip
    rows = contrasts(analyses)
    overfits = _at_equal_loss(rows, "vit")  # planted: validation loss + 0.15 at equal training loss
    assert overfits.difference.low > 0.05 and overfits.difference.mean == pytest.approx(0.15, abs=0.03)
    alike = _at_equal_loss(rows, "bn-cnn")
    assert alike.difference.low < 0 < alike.difference.high
    assert {c.arm for c in rows} == {"none"} and {c.family for c in rows} == {"vit", "bn-cnn"}


def test_a_reduced_control_is_contrasted_with_the_swins_same_micro_batches():
    # the Swin's accumulated runs at 64 and 128 carry an extra +0.3 at equal training loss; a
    # control run at micro-batch 32 alone, behaving like the Swin's 32, must contrast near 0
    swin = grid("under-training", seeds=5, batch_shifts={64: 0.3, 128: 0.3})
    control = grid("under-training", seeds=5, batches=(32,))
    summary = family_summary({"swin": swin, "vit": control})
    (row,) = [c for c in summary["contrast"] if c["where"] == "at equal training loss"]
    assert row["micro_batches"] == [32]
    assert row["difference"].low < 0 < row["difference"].high and abs(row["difference"].mean) < 0.05
    # against the Swin's whole grid the same control would look clearly better: the cells matter
    (whole,) = [c for c in contrasts({"swin": analyse(swin), "vit": analyse(control)}) if c.where == "at equal training loss"]
    assert whole.difference.high < -0.1
    # the control's own twins are those of its micro-batch: 32 x 4 against 128 x 1
    assert [(t["micro_batch"], t["accumulation_steps"]) for t in summary["per_family"]["vit"]["equivalence"]] == [(32, 4)]


def test_a_control_without_step_matched_runs_is_contrasted_with_the_swin_read_up_to_its_length():
    # the Swin's unscaled 32 x 4 trains 4 x 40 epochs, the control's 40: the Swin's effects are
    # read from its runs up to epoch 40, at the places the control measured them
    swin = grid("under-training", seeds=5)
    control = grid("under-training", seeds=5, batches=(32,), step_matched=False)
    summary = family_summary({"swin": swin, "vit": control})
    (row,) = [c for c in summary["contrast"] if c["where"] == "at equal training loss"]
    (cut,) = [c for c in contrasts({"swin": analyse(swin, batch_sizes=[32], stop_at=EPOCHS), "vit": analyse(control)})
              if c.where == "at equal training loss"]  # fmt: skip
    (whole,) = [c for c in contrasts({"swin": analyse(swin, batch_sizes=[32]), "vit": analyse(control)})
                if c.where == "at equal training loss"]  # fmt: skip
    assert row["swin"] == cut.swin != whole.swin
    assert row["difference"].low < 0 < row["difference"].high


def test_results_have_a_section_and_a_json_entry_per_family(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for name, kind in (("g", "under-training"), ("g-vit", "overfitting")):
        source = grid(kind, seeds=3)
        target = optuna.create_study(storage=url, study_name=name, direction="maximize")
        for key, value in source.user_attrs.items():
            target.set_user_attr(key, value)
        target.add_trials(source.trials)
    written = write_results(url, {"grid": "g", "grid-vit": "g-vit", "grid-bn-cnn": "absent"}, tmp_path / "out")
    assert tmp_path / "out" / "records" / "grid-vit.jsonl" in written
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    per = verdict["families"]["per_family"]
    assert [a["verdict"] for a in per["swin"]["arms"]] == ["under-training"]
    assert [a["verdict"] for a in per["vit"]["arms"]] == ["overfitting"]
    assert {c["family"] for c in verdict["families"]["contrast"]} == {"vit"}
    assert "Is it the Swin? The same grid per model family" in (tmp_path / "out" / "report.md").read_text()
    assert family_summary({"swin": optuna.load_study(study_name="g", storage=url)})["contrast"] == []
