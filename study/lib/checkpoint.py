"""Checkpoints of running trials, so that a killed or preempted trial resumes from its last
evaluated epoch instead of epoch 0.

After every ``every``-th evaluated epoch that the pruner let through, a trial writes the whole state
of its run (``study.lib.train.Run.state``: model and optimizer, the optimizer step that the
learning-rate schedule reads, every random generator, the counters and the history) to Optuna's
artifact store (``optuna.artifacts.FileSystemArtifactStore``), one file per trial, replaced
atomically (written beside it, then renamed), in a folder beside the storage by default (``--artifacts``
names another: a shared folder for several machines).

A trial that died is failed and queued again by ``RetryHeartbeatStaleTrialCallback`` (and a Ctrl-C
does the same); the copy knows the trials it retries (``retry_history``). It loads the newest
checkpoint among them, checks that it was written for the same configuration and model, reports the
epochs its predecessor reported (so the study sees the same curve, and the pruner is not asked again
about epochs it already let through), records ``resumed_from_epoch`` and says so in one line, then
trains only the epochs after it. A file that cannot be read, or that belongs to another
configuration or another version of the model, is refused with one line naming it, and the trial
starts from epoch 0.

Checkpoints of trials that finished (completed, pruned, failed with their own error) are deleted,
with their predecessors', unless ``keep``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

FORMAT = 1  # the checkpoint layout; a file of another format is refused
RUN_LOCAL = ("data_dir", "device", "compile")  # config fields a resumed run may change
SUFFIX = ".ckpt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, or written for another configuration or model."""


def _retried(trial: optuna.trial.FrozenTrial) -> list[int]:
    """The trials ``trial`` retries, newest first (``retry_history``; none for a first attempt)."""
    with warnings.catch_warnings():  # experimental in Optuna, but the documented way to ask
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(reversed(RetryHeartbeatStaleTrialCallback.retry_history(trial)))


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, whose writes are atomic: a reader (or a process killed
    while writing) never meets a half-written file."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._get_filepath(artifact_id)
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        with open(partial, "wb") as f:
            shutil.copyfileobj(content_body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)


def default_folder(url: str) -> Path:
    """Beside a SQLite file (``DIR/artifacts`` for ``sqlite:///DIR/x.db``); else ``storage/artifacts``."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///")).parent / "artifacts"
    return Path("storage") / "artifacts"


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match: the run's configuration, less what a machine may change."""
    return {k: v for k, v in config.items() if k not in RUN_LOCAL}


@dataclass
class Checkpoints:
    """Where and how often trials checkpoint.

    Args:
        folder: The artifact store's folder (created on first use).
        every: Checkpoint after every ``every``-th evaluated epoch (0: never).
        keep: Keep the checkpoints of finished trials.
    """

    folder: Path
    every: int = 1
    keep: bool = False
    store: AtomicFileSystemArtifactStore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.store = AtomicFileSystemArtifactStore(self.folder)

    @staticmethod
    def artifact_id(study_name: str, number: int) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.=-]', '_', study_name)}.trial-{number}{SUFFIX}"

    def path(self, study_name: str, number: int) -> Path:
        return self.folder / self.artifact_id(study_name, number)

    def saver(self, trial: optuna.Trial) -> Any:
        """``run -> None``: writes the run's state after every ``every``-th call (study.lib.train)."""
        calls = {"n": 0}

        def save(run: Any) -> None:
            calls["n"] += 1
            if self.every and calls["n"] % self.every == 0:
                self.write(trial.study.study_name, trial.number, run)

        return save

    def write(self, study_name: str, number: int, run: Any) -> None:
        """The run's whole state (``study.lib.train.Run``) as the trial's checkpoint, atomically."""
        import torch  # local: reading a study's checkpoints' disk use needs no torch

        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "fingerprint": fingerprint(run.cfg.to_dict()), **run.state()}, buffer)
        buffer.seek(0)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store.write(self.artifact_id(study_name, number), buffer)

    def predecessors(self, trial: optuna.Trial) -> list[int]:
        """The trials this one retries, newest first (none for a first attempt)."""
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        frozen = next((t for t in running if t.number == trial.number), None)
        return [] if frozen is None else _retried(frozen)

    def newest(self, trial: optuna.Trial) -> Path | None:
        """The newest checkpoint a predecessor of ``trial`` left, if any."""
        for number in self.predecessors(trial):
            path = self.path(trial.study.study_name, number)
            if path.is_file():
                return path
        return None

    def resume_point(self, study: optuna.Study, queued: optuna.trial.FrozenTrial) -> int:
        """How far a queued copy would resume: the last epoch its newest predecessor with a
        checkpoint reported (0 when none has one). Ranks copies of one run (``queue_runs``)."""
        for number in _retried(queued):
            if self.path(study.study_name, number).is_file():
                steps = study.get_trials(deepcopy=False)[number].intermediate_values
                return max(steps, default=0)
        return 0

    def load(self, path: Path, config: dict[str, Any]) -> dict[str, Any]:
        """The state in ``path``, checked against ``config``.

        Raises:
            CheckpointError: unreadable, another format, or another configuration.
        """
        import torch

        try:
            with self.store.open_reader(path.name) as f:
                state = torch.load(io.BytesIO(f.read()), weights_only=True)
        except (
            ArtifactNotFound,
            OSError,
            EOFError,
            RuntimeError,
            ValueError,
            TypeError,
            pickle.UnpicklingError,
        ) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} is not a checkpoint of this version")
        if state.get("fingerprint") != fingerprint(config):
            raise CheckpointError(f"checkpoint {path} was written for another configuration")
        return state

    def discard(self, trial: optuna.Trial) -> None:
        """Delete the trial's checkpoint and its predecessors' (unless ``keep``)."""
        if self.keep:
            return
        for number in [trial.number, *self.predecessors(trial)]:
            with contextlib.suppress(ArtifactNotFound):
                self.store.remove(self.artifact_id(trial.study.study_name, number))

    def disk_use(self, study_name: str) -> tuple[int, int]:
        """(files, bytes) of the checkpoints the study has in the folder now."""
        prefix = self.artifact_id(study_name, 0).rsplit(".trial-", 1)[0] + ".trial-"
        files = [p for p in self.folder.glob(f"{prefix}*{SUFFIX}")] if self.folder.is_dir() else []
        return len(files), sum(p.stat().st_size for p in files)
