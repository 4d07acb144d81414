"""Read-only access to studies in the storage, shared by the analysis commands."""

from __future__ import annotations

import optuna

from study.storage import StorageError, mask, open_storage, resolve_url


class AnalysisError(ValueError):
    """A user-facing problem: unknown study, wrong storage, nothing to analyse."""


def load_studies(names: list[str], storage: str | None) -> list[optuna.Study]:
    """Load existing studies; never creates a database or a study.

    Raises:
        AnalysisError: the storage does not exist or is unusable, or a study is not in it.
    """
    try:
        url = resolve_url(storage)
        rdb = open_storage(url, create=False)
        known = [s.study_name for s in rdb.get_all_studies()]
    except StorageError as exc:
        raise AnalysisError(str(exc)) from None
    studies = []
    for name in names:
        if name not in known:
            listing = ", ".join(sorted(known)[:10]) or "none"
            raise AnalysisError(f"no study {name!r} in {mask(url)}; studies there: {listing}")
        studies.append(optuna.load_study(study_name=name, storage=rdb))
    return studies
