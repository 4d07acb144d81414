"""Non-Swin references that show what the data allows at a budget, shared by the benchmarks.

``mlp`` and ``small_cnn`` are models for ``study.lib.train.train`` (registered under
``REFERENCES``' names by ``register()``), so they train in the Swin's own loop: same split, same
batches, same optimizer, same evaluation. ``logistic_regression`` is scikit-learn's, fit on the
standardized pixels of the same split.
"""

from __future__ import annotations

import resource

import numpy as np
import torch

from study.lib.config import TrainConfig
from study.lib.data import make_splits, normalize
from study.lib.model import OTHER_MODELS

MLP_WIDTH = 256
MLP = f"mlp-{MLP_WIDTH}"  # the MLP's model name once registered


def cpu_seconds() -> float:
    """CPU seconds of this process (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mlp(*, image_size: int, in_chans: int, num_classes: int, dropout: float = 0.0) -> torch.nn.Module:
    """Pixels -> 256 ReLU units -> classes."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(in_chans * image_size**2, MLP_WIDTH),
        torch.nn.ReLU(),
        torch.nn.Linear(MLP_WIDTH, num_classes),
    )


def small_cnn(*, image_size: int, in_chans: int, num_classes: int, dropout: float = 0.0) -> torch.nn.Module:
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks (32, 64 channels), then a linear classifier; no
    normalization layers, so that accumulation stays the larger batch here too."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_chans, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * (image_size // 4) ** 2, num_classes),
    )


REFERENCES = {MLP: mlp, "cnn-small": small_cnn}


def register() -> None:
    """Make the references' names valid ``TrainConfig.model`` values in this process."""
    OTHER_MODELS.update(REFERENCES)


def logistic_regression(cfg: TrainConfig, raw) -> float:
    """Validation accuracy of scikit-learn's multinomial logistic regression on standardized pixels."""
    from sklearn.linear_model import LogisticRegression

    data = make_splits(cfg, torch.device("cpu"), raw)

    def flat(images: torch.Tensor) -> np.ndarray:
        return normalize(images, data.mean, data.std).flatten(1).numpy()

    model = LogisticRegression(max_iter=300, C=0.1).fit(flat(data.train_images), data.train_labels.numpy())
    return float((model.predict(flat(data.val_images)) == data.val_labels.numpy()).mean())
