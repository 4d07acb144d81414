"""python -m study.dashboard serves the storage's studies (a real server on loopback)."""

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import optuna

from tests.conftest import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_dashboard(url: str):
    """``python -m study.dashboard`` on a free loopback port; yields (base URL, process) and stops
    it on exit."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "study.dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        server.wait(timeout=30)


# Loopback requests never go through a proxy, whatever the environment (or an earlier test) set.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, server: subprocess.Popen, timeout: float = 180.0):
    """GET ``url`` as JSON, retrying while the server starts (it competes with the other test
    worker's processes for two cores, so the wait is generous). An HTTP error fails at once; a
    server that never answers fails with the last error and what the server printed."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with LOOPBACK.open(url, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError:
            raise
        except OSError as exc:
            assert server.poll() is None, server.stderr.read()
            last = exc
            time.sleep(0.5)
    server.terminate()
    out, err = server.communicate(timeout=30)
    raise AssertionError(
        f"no answer from {url} within {timeout:.0f} s ({last!r}); the server printed: {out!r} {err!r}"
    )


def test_dashboard_lists_the_studies_of_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="browse-me", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    with running_dashboard(url) as (base, server):
        body = get_json(f"{base}/api/studies", server)
    assert [s["study_name"] for s in body["study_summaries"]] == ["browse-me"]
    assert f"{base}/" in server.stdout.read()


def test_dashboard_refuses_a_missing_database(tmp_path):
    proc = cli("study.dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no database at" in proc.stderr and "python -m study.run first" in proc.stderr
    assert not (tmp_path / "none.db").exists()
