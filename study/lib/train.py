"""The Swin trainer: ``train(cfg, on_epoch) -> TrainResult`` (``python -m study.train`` runs it).

The trainer knows nothing of Optuna: a caller that wants to prune passes ``on_epoch``, which sees
each epoch's metrics and returns True to stop the run.
"""

from __future__ import annotations

import functools
import math
import resource
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from study.lib.config import TrainConfig
from study.lib.data import DataSplits, RawDataset, epoch_batches, load_raw, make_splits, normalize
from study.lib.jsonsafe import finite_or_none
from study.lib.model import Geometry, build_model, count_parameters, geometry_for
from study.lib.noise import NOISE_KEYS, NoiseScaleMeter

EVAL_BATCH_SIZE = 1024
# How often (in optimizer steps) the running loss is checked for NaN/inf. Each check is a device
# sync, so not every step; a diverged run wastes at most this many steps.
DIVERGENCE_CHECK_EVERY = 25
# Parameters that must not be decayed even when they are not 1-D: Swin's position tables.
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed")

COMPLETED, STOPPED, DIVERGED = "completed", "stopped", "diverged"


class ResumeError(ValueError):
    """A state to resume from does not fit this run's model or optimizer (another code version)."""


@dataclass
class EpochMetrics:
    """What every epoch records (docs/design.md, "What a run records")."""

    epoch: int
    train_loss: float  # running mean over the steps since the last evaluation (train mode)
    train_eval_loss: float  # eval mode, fixed training subset: the progress measure
    train_accuracy: float  # eval mode, fixed training subset
    val_loss: float
    val_accuracy: float
    generalization_gap: float  # train_accuracy - val_accuracy
    optimizer_steps: int  # cumulative
    samples_seen: int  # cumulative training samples
    lr: float  # learning rate at the last step of the epoch
    wall_seconds: float  # cumulative, training and evaluation
    train_seconds: float  # cumulative, training only
    images_per_second: float  # training samples since the last evaluation / their training seconds
    peak_memory_bytes: int
    test_accuracy: float | None = None  # only at the epochs train() was asked to test (test_at)
    # Gradient noise scale (study.lib.noise), only when TrainConfig.noise_scale is on: the epoch's
    # mean estimates of |G|^2 and tr(Sigma), and B_simple = tr(Sigma) / |G|^2.
    grad_norm_sq: float | None = None
    grad_trace_sigma: float | None = None
    grad_noise_scale: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The metrics as a dict; without a noise measurement the noise keys are left out, so a
        run without the option records exactly what it did before the option existed."""
        out = asdict(self)
        if self.grad_noise_scale is None:
            for key in NOISE_KEYS:
                del out[key]
        return out


@dataclass
class TrainResult:
    status: str  # completed, stopped (on_epoch asked), diverged (non-finite loss)
    config: dict[str, Any]
    history: list[EpochMetrics]
    final: dict[str, Any]
    device: str
    num_parameters: int
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model

    def to_dict(self) -> dict[str, Any]:
        # NaN/inf -> null: a diverged run has a NaN loss
        return finite_or_none(
            {
                "status": self.status,
                "config": self.config,
                "history": [m.as_dict() for m in self.history],
                "final": self.final,
                "device": self.device,
                "num_parameters": self.num_parameters,
            }
        )


# --- learning rate: the one place it is computed -------------------------------------------------
def learning_rate(step: int, *, peak_lr: float, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warmup from ``peak_lr / warmup_steps`` to ``peak_lr`` over the first ``warmup_steps``
    steps, then ``constant`` (the paper protocol) or ``cosine`` decay reaching zero after
    ``total_steps`` steps. ``peak_lr`` is ``TrainConfig.lr``, the scaled rate.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weights only: norms, biases (all 1-D) and position tables are never decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(key in name for key in NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was requested but no CUDA device is available; use --device cpu")
    return torch.device(requested)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # CPU: the process's peak resident set (Linux reports KiB); it includes the interpreter.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    data: DataSplits,
    *,
    autocast: torch.autocast,
    channels_last: bool,
) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy, in eval mode, no augmentation."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        x = normalize(images[start : start + EVAL_BATCH_SIZE], data.mean, data.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[start : start + EVAL_BATCH_SIZE]
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(1, len(labels))
    return loss_sum.item() / n, correct.item() / n


def optimizer_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    parts: int,
    autocast: torch.autocast,
    label_smoothing: float = 0.0,
    meter: NoiseScaleMeter | None = None,
) -> torch.Tensor:
    """One optimizer step on an effective batch ``x`` (B, C, H, W), accumulated over ``parts``
    micro-batches of B / parts: the one place a batch is split. Returns the batch's mean loss.

    Each micro-batch loss is divided by ``parts``, so the summed gradients are exactly the gradient
    of the effective batch's mean loss: accumulation is the larger batch. ``meter`` (the gradient
    noise scale) only reads the gradients after each backward pass.
    """
    mean_loss = torch.zeros((), device=x.device)
    for x_micro, y_micro in zip(x.split(len(x) // parts), y.split(len(y) // parts), strict=True):
        with autocast:
            logits = net(x_micro)
        loss = F.cross_entropy(logits.float(), y_micro, label_smoothing=label_smoothing) / parts
        loss.backward()
        mean_loss += loss.detach()
        if meter is not None:
            meter.micro_batch_done()
    if meter is not None:
        meter.step_done()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss


def evaluated_epochs(cfg: TrainConfig, test_at: Collection[int] = ()) -> set[int]:
    """The epochs after which a run is measured: every ``cfg.eval_every``-th, the last, and
    ``test_at`` (a grid's epoch points)."""
    epochs = set(range(cfg.eval_every, cfg.epochs + 1, cfg.eval_every)) | {cfg.epochs}
    return epochs | {e for e in test_at if 1 <= e <= cfg.epochs}


@dataclass
class Run:
    """Everything a run holds while it trains: data, model, optimizer, random generators, the
    noise meter, counters and history. ``state`` and ``restore`` are what a checkpoint keeps."""

    cfg: TrainConfig
    device: torch.device
    data: DataSplits
    model: torch.nn.Module
    net: torch.nn.Module  # the model, compiled when cfg.compile
    optimizer: torch.optim.Optimizer
    autocast: torch.autocast
    channels_last: bool
    measure: Measurement
    meter: NoiseScaleMeter | None
    schedule: Callable[[int], float]  # optimizer step -> learning rate
    order_generator: torch.Generator  # the batch order
    augment_generator: torch.Generator  # the augmentation's draws
    evaluate_after: set[int]
    progress: Progress = field(default_factory=lambda: Progress())
    history: list[EpochMetrics] = field(default_factory=list)
    epoch: int = 0  # epochs finished

    def state(self) -> dict[str, Any]:
        """Everything the rest of the run depends on, after an evaluated epoch (the meter has just
        been read and the loss interval reset, so neither holds anything)."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "order": self.order_generator.get_state(),
                "augment": self.augment_generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            },  # fmt: skip
            "progress": self.progress.counters(),
            "history": [m.as_dict() for m in self.history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.order_generator.set_state(state["rng"]["order"])
        self.augment_generator.set_state(state["rng"]["augment"])
        if state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.progress.resume(state["progress"])
        self.history = [EpochMetrics(**m) for m in state["history"]]


def start(
    cfg: TrainConfig, *, raw: RawDataset | None, test_at: Collection[int], geometry: Geometry | None
) -> Run:
    """Seed, load the splits onto the device, build the model, optimizer, schedule and meters."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    raw = raw if raw is not None else load_raw(cfg.dataset, cfg.data_dir)
    geometry = geometry or geometry_for(int(raw.train_images.shape[-1]))
    data = make_splits(cfg, device, raw, input_size=geometry.input_size)
    model = build_model(cfg.model, image_size=data.image_size, in_chans=data.channels, num_classes=10,
                        dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, drop_path=cfg.drop_path,
                        geometry=geometry).to(device)  # fmt: skip
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if cfg.compile else model
    autocast = _autocast(device, cfg.precision)
    steps_per_epoch = len(data.train_labels) // cfg.effective_batch_size
    # The noise meter needs two batch sizes per step: the micro-batches of an accumulated step, or,
    # without accumulation, the two halves of one step in HALVES_EVERY (the same update).
    meter = None
    if cfg.noise_scale:
        meter = NoiseScaleMeter.for_run(model.parameters(), effective=cfg.effective_batch_size,
                                        micro_batches=cfg.accumulation_steps)  # fmt: skip
    return Run(
        cfg=cfg, device=device, data=data, model=model, net=net, optimizer=build_optimizer(cfg, model),
        autocast=autocast, channels_last=channels_last,
        measure=Measurement(net, data, autocast=autocast, channels_last=channels_last, test_at=test_at),
        meter=meter,
        schedule=functools.partial(learning_rate, peak_lr=cfg.lr, total_steps=steps_per_epoch * cfg.epochs,
                                   warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), schedule=cfg.schedule),
        order_generator=torch.Generator().manual_seed(cfg.seed),
        augment_generator=torch.Generator(device=device).manual_seed(cfg.seed),
        evaluate_after=evaluated_epochs(cfg, test_at),
    )  # fmt: skip


def train_epoch(run: Run) -> bool:
    """One epoch of optimizer steps; False when the training loss stopped being finite."""
    cfg, progress = run.cfg, run.progress
    run.net.train()
    progress.start_epoch(run.device)
    finite = True
    batches = epoch_batches(len(run.data.train_labels), effective_batch_size=cfg.effective_batch_size,
                            generator=run.order_generator, device=run.device)  # fmt: skip
    for idx in batches:
        lr = run.schedule(progress.steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        x, y = run.data.training_batch(idx, run.augment_generator, channels_last=run.channels_last)
        parts = cfg.accumulation_steps if run.meter is None else run.meter.parts_of(progress.steps)
        watching = run.meter if parts > 1 else None
        loss = optimizer_step(run.net, run.optimizer, x, y, parts=parts, autocast=run.autocast,
                              label_smoothing=cfg.label_smoothing, meter=watching)  # fmt: skip
        progress.step_done(loss, cfg.effective_batch_size, lr)
        if progress.steps % DIVERGENCE_CHECK_EVERY == 0 and not progress.finite():
            finite = False
            break
    progress.end_epoch(run.device)
    run.epoch += 1
    return finite and progress.finite()


def train(
    cfg: TrainConfig,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    *,
    raw: RawDataset | None = None,
    test_at: Collection[int] = (),
    geometry: Geometry | None = None,
    resume: dict[str, Any] | None = None,
    on_resume: Callable[[Run], None] | None = None,
    on_checkpoint: Callable[[Run], None] | None = None,
) -> TrainResult:
    """Train one configuration and measure it.

    Args:
        cfg: The run.
        on_epoch: Called after every evaluated epoch (``evaluated_epochs``) with its metrics;
            returning True stops the run (status ``stopped``), which is how a caller prunes.
        raw: Already-loaded dataset (saves re-reading files when a process trains many configs).
        test_at: Epochs after which test accuracy is also measured (the paper's 10/20/50-epoch
            points of one long constant-lr run). Test accuracy is never used for selection.
        geometry: Input size, patch and window; default ``study.lib.model.GEOMETRY`` for the
            dataset's image size (``benchmarks.learnability`` passes others to compare them).
        resume: A ``Run.state()`` of this configuration to continue from (a checkpoint); its
            epochs are not trained or reported again.
        on_resume: Called with the run once ``resume`` is restored (before any epoch trains).
        on_checkpoint: Called with the run after every evaluated epoch that ``on_epoch`` did not
            stop (``study.lib.checkpoint`` saves ``run.state()`` there).

    Returns:
        The status, the history of the evaluated epochs and the ``final`` metrics (those of the
        last epoch plus test accuracy). A non-finite training loss ends the run with status
        ``diverged``.
    """
    run = start(cfg, raw=raw, test_at=test_at, geometry=geometry)
    if resume is not None:
        try:
            run.restore(resume)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ResumeError(
                f"the checkpoint does not fit this model ({type(exc).__name__}: {str(exc)[:120]})"
            ) from None
        if on_resume is not None:
            on_resume(run)
    status = COMPLETED
    while run.epoch < cfg.epochs:
        finite = train_epoch(run)
        if run.epoch not in run.evaluate_after and finite:
            continue
        metrics = run.measure(run.epoch, run.progress, noise=run.meter.epoch_values() if run.meter else {})
        run.history.append(metrics)
        if not finite:
            status = DIVERGED
            break
        if on_epoch is not None and on_epoch(metrics):
            status = STOPPED
            break
        if on_checkpoint is not None:
            on_checkpoint(run)
    return finish(run, status)


def finish(run: Run, status: str) -> TrainResult:
    """The result: the history and the final metrics, with the test split measured."""
    test_loss, test_acc = run.measure.test()
    last = run.history[-1]
    final = last.as_dict()
    final.update(
        test_loss=test_loss,
        test_accuracy=test_acc,
        images_per_second=last.samples_seen / max(last.train_seconds, 1e-9),
        wall_seconds=run.progress.wall_seconds(),
        lr=run.cfg.lr,  # the scaled peak rate; the per-epoch history has the scheduled values
        effective_batch_size=run.cfg.effective_batch_size,
        micro_batch_size=run.cfg.micro_batch_size,
        epochs_trained=last.epoch,
    )
    device = run.device
    return TrainResult(status=status, config=run.cfg.to_dict(), history=run.history, final=final,
                       device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                       num_parameters=count_parameters(run.model), model=run.model)  # fmt: skip


class Progress:
    """Counters of a run: optimizer steps, samples, the training loss since the last evaluation
    (a device tensor: no host sync per step), and the clocks (training seconds exclude evaluation)."""

    def __init__(self) -> None:
        self.steps = self.samples = 0
        self.lr = math.nan
        self.start = time.perf_counter()
        self.train_seconds = 0.0
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.interval_steps = self.interval_samples = 0
        self.interval_seconds = 0.0

    def start_epoch(self, device: torch.device) -> None:
        _sync(device)
        self._epoch_start = time.perf_counter()

    def step_done(self, loss: torch.Tensor, samples: int, lr: float) -> None:
        self.loss_sum = self.loss_sum + loss
        self.steps += 1
        self.interval_steps += 1
        self.samples += samples
        self.interval_samples += samples
        self.lr = lr

    def end_epoch(self, device: torch.device) -> None:
        _sync(device)
        seconds = time.perf_counter() - self._epoch_start
        self.train_seconds += seconds
        self.interval_seconds += seconds

    def finite(self) -> bool:
        """Whether the training loss so far in this interval is finite (one device sync)."""
        return bool(math.isfinite(float(self.loss_sum)))

    def take_interval(self) -> tuple[float, float]:
        """The mean training loss (train mode, running) of the steps since the last evaluation and
        their training images per second; starts the next interval."""
        loss = float(self.loss_sum) / max(1, self.interval_steps)
        speed = self.interval_samples / max(self.interval_seconds, 1e-9)
        self._reset_interval()
        return loss, speed

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.start

    def counters(self) -> dict[str, float]:
        """The counters a checkpoint keeps (taken after an evaluation: the interval is empty)."""
        return {"steps": self.steps, "samples": self.samples, "lr": self.lr,
                "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds()}  # fmt: skip

    def resume(self, counters: dict[str, float]) -> None:
        self.steps, self.samples, self.lr = int(counters["steps"]), int(counters["samples"]), counters["lr"]
        self.train_seconds = counters["train_seconds"]
        self.start = time.perf_counter() - counters["wall_seconds"]


class Measurement:
    """What is measured after an evaluated epoch: the fixed training subset and the validation
    split in eval mode, and the test split at the ``test_at`` epochs."""

    def __init__(
        self,
        net: torch.nn.Module,
        data: DataSplits,
        *,
        autocast: torch.autocast,
        channels_last: bool,
        test_at: Collection[int],
    ) -> None:
        self.net, self.data, self.test_at = net, data, set(test_at)
        self.kwargs = {"autocast": autocast, "channels_last": channels_last, "data": data}
        self.device = data.train_images.device

    def test(self) -> tuple[float, float]:
        return evaluate(self.net, self.data.test_images, self.data.test_labels, **self.kwargs)

    def __call__(self, epoch: int, progress: Progress, *, noise: dict[str, float]) -> EpochMetrics:
        train_loss, images_per_second = progress.take_interval()
        d = self.data
        train_eval_loss, train_acc = evaluate(
            self.net, d.train_eval_images, d.train_eval_labels, **self.kwargs
        )
        val_loss, val_acc = evaluate(self.net, d.val_images, d.val_labels, **self.kwargs)
        return EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_eval_loss=train_eval_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            generalization_gap=train_acc - val_acc,
            optimizer_steps=progress.steps,
            samples_seen=progress.samples,
            lr=progress.lr,
            wall_seconds=progress.wall_seconds(),
            train_seconds=progress.train_seconds,
            images_per_second=images_per_second,
            peak_memory_bytes=_peak_memory_bytes(self.device),
            test_accuracy=self.test()[1] if epoch in self.test_at else None,
            **noise,
        )
