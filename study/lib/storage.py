"""The one place storage is resolved: URL, heartbeat, stale-trial retry, password masking.

Default: SQLite at ``storage/studies.db`` (relative to the working directory, created on demand).
Any SQLAlchemy URL works, e.g. ``postgresql+psycopg://user:pw@host/db``; it may also come from the
environment variable ``STUDY_STORAGE`` so a password stays off the command line.

A worker sends a heartbeat every ``heartbeat_interval`` seconds while a trial runs. A trial whose
heartbeat is older than ``grace_period`` (its worker was killed) is marked FAIL by the next worker
that starts a trial, and Optuna's ``RetryHeartbeatStaleTrialCallback`` (``RetryFailedAttempt``)
enqueues a copy of it, so it is retried and never left RUNNING. Both durations may come from the environment
(``STUDY_HEARTBEAT_INTERVAL``, ``STUDY_GRACE_PERIOD``, whole seconds): shorter ones find a lost worker
sooner (the fault tests use 1 and 2), longer ones suit a slow shared database.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from study.lib.records import ATTEMPT_ATTRS

DEFAULT_STORAGE = "sqlite:///storage/studies.db"
STORAGE_ENV = "STUDY_STORAGE"
HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
GRACE_PERIOD = 30  # a RUNNING trial with no heartbeat for this long is stale
MAX_RETRY = 3  # a stale trial is re-run at most this many times
SQLITE_BUSY_TIMEOUT = 60  # seconds a writer waits for SQLite's lock instead of failing
HEARTBEAT_ENV = "STUDY_HEARTBEAT_INTERVAL"
GRACE_ENV = "STUDY_GRACE_PERIOD"


class StorageError(ValueError):
    """The storage URL is malformed or unusable."""


class RetryFailedAttempt(RetryHeartbeatStaleTrialCallback):
    """Optuna's ``RetryHeartbeatStaleTrialCallback``: enqueue a WAITING copy of a trial whose worker
    was lost (same params, system attrs ``failed_trial`` and ``retry_history``, at most
    ``max_retry`` times), without the user attrs of the failed attempt (``ATTEMPT_ATTRS``), so
    the retry is not mistaken for the attempt that died."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        super().__call__(study, trial)


def retry_callback() -> RetryFailedAttempt:
    """The retry of a lost or interrupted trial: the storage's heartbeat callback, and the one the
    Ctrl-C and lost-worker paths of ``study.lib.workers`` call, so all share ``retry_history`` and
    its limit (``MAX_RETRY``)."""
    return RetryFailedAttempt(max_retry=MAX_RETRY)


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$STUDY_STORAGE``, else the default SQLite file.

    Raises:
        StorageError: the URL does not parse or names no database driver SQLAlchemy knows.
    """
    url = url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
        # Import the driver now: without it Optuna says only "Failed to import DB access module".
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError as exc:  # (a subclass of ArgumentError) unknown database or driver name
        raise StorageError(
            f"unusable storage URL {mask(url)!r} ({exc}); "
            "expected e.g. sqlite:///storage/studies.db or postgresql+psycopg://user@host/db"
        ) from None
    except (ArgumentError, ValueError) as exc:
        raise StorageError(f"malformed storage URL {mask(url)!r}: {exc}") from None
    except ImportError as exc:  # a known database whose driver is not installed
        raise StorageError(
            f"storage URL {mask(url)!r} needs the {parsed.get_backend_name()} driver "
            f"{parsed.get_driver_name()!r}, which is not installed ({exc}); "
            + _driver_hint(parsed.get_backend_name())
        ) from None
    return url


def _driver_hint(backend: str) -> str:
    if backend == "postgresql":
        return (
            "for PostgreSQL install the postgres extra (pip install -e '.[postgres]', psycopg 3) and "
            "write the URL as postgresql+psycopg://user@host/db"
        )
    return f"install a Python driver for {backend} and name it in the URL ({backend}+DRIVER://...)"


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


def heartbeat_settings(
    heartbeat_interval: int | None = None, grace_period: int | None = None
) -> tuple[int, int]:
    """The heartbeat interval and grace period: the arguments, else ``$STUDY_HEARTBEAT_INTERVAL``
    and ``$STUDY_GRACE_PERIOD``, else 10 and 30 seconds.

    Raises:
        StorageError: a value is not a whole number of seconds >= 1, or the grace period is not
            longer than the interval (a live worker's trial would be failed between two heartbeats).
    """
    values = []
    for given, env, default in (
        (heartbeat_interval, HEARTBEAT_ENV, HEARTBEAT_INTERVAL),
        (grace_period, GRACE_ENV, GRACE_PERIOD),
    ):
        text = str(given) if given is not None else os.environ.get(env) or str(default)
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise StorageError(f"{env} must be a whole number of seconds >= 1; got {text!r}")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(
            f"{GRACE_ENV} ({grace}) must be longer than {HEARTBEAT_ENV} ({interval}), or a live "
            "worker's trial would be failed between two heartbeats"
        )
    return interval, grace


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases or in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    create: bool = True,
) -> RDBStorage:
    """An RDBStorage with heartbeat and stale-trial retry.

    Args:
        url: A resolved URL (see ``resolve_url``).
        heartbeat_interval: Seconds between heartbeats of a running trial (default:
            ``$STUDY_HEARTBEAT_INTERVAL`` or 10, see ``heartbeat_settings``).
        grace_period: Seconds without heartbeat after which a RUNNING trial is failed and retried
            (default: ``$STUDY_GRACE_PERIOD`` or 30).
        create: Create the SQLite file's folder when missing. With False, a missing SQLite file
            is an error instead of a new empty database, and the heartbeat variables are not read
            (for read-only tools).
    """
    if create:
        heartbeat_interval, grace_period = heartbeat_settings(heartbeat_interval, grace_period)
    else:  # a read-only tool never runs a trial: the heartbeat variables are not its concern
        heartbeat_interval = heartbeat_interval or HEARTBEAT_INTERVAL
        grace_period = grace_period or GRACE_PERIOD
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
                heartbeat_stale_trial_callback=retry_callback(),
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
    read-only tools and rejected commands leave the file byte-for-byte as it was.

    Every transaction starts with ``BEGIN IMMEDIATE`` (it takes SQLite's write lock at once).
    Optuna hands a queued trial to a worker by reading that it is WAITING and then marking it
    RUNNING, locked with ``SELECT ... FOR UPDATE``, which SQLite ignores; pysqlite's default
    ``BEGIN`` only at the first write left the two steps unprotected, so two workers popping at
    once could both run the same queued trial (seen with ``study.grid --workers 2``: 8 of 40
    trials handed out twice in ``tests/test_storage.py``'s race, and a crash at ``tell``). Readers
    still never wait in WAL mode; writers wait for each other (``SQLITE_BUSY_TIMEOUT``)."""
    if storage.engine.dialect.name != "sqlite":
        return

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite begins nothing itself: "begin" below does
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(storage.engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    storage.engine.dispose()  # connections opened while Optuna created the tables lack the pragmas


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())
