"""The one place storage is resolved: URL, heartbeat, stale-trial retry, password masking.

Default: SQLite at ``storage/studies.db`` (relative to the working directory, created on demand).
Any SQLAlchemy URL works, e.g. ``postgresql+psycopg://user:pw@host/db``; it may also come from the
environment variable ``STUDY_STORAGE`` so a password stays off the command line.

A worker sends a heartbeat every ``heartbeat_interval`` seconds while a trial runs. A trial whose
heartbeat is older than ``grace_period`` (its worker was killed) is marked FAIL by the next worker
that starts a trial, and Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues a copy of it, so
it is retried and never left RUNNING.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

DEFAULT_STORAGE = "sqlite:///storage/studies.db"
STORAGE_ENV = "STUDY_STORAGE"
HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
GRACE_PERIOD = 30  # a RUNNING trial with no heartbeat for this long is stale
MAX_RETRY = 3  # a stale trial is re-run at most this many times
SQLITE_BUSY_TIMEOUT = 60  # seconds a writer waits for SQLite's lock instead of failing


class StorageError(ValueError):
    """The storage URL is malformed or unusable."""


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$STUDY_STORAGE``, else the default SQLite file.

    Raises:
        StorageError: the URL does not parse or names no database driver SQLAlchemy knows.
    """
    url = url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except NoSuchModuleError as exc:  # (a subclass of ArgumentError) unknown database or driver name
        raise StorageError(
            f"unusable storage URL {mask(url)!r} ({exc}); "
            "expected e.g. sqlite:///storage/studies.db or postgresql+psycopg://user@host/db"
        ) from None
    except (ArgumentError, ValueError) as exc:
        raise StorageError(f"malformed storage URL {mask(url)!r}: {exc}") from None
    except ImportError as exc:  # a known database whose driver is not installed
        raise StorageError(
            f"unusable storage URL {mask(url)!r}: its driver is not installed ({exc}); "
            "for PostgreSQL: pip install -e '.[postgres]'"
        ) from None
    return url


def mask(url: str) -> str:
    """The URL with its password replaced by ``***``, for anything printed or logged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: hide everything between ':' and '@' if it looks like one
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            credentials, host = rest.rsplit("@", 1)
            user = credentials.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}"
        return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases or in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def open_storage(
    url: str,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    create: bool = True,
) -> RDBStorage:
    """An RDBStorage with heartbeat and stale-trial retry.

    Args:
        url: A resolved URL (see ``resolve_url``).
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without heartbeat after which a RUNNING trial is failed and retried.
        create: Create the SQLite file's folder when missing. With False, a missing SQLite file
            is an error instead of a new empty database (for read-only tools).
    """
    path = sqlite_path(url)
    engine_kwargs: dict = {}
    if path is not None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise StorageError(f"no database at {path} (storage {mask(url)})")
        # Several worker processes share one file: wait for the lock rather than raising
        # "database is locked".
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    try:
        with warnings.catch_warnings():  # heartbeat and stale-trial retry are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except Exception as exc:
        message = " ".join(str(exc).split()).replace(url, mask(url))
        raise StorageError(f"cannot open storage {mask(url)}: {message[:300]}") from None
    return storage


def tune_for_writing(storage: RDBStorage) -> None:
    """For a SQLite file about to be written by a study (other databases: nothing to do).

    WAL journal with synchronous=NORMAL: a commit no longer waits for an fsync (only WAL
    checkpoints do), which makes Optuna's many small writes (a user attr is one transaction) cheap,
    and readers no longer block the writer when several workers share the file. Durability: a
    power cut may lose the last commits, never corrupt the file (SQLite's WAL guarantee).
    WAL mode is recorded in the file, so this is called only once the command is sure to write:
    read-only tools and rejected commands leave the file byte-for-byte as it was."""
    if storage.engine.dialect.name != "sqlite":
        return

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened while Optuna created the tables lack the pragmas


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())
