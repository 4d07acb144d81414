"""TrainConfig: every knob of one training run, validated once at construction.

The two accumulation protocols of docs/design.md live here as derived properties, and so does the
single learning-rate scaling rule (``TrainConfig.lr``), so that no other module re-derives them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Datasets the project knows, with the size of the official training split (before the validation
# split is carved out of it) and the size of the official test split. ``digits`` has no official
# split: 1797 images, of which a seeded 20% (360) are held out as its test set.
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "digits": (1437, 360),
    "mnist": (60_000, 10_000),
    "fashion-mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
}
PROTOCOLS = ("paper", "memory")
OPTIMIZERS = ("adam", "adamw", "sgd")
# lr = base_lr * (effective_batch / reference_batch) ** exponent (docs/design.md, "Learning-rate scaling")
LR_SCALING_EXPONENTS: dict[str, float] = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Args:
        dataset: ``digits`` (scikit-learn, offline), ``mnist``, ``fashion-mnist`` or ``cifar10``.
        data_dir: Folder holding the torchvision-format datasets (downloaded there when missing).
        model: Model preset name, of the swin, vit or bn-cnn family (``study.lib.model.PRESETS``).
        batch_size: ``paper`` protocol: the micro-batch; ``memory`` protocol: the effective batch.
        accumulation_steps: Micro-batches whose gradients are summed before one optimizer step.
        protocol: ``paper`` (effective batch = batch_size x accumulation_steps) or ``memory``
            (effective batch = batch_size, micro-batch = batch_size / accumulation_steps).
        epochs: Passes over the training split.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9).
        base_lr: Learning rate before scaling, meant for ``reference_batch_size`` examples.
        lr_scaling: ``none``, ``linear`` or ``sqrt`` scaling of base_lr with the effective batch.
        reference_batch_size: The batch size base_lr is meant for.
        warmup_epochs: Linear warmup length, in epochs (counted in optimizer steps).
        schedule: ``constant`` or ``cosine`` (to zero over all optimizer steps).
        weight_decay: Decay on weights (never on norms, biases or position tables).
        dropout: Dropout after attention/MLP projections and before the head.
        attn_dropout: Dropout on attention weights.
        drop_path: Stochastic-depth rate (largest, at the last block).
        label_smoothing: Cross-entropy label smoothing.
        train_subset: Use only this many training images (after the validation split); None: all.
        val_size: Validation images carved from the training split: a count (>= 1) or a fraction.
        train_eval_size: Size of the fixed training subset on which train accuracy and loss are
            measured in eval mode (capped at the training set).
        eval_every: Evaluate (train subset, validation) every this many epochs, and always at the
            last epoch and at the epochs a caller asks for (the grid's epoch points).
        augment: The dataset's standard augmentation where it has one: CIFAR-10's random 4 px crop
            and horizontal flip, batched on the device; MNIST, Fashion-MNIST and digits have none.
        seed: Seeds the initialization, batch order, dropout and augmentation.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        compile: Wrap the model in ``torch.compile``.
        noise_scale: Measure the gradient noise scale each epoch (``study.lib.noise``): micro-batch vs
            effective-batch gradients; without accumulation, one step in 8 runs as two halves.
    """

    dataset: str = "digits"
    data_dir: str = "data"
    model: str = "swin-nano"
    batch_size: int = 32
    accumulation_steps: int = 1
    protocol: str = "paper"
    epochs: int = 10
    optimizer: str = "adam"
    base_lr: float = 1e-3
    lr_scaling: str = "none"
    reference_batch_size: int = 32
    warmup_epochs: float = 0.0
    schedule: str = "constant"
    weight_decay: float = 0.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    label_smoothing: float = 0.0
    train_subset: int | None = None
    val_size: float = 0.1
    train_eval_size: int = 1000
    eval_every: int = 1
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    noise_scale: bool = False

    def __post_init__(self) -> None:
        validate(self)

    # --- derived quantities (the only place they are computed) -------------------------------
    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step."""
        if self.protocol == "paper":
            return self.batch_size * self.accumulation_steps
        return self.batch_size

    @property
    def micro_batch_size(self) -> int:
        """Samples per forward/backward pass."""
        if self.protocol == "paper":
            return self.batch_size
        return self.batch_size // self.accumulation_steps

    @property
    def lr(self) -> float:
        """Peak learning rate: ``base_lr * (effective_batch / reference_batch) ** p``."""
        exponent = LR_SCALING_EXPONENTS[self.lr_scaling]
        return self.base_lr * (self.effective_batch_size / self.reference_batch_size) ** exponent

    @property
    def num_val(self) -> int:
        """Validation images carved from a complete official training split (``make_splits`` takes
        a fraction of the images actually read, so a partial copy gets a proportional split)."""
        return validation_size(self.dataset, self.val_size)

    @property
    def num_train(self) -> int:
        """Images the optimizer trains on, for a complete copy of the dataset."""
        available = available_training_images(self.dataset, self.val_size)
        return available if self.train_subset is None else self.train_subset

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Fields plus the derived values a reader of a result needs."""
        out = dataclasses.asdict(self)
        out.update(
            effective_batch_size=self.effective_batch_size,
            micro_batch_size=self.micro_batch_size,
            lr=self.lr,
            family=family_of(self.model),
        )
        return out


FAMILIES = ("swin", "vit", "bn-cnn")  # the model families (study.lib.model builds their presets)


def family_of(model: str) -> str:
    """The family of a preset (``vit-nano`` -> ``vit``); another model is its own family."""
    family, _, _size = model.rpartition("-")
    return family if family in FAMILIES else model


def validation_size(dataset: str, val_size: float, *, pool: int | None = None) -> int:
    """Validation images for ``val_size`` (a fraction below 1, else a count).

    Args:
        dataset: Its official training-split size is the pool when ``pool`` is not given.
        val_size: A fraction of the pool, or a count.
        pool: Training images actually read from the files (a partial copy has fewer).
    """
    if val_size < 1:
        return int(round(val_size * (DATASET_SIZES[dataset][0] if pool is None else pool)))
    return int(val_size)


def available_training_images(dataset: str, val_size: float = 0.1, *, pool: int | None = None) -> int:
    """Training images left once the validation split is carved out (the most train_subset can be),
    of the official split or of ``pool`` images actually read."""
    total = DATASET_SIZES[dataset][0] if pool is None else pool
    return total - validation_size(dataset, val_size, pool=pool)


def _choice(name: str, value: object, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _rate(name: str, value: float, *, upper: float = 1.0) -> None:
    if not (0.0 <= value < upper) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, {upper:g}); got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first bad field and what it allows."""
    from study.lib.model import model_names  # local: model imports torch/timm, config should stay light

    _choice("dataset", cfg.dataset, list(DATASET_SIZES))
    _choice("model", cfg.model, model_names())
    _choice("protocol", cfg.protocol, PROTOCOLS)
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("lr_scaling", cfg.lr_scaling, list(LR_SCALING_EXPONENTS))
    _choice("schedule", cfg.schedule, SCHEDULES)
    _choice("device", cfg.device, DEVICES)
    _choice("precision", cfg.precision, PRECISIONS)
    for name in ("batch_size", "accumulation_steps", "epochs", "reference_batch_size", "eval_every"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if cfg.protocol == "memory" and cfg.batch_size % cfg.accumulation_steps:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be divisible by accumulation_steps "
            f"{cfg.accumulation_steps} under the memory protocol (micro-batch = batch / steps)"
        )
    if cfg.noise_scale and cfg.micro_batch_size == cfg.effective_batch_size and cfg.effective_batch_size % 2:
        raise ValueError(
            f"noise_scale splits a batch without accumulation into two halves; batch "
            f"{cfg.effective_batch_size} is odd (use an even batch or accumulation_steps >= 2)"
        )
    if not cfg.base_lr > 0 or not math.isfinite(cfg.base_lr):
        raise ValueError(f"base_lr must be a positive number; got {cfg.base_lr!r}")
    if cfg.weight_decay < 0 or not math.isfinite(cfg.weight_decay):
        raise ValueError(f"weight_decay must be >= 0; got {cfg.weight_decay!r}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={cfg.epochs}]; got {cfg.warmup_epochs!r}")
    _rate("dropout", cfg.dropout)
    _rate("attn_dropout", cfg.attn_dropout)
    _rate("drop_path", cfg.drop_path)
    _rate("label_smoothing", cfg.label_smoothing)
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0; got {cfg.seed!r}")
    if cfg.train_eval_size < 1:
        raise ValueError(f"train_eval_size must be >= 1; got {cfg.train_eval_size!r}")

    full_train = DATASET_SIZES[cfg.dataset][0]
    if cfg.val_size <= 0 or (cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size)):
        raise ValueError(f"val_size must be a fraction in (0, 1) or a whole count >= 1; got {cfg.val_size!r}")
    if cfg.num_val >= full_train:
        raise ValueError(
            f"val_size {cfg.val_size!r} leaves no training data: {cfg.dataset} has {full_train} "
            "training images"
        )
    available = available_training_images(cfg.dataset, cfg.val_size)
    if cfg.train_subset is not None and not 1 <= cfg.train_subset <= available:
        raise ValueError(
            f"train_subset must be in [1, {available}] for {cfg.dataset} with val_size "
            f"{cfg.val_size!r}; got {cfg.train_subset!r}"
        )
    if cfg.effective_batch_size > cfg.num_train:
        raise ValueError(
            f"effective batch {cfg.effective_batch_size} (batch_size {cfg.batch_size}, "
            f"accumulation_steps {cfg.accumulation_steps}, protocol {cfg.protocol}) is larger than "
            f"the training set ({cfg.num_train} images of {cfg.dataset}); lower batch_size or "
            "accumulation_steps"
        )
