"""analysis.lib.figures: figures are PNG bytes in memory, written only by the caller."""

from analysis.lib.document import write_png
from analysis.lib.figures import steps_figure
from analysis.lib.overfitting import runs_from_study
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
