"""A private, throwaway PostgreSQL cluster on 127.0.0.1, for the tests and the benchmarks.

``initdb`` into a fresh temporary folder, ``pg_ctl start`` on a free loopback port (its Unix
socket in that folder too, so it touches nothing system-wide), password authentication for one
superuser with a random password, one database; ``pg_ctl stop`` and the folder removed at the end.
As root (CI, containers) the server runs as the ``postgres`` system user (or ``nobody``), since
PostgreSQL refuses to run as root.

    with PostgresCluster() as pg:
        os.environ["STUDY_STORAGE"] = pg.url   # postgresql+psycopg://study:PASSWORD@127.0.0.1:PORT/studies

Binaries: ``initdb`` and ``pg_ctl`` on PATH, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's
``postgresql`` package puts them there, off PATH).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

USER = "study"
DATABASE = "studies"


class ClusterError(RuntimeError):
    """The PostgreSQL binaries are missing, or the cluster did not start."""


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A PostgreSQL server of its own, started on enter and removed on exit (see module docstring).

    Args:
        durable: Keep PostgreSQL's default durability (fsync on every commit). False (the default)
            turns fsync, synchronous_commit and full_page_writes off: a crash may lose the cluster,
            which a throwaway test cluster does not mind, and tests run faster.
        max_connections: The server's connection limit.
    """

    def __init__(self, *, durable: bool = False, max_connections: int = 100) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise ClusterError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                "/usr/lib/postgresql/*/bin; install them with: apt-get install postgresql"
            )
        self.bindir = bindir
        self.durable = durable
        self.max_connections = max_connections
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.folder: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL with the password in it: pass it through ``STUDY_STORAGE``, never argv."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def __enter__(self) -> PostgresCluster:
        self.folder = Path(tempfile.mkdtemp(prefix="study-pgcluster-"))
        try:
            self._start()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
            **kwargs,
        )

    def _start(self) -> None:
        assert self.folder is not None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            for name in ("postgres", "nobody"):
                try:
                    self._run_as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._run_as is None:
                raise ClusterError("running as root and neither a 'postgres' nor a 'nobody' user exists")
            os.chown(self.folder, self._run_as.pw_uid, self._run_as.pw_gid)
        self.folder.chmod(0o700)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        init = self._pg(
            "initdb",
            "--pgdata",
            str(self.folder / "data"),
            "--username",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise ClusterError(f"initdb failed: {init.stderr.strip()[-500:]}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.folder),
            "max_connections": str(self.max_connections),
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        for attempt in range(3):  # a free port may be taken between the check and the start
            self.port = free_port()
            options = " ".join(f"-c {k}={v}" for k, v in {**settings, "port": str(self.port)}.items())
            started = self._pg(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.folder / "data"),
                "--log",
                str(self.folder / "server.log"),
                "--options",
                options,
                "--wait",
                "--timeout",
                "60",
            )
            if started.returncode == 0:
                break
            if attempt == 2:
                log = (self.folder / "server.log").read_text(errors="replace")[-800:]
                raise ClusterError(f"pg_ctl start failed: {started.stderr.strip()[-300:]} {log}")
        self._create_database()

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=self.port,
                    user=USER,
                    password=self.password,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                ) as connection:
                    connection.execute(f"CREATE DATABASE {DATABASE}")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """``pg_ctl stop`` (fast: disconnects clients) and remove the folder; safe to call twice."""
        if self.folder is None:
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            self._pg("pg_ctl", "stop", "--pgdata", str(self.folder / "data"), "--mode", "fast", "--wait")
        self._remove()

    def _remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
