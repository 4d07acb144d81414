"""Shared fixtures: small dataset files in the real on-disk formats, written by the tests."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

# Under pytest-xdist (README's test command: -n 2, one worker per core) every worker and every
# process a test starts trains on one thread: two torch processes with a thread per core each
# slow each other down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> None:
    """Write an unsigned-byte IDX file (MNIST's format): magic 0x0000 0x08 ndim, big-endian dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_mnist_like(raw_folder: Path, *, n_train: int, n_test: int, seed: int = 0, gz: bool = False):
    """IDX files in torchvision's layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(raw_folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(raw_folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        out[prefix] = (images, labels)
    return out


def write_cifar10(folder: Path, *, per_batch: int, seed: int = 0, str_keys: bool = False):
    """CIFAR-10 python pickle batches (data_batch_1..5, test_batch) as torchvision expects.

    ``str_keys``: keys as ``str`` ("data"), as in a copy re-pickled after torchvision's ``latin1``
    load, instead of the official ``bytes`` (b"data")."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": labels}
        if str_keys:
            batch = {k.decode(): v for k, v in batch.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = (data, labels)
    return written


@pytest.fixture
def offline_env(monkeypatch):
    """Send any download to a closed local port, so a test never fetches data from outside.

    urllib builds its default opener, proxies included, on the first ``urlopen`` and keeps it for the
    process: it is reset here and again afterwards, so this dead proxy never outlives the test (it
    once sent a later test's loopback requests of the same pytest worker to port 9)."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` and capture its output."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def small_studies(tmp_path_factory):
    """A quick grid and a 3-trial quick search on digits, in one SQLite file."""
    url = f"sqlite:///{tmp_path_factory.mktemp('studies') / 's.db'}"
    grid = cli(
        "study.grid",
        "--dataset",
        "digits",
        "--budget",
        "quick",
        "--storage",
        url,
        "--study-name",
        "g",
        "--noise-scale",
        "--quiet",
    )
    assert grid.returncode == 0, grid.stderr
    search = cli(
        "study.run",
        "--dataset",
        "digits",
        "--space",
        "quick",
        "--budget",
        "quick",
        "--n-trials",
        "3",
        "--storage",
        url,
        "--study-name",
        "s",
        "--quiet",
    )
    assert search.returncode == 0, search.stderr
    return url


# The offline CIFAR-10 (35,000 real images as JPEGs) that the development and CI machines keep in
# ../shared beside the repository; STUDY_CIFAR10_ARCHIVE points elsewhere.
SHARED_CIFAR10_ARCHIVE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
)


def cifar10_archive() -> Path:
    return Path(os.environ.get("STUDY_CIFAR10_ARCHIVE", SHARED_CIFAR10_ARCHIVE))


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory) -> Path:
    """The real CIFAR-10 images in the official python layout, built once per session into a
    temporary folder (``python -m study.prepare cifar10 ARCHIVE``); returns the data dir."""
    archive = cifar10_archive()
    require(archive.is_file(), f"the offline CIFAR-10 archive is not at {archive} (STUDY_CIFAR10_ARCHIVE)")
    data_dir = tmp_path_factory.mktemp("cifar10")
    proc = cli("study.prepare", "cifar10", str(archive), "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    return data_dir


def require(available: bool, reason: str) -> None:
    """Skip a test whose system dependency (Chromium, PostgreSQL) is missing on this machine, but
    fail it under ``.ci/run`` (STUDY_TESTS_REQUIRE_ALL=1), which installs every dependency: CI
    never passes by skipping."""
    if available:
        return
    if os.environ.get("STUDY_TESTS_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (STUDY_TESTS_REQUIRE_ALL=1: .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url():
    """A private PostgreSQL cluster on 127.0.0.1 for the session (tests/pgcluster.py); its URL
    carries a random password, so tests pass it through STUDY_STORAGE, never on a command line."""
    from tests.pgcluster import PostgresCluster, find_bindir

    require(
        find_bindir() is not None,
        "PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql",
    )
    with PostgresCluster() as cluster:
        yield cluster.url
