"""Synthetic grid studies with a planted answer, for the verdict and what renders it (no training).

A run's state is its training *progress* p (optimizer steps, times the lr factor of its arm): its
training loss L(p) falls with p, and its validation loss is a U-shaped function V(L) of the
training loss, lowest at L = 0.3 (before it the model learns, after it it overfits). Planted
answers:

* ``under-training``: an accumulated run makes N times fewer steps per epoch, so it is behind at
  matched epochs, but it lies on the baseline's V(L), and reaches the same minimum later;
* ``overfitting``: it progresses per epoch like its baseline, but its validation loss is higher at
  the same training loss (V(L) + 0.15);
* ``both``: behind, and higher at the same training loss;
* ``neither``: the same run as its baseline, up to the measurement noise;
* ``noise``: like ``neither``, but each seed's accumulated runs are offset by a large amount of
  alternating sign (+0.2, -0.15), so that two seeds cannot tell.

Runs measure every epoch (baselines and equal-epoch runs, EPOCHS epochs) or every N-th epoch
(step-matched unscaled runs, N x EPOCHS epochs), as the grid does.
"""

from __future__ import annotations

import math
import random

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

N = 4
BATCHES = (32, 64, 128)
EPOCHS = 40
POINTS = [8, 16, 40]
IMAGES = 1024  # a multiple of 128 x 4: every evaluated epoch of a step-matched run has its baseline epoch
ARM_FACTOR = {"none": 1.0, "linear": float(N), "sqrt": math.sqrt(N)}


def train_loss(p: float) -> float:
    return 2.3 * math.exp(-p / 300) + 0.02


def val_loss(loss: float) -> float:
    return 1.5 + 0.3 * (math.log(loss) - math.log(0.3)) ** 2


def history(*, batch, accumulation, epochs, every, progress, shift, noise):
    """The evaluated epochs of a run: ``progress(epoch, steps)`` -> p, ``shift`` added to V(L),
    ``noise(epoch)`` -> (relative noise on L, additive noise on V)."""
    per_epoch = IMAGES // (batch * accumulation)
    out = {k: [] for k in ("epoch", "optimizer_steps", "train_loss", "train_eval_loss", "train_accuracy",
                           "val_loss", "val_accuracy", "generalization_gap", "train_seconds")}  # fmt: skip
    for e in range(1, epochs + 1):
        if e % every and e not in POINTS:
            continue
        steps = per_epoch * e
        dl, dv = noise(e)
        loss = train_loss(progress(e, steps)) * math.exp(dl)
        v = val_loss(loss) + shift + dv
        train_acc = 1 - 0.9 * (loss - 0.02) / 2.28
        val_acc = 0.55 - 0.1 * (v - 1.5)
        values = (
            e,
            steps,
            loss * 1.05,
            loss,
            train_acc,
            v,
            val_acc,
            train_acc - val_acc,
            0.001 * steps * batch * accumulation,
        )
        for key, value in zip(out, values, strict=True):
            out[key].append(value)
    return out


def add_run(study, *, batch, accumulation, arm, seed, epochs, hist):
    params = {
        "batch_size": batch,
        "accumulation_steps": accumulation,
        "lr_scaling": arm,
        "seed": seed,
        "epochs": epochs,
    }
    study.add_trial(
        create_trial(
            params=params,
            distributions={
                "batch_size": CategoricalDistribution((32, 64, 128, 256, 512)),
                "accumulation_steps": CategoricalDistribution((1, N)),
                "lr_scaling": CategoricalDistribution(("none", "linear", "sqrt")),
                "seed": CategoricalDistribution(tuple(range(10))),
                "epochs": CategoricalDistribution((EPOCHS, N * EPOCHS)),
            },
            value=hist["val_accuracy"][-1],
            user_attrs={"config": {"dataset": "cifar10", **params}, "history": hist},
        )
    )


def grid(
    kind: str, *, seeds: int = 3, arms=("none",), twins: bool = True, offsets=None, batches=BATCHES, batch_shifts=None,
    step_matched: bool = True,
) -> optuna.Study:  # fmt: skip
    """A grid study whose accumulated runs behave as ``kind`` says (module docstring); the
    unscaled arm is step-matched unless ``step_matched`` is False and the (bN x 1) twins are there
    unless ``twins`` is False.
    ``offsets`` (seed -> shift of V(L)) plants a seed-level effect on the accumulated runs,
    ``batch_shifts`` (micro-batch -> shift) one on those of a micro-batch; ``batches``: the
    micro-batches (a reduced design)."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("kind", "grid")
    study.set_user_attr("dataset", "cifar10")
    study.set_user_attr("epoch_points", POINTS)
    study.set_user_attr("arms", list(arms))
    rng = random.Random(0)
    jitter: dict = {}

    def noise(key):  # the same (effective batch, seed, epoch) gets the same noise: twins agree
        return lambda e: jitter.setdefault((*key, e), (rng.gauss(0, 0.01), rng.gauss(0, 0.005)))

    def plain(batch, seed, epochs=EPOCHS):
        return history(batch=batch, accumulation=1, epochs=epochs, every=1,
                       progress=lambda e, s: s, shift=0.0, noise=noise((batch, seed)))  # fmt: skip

    def add_plain(batch, seed):
        add_run(study, batch=batch, accumulation=1, arm="none", seed=seed, epochs=EPOCHS, hist=plain(batch, seed))

    for seed in range(seeds):
        offset = (0.2 if seed % 2 == 0 else -0.15) if kind == "noise" else 0.0
        offset = offsets[seed] if offsets else offset
        for batch in batches:
            add_plain(batch, seed)
            for arm in arms:
                stretch = N if arm == "none" and step_matched else 1
                behind = kind in ("under-training", "both")
                f = ARM_FACTOR[arm]
                progress = (lambda e, s, f=f: s * f) if behind else (lambda e, s, b=batch: e * IMAGES // b)
                shift = {"overfitting": 0.15, "both": 0.15}.get(kind, offset) + (batch_shifts or {}).get(batch, 0.0)
                key = (batch * N, seed) if behind and arm == "none" else (batch, N, arm, seed)
                hist = history(batch=batch, accumulation=N, epochs=EPOCHS * stretch, every=stretch,
                               progress=progress, shift=shift, noise=noise(key))  # fmt: skip
                add_run(
                    study, batch=batch, accumulation=N, arm=arm, seed=seed, epochs=EPOCHS * stretch, hist=hist
                )
        if twins:
            for batch in (b * N for b in batches if b * N not in batches):
                add_plain(batch, seed)
    return study


def stored(tmp_path, kind: str, name: str = "g", **kw) -> str:
    """A synthetic grid study copied into a SQLite file; returns its URL."""
    url = f"sqlite:///{tmp_path / 'v.db'}"
    source = grid(kind, **kw)
    target = optuna.create_study(storage=url, study_name=name, direction="maximize")
    for key, value in source.user_attrs.items():
        target.set_user_attr(key, value)
    target.add_trials(source.trials)
    return url
