"""The one place analysis writes to the storage, and only when asked (``analysis.report --to-dashboard``):
a report's summary note and key figures, saved into the study for optuna-dashboard.

``optuna_dashboard.save_note`` stores the note as a system attr of the study and
``save_plotly_graph_object`` each figure as a plotly graph object, so ``python -m study.dashboard``
shows them on the study's page next to the trials. Publishing again replaces them.
"""

from __future__ import annotations

import optuna

from analysis.lib.document import Document

DASHBOARD_FIGURES = ("importance", "history", "parallel")  # the figures shown in the dashboard


def to_dashboard(study: optuna.Study, document: Document, note: str) -> int:
    """Save ``note`` as the study's note and the document's ``DASHBOARD_FIGURES`` that have a
    plotly version as graph objects; returns how many figures were saved."""
    import optuna_dashboard

    optuna_dashboard.save_note(study, note)
    chosen = [f for f in document.figures() if f.name in DASHBOARD_FIGURES and f.plotly is not None]
    for figure in chosen:
        optuna_dashboard.save_plotly_graph_object(
            study, figure.plotly, graph_object_id=f"report-{figure.name}"
        )
    return len(chosen)
