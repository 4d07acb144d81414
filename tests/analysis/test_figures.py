"""analysis.lib.figures: figures are PNG bytes in memory, written only by the caller."""

import pytest

from analysis.lib.document import write_png
from analysis.lib.figures import progress_limits, pyplot, steps_figure, twin_differences, twins_figure
from analysis.lib.overfitting import Run, runs_from_study, twin_pairs
from tests.analysis.synthetic import N, grid

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_steps_figure_is_a_png(tmp_path):
    study = grid("under-training", seeds=2)
    figure = steps_figure(runs_from_study(study), arm="none", n=N, name="steps")
    assert figure.png[:8] == PNG
    assert list(tmp_path.iterdir()) == []  # drawing writes nothing
    path = write_png(figure, tmp_path / "f")
    assert path == tmp_path / "f" / "steps.png" and path.read_bytes() == figure.png


def test_no_steps_figure_for_an_arm_without_runs():
    study = grid("under-training", seeds=2)
    assert steps_figure(runs_from_study(study), arm="no-such-arm", n=N, name="steps") is None


def _run(accumulation: int, train_loss: list[float], val_loss: list[float]) -> Run:
    epochs = [5 * (i + 1) for i in range(len(train_loss))]
    return Run(accumulation, "digits", 32, accumulation, "none", 0,
               {"epoch": epochs, "train_eval_loss": train_loss, "val_loss": val_loss})  # fmt: skip


def test_the_progress_axes_cover_the_baselines_and_name_where_a_longer_run_ends():
    base = _run(1, [2.0, 1.0, 0.5], [1.9, 1.5, 1.8])
    longer = _run(4, [1.8, 0.9, 0.4, 0.05], [1.8, 1.5, 2.0, 3.9])  # step-matched: trains further
    _, (ax, other) = pyplot().subplots(1, 2)
    progress_limits(ax, [(base, longer)], 4)
    assert ax.get_xlim() == (2.0 * 1.05, 0.5 / 1.05)  # inverted: training goes left to right
    low, high = ax.get_ylim()
    assert low < 1.5 and 1.9 < high < 2.0
    (note,) = ax.texts
    assert "training loss 0.05" in note.get_text() and "validation loss 3.9 (epoch 20)" in note.get_text()
    # a shorter run that starts further back (a higher training loss) is drawn whole, with no note
    progress_limits(other, [(base, _run(4, [2.5, 1.1], [2.2, 1.6]))], 4)
    assert other.get_xlim()[0] == 2.5 * 1.05 and other.get_ylim()[1] > 2.2
    assert len(other.texts) == 0


def _twin(batch: int, accumulation: int, seed: int, train_loss: list[float], val_accuracy: list[float]) -> Run:
    epochs = [5 * (i + 1) for i in range(len(train_loss))]
    return Run(seed, "digits", batch, accumulation, "none", seed,
               {"epoch": epochs, "train_eval_loss": train_loss, "val_accuracy": val_accuracy})  # fmt: skip


def test_the_twins_figure_shows_accumulated_minus_the_larger_batch_per_epoch():
    same = [_twin(8, 4, 0, [1.0, 0.5], [0.5, 0.6]), _twin(32, 1, 0, [1.0, 0.5], [0.5, 0.6])]
    # a BatchNorm-like pair: the accumulated run ends with a lower loss and higher accuracy; the
    # twin evaluated one more epoch, which is not compared
    other = [_twin(8, 4, 1, [0.9, 0.4], [0.52, 0.65]), _twin(32, 1, 1, [1.0, 0.5, 0.3], [0.5, 0.6, 0.6])]
    epochs, loss, accuracy = twin_differences(twin_pairs(same + other)[(8, 4)])
    assert epochs == [5, 10]
    assert loss[0] == accuracy[0] == [0.0, 0.0]
    assert loss[1] == pytest.approx([-0.1, -0.1]) and accuracy[1] == pytest.approx([0.02, 0.05])
    figure = twins_figure({"swin": same, "bn-cnn": other})
    assert figure.name == "twins" and figure.png[:8] == PNG
    assert twins_figure({"swin": [same[1]]}) is None  # no (b x N) run with its (bN x 1) twin
