"""The Swin trainer: ``train(cfg, on_epoch) -> TrainResult``, and ``python -m study.train``.

The trainer knows nothing of Optuna: a caller that wants to prune passes ``on_epoch``, which sees
each epoch's metrics and returns True to stop the run.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from study.config import TrainConfig
from study.data import DataSplits, RawDataset, augment, epoch_batches, load_raw, make_splits, normalize
from study.jsonsafe import finite_or_none
from study.model import Geometry, build_model, count_parameters, geometry_for
from study.noise import NOISE_KEYS, NoiseScaleMeter, measured_parts

EVAL_BATCH_SIZE = 1024
# How often (in optimizer steps) the running loss is checked for NaN/inf. Each check is a device
# sync, so not every step; a diverged run wastes at most this many steps.
DIVERGENCE_CHECK_EVERY = 25
# Parameters that must not be decayed even when they are not 1-D: Swin's position tables.
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed")

COMPLETED, STOPPED, DIVERGED = "completed", "stopped", "diverged"


@dataclass
class EpochMetrics:
    """What every epoch records (DESIGN.md, "Metrics every run records")."""

    epoch: int
    train_loss: float
    train_accuracy: float  # eval mode, fixed training subset
    val_loss: float
    val_accuracy: float
    generalization_gap: float  # train_accuracy - val_accuracy
    optimizer_steps: int  # cumulative
    samples_seen: int  # cumulative training samples
    lr: float  # learning rate at the last step of the epoch
    wall_seconds: float  # cumulative, training and evaluation
    train_seconds: float  # cumulative, training only
    images_per_second: float  # this epoch's training samples / its training seconds
    peak_memory_bytes: int
    test_accuracy: float | None = None  # only at the epochs train() was asked to test (test_at)
    # Gradient noise scale (study.noise), only when TrainConfig.noise_scale is on: the epoch's
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


def train(
    cfg: TrainConfig,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    *,
    raw: RawDataset | None = None,
    test_at: Collection[int] = (),
    geometry: Geometry | None = None,
) -> TrainResult:
    """Train one configuration and measure it.

    Args:
        cfg: The run.
        on_epoch: Called after every epoch with its metrics; returning True stops the run
            (status ``stopped``), which is how a caller prunes.
        raw: Already-loaded dataset (saves re-reading files when a process trains many configs).
        test_at: Epochs after which test accuracy is also measured (the paper's 10/20/50-epoch
            points of one long constant-lr run). Test accuracy is never used for selection.
        geometry: Input size, patch and window; default ``study.model.GEOMETRY`` for the dataset's
            image size (``benchmarks.learnability`` passes others to compare them).

    Returns:
        The status, the per-epoch history and the ``final`` metrics (those of the last epoch plus
        test accuracy). A non-finite training loss ends the run with status ``diverged``.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    raw = raw if raw is not None else load_raw(cfg.dataset, cfg.data_dir)
    geometry = geometry or geometry_for(int(raw.train_images.shape[-1]))
    data = make_splits(cfg, device, raw, input_size=geometry.input_size)
    model = build_model(
        cfg.model,
        image_size=data.image_size,
        in_chans=data.channels,
        num_classes=10,
        dropout=cfg.dropout,
        attn_dropout=cfg.attn_dropout,
        drop_path=cfg.drop_path,
        geometry=geometry,
    ).to(device)
    num_parameters = count_parameters(model)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    net = torch.compile(model) if cfg.compile else model
    autocast = _autocast(device, cfg.precision)

    order_generator = torch.Generator().manual_seed(cfg.seed)
    augment_generator = torch.Generator(device=device).manual_seed(cfg.seed)
    micro, effective = cfg.micro_batch_size, cfg.effective_batch_size
    n_micro = effective // micro
    meter = None
    if cfg.noise_scale:  # without accumulation, some steps run as two halves, for the measurement only
        halves_or_own = max(2, n_micro)
        meter = NoiseScaleMeter(model.parameters(), small=effective // halves_or_own, parts=halves_or_own)
    num_train = len(data.train_labels)
    steps_per_epoch = num_train // effective
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    history: list[EpochMetrics] = []
    status = COMPLETED
    step, samples_seen, lr = 0, 0, cfg.lr
    train_seconds = 0.0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        _sync(device)
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)  # sum of the micro-batches' mean losses
        epoch_steps = 0
        batches = epoch_batches(
            num_train,
            effective_batch_size=effective,
            micro_batch_size=micro,
            generator=order_generator,
            device=device,
        )
        for micro_batches in batches:
            lr = learning_rate(
                step,
                peak_lr=cfg.lr,
                total_steps=total_steps,
                warmup_steps=warmup_steps,
                schedule=cfg.schedule,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Gather, augment and normalize the effective batch once, then split the tensors:
            # per-micro-batch work is only the forward/backward (fewer small ops per step), and
            # augmentation does not depend on how the batch is split.
            idx = micro_batches[0] if n_micro == 1 else torch.cat(micro_batches)
            images = data.train_images[idx]
            if data.augment:
                images = augment(images, augment_generator)
            x = normalize(images, data.mean, data.std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            parts = n_micro if meter is None else measured_parts(n_micro, step)
            measured = meter is not None and parts > 1
            size = effective // parts
            for x_micro, y_micro in zip(x.split(size), data.train_labels[idx].split(size), strict=True):
                with autocast:
                    logits = net(x_micro)
                loss = F.cross_entropy(logits.float(), y_micro, label_smoothing=cfg.label_smoothing)
                # Each micro-batch is 1/parts of the effective batch: the summed gradients are
                # then the gradient of the effective batch's mean loss, exactly.
                (loss / parts if parts > 1 else loss).backward()
                # divided by n_micro once, at the end of the epoch; a step measured as two halves
                # counts as the one micro-batch it is
                loss_sum += loss.detach() if parts == n_micro else loss.detach() * (n_micro / parts)
                if measured:
                    meter.micro_batch_done()
            if measured:
                meter.step_done()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_steps += 1
            samples_seen += effective
            if epoch_steps % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                status = DIVERGED
                break
        _sync(device)
        epoch_train_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_train_seconds
        train_loss = loss_sum.item() / max(1, epoch_steps * n_micro)  # mean of the steps' mean losses
        if not math.isfinite(train_loss):
            status = DIVERGED
        eval_args = {"autocast": autocast, "channels_last": channels_last}
        train_acc = evaluate(net, data.train_eval_images, data.train_eval_labels, data, **eval_args)[1]
        val_loss, val_acc = evaluate(net, data.val_images, data.val_labels, data, **eval_args)
        test_acc = None
        if epoch in test_at:
            test_acc = evaluate(net, data.test_images, data.test_labels, data, **eval_args)[1]
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            generalization_gap=train_acc - val_acc,
            optimizer_steps=step,
            samples_seen=samples_seen,
            lr=lr,
            wall_seconds=time.perf_counter() - start,
            train_seconds=train_seconds,
            images_per_second=epoch_steps * effective / max(epoch_train_seconds, 1e-9),
            peak_memory_bytes=_peak_memory_bytes(device),
            test_accuracy=test_acc,
            **(meter.epoch_values() if meter is not None else {}),
        )
        history.append(metrics)
        if status == DIVERGED:
            break
        if on_epoch is not None and on_epoch(metrics):
            status = STOPPED
            break

    test_loss, test_acc = evaluate(
        net, data.test_images, data.test_labels, data, autocast=autocast, channels_last=channels_last
    )
    last = history[-1]
    final = last.as_dict()
    final.update(
        test_loss=test_loss,
        test_accuracy=test_acc,
        images_per_second=last.samples_seen / max(last.train_seconds, 1e-9),
        wall_seconds=time.perf_counter() - start,
        lr=cfg.lr,  # the scaled peak rate; the per-epoch history has the scheduled values
        effective_batch_size=effective,
        micro_batch_size=cfg.micro_batch_size,
        epochs_trained=len(history),
    )
    return TrainResult(
        status=status,
        config=cfg.to_dict(),
        history=history,
        final=final,
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        num_parameters=num_parameters,
        model=model,
    )


def format_epoch(m: EpochMetrics, epochs: int) -> str:
    return (
        f"epoch {m.epoch}/{epochs}  loss {m.train_loss:.4f}  train acc {m.train_accuracy:.4f}  "
        f"val acc {m.val_accuracy:.4f}  gap {m.generalization_gap:+.4f}  steps {m.optimizer_steps}  "
        f"lr {m.lr:.3g}  {m.images_per_second:.0f} img/s  {m.wall_seconds:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    from study.cli import ArgumentParser, add_config_arguments, config_from_args, fail
    from study.data import DataError

    parser = ArgumentParser(
        prog="study.train",
        description="Train one Swin configuration and print its metrics.",
    )
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        resolve_device(cfg.device)
    except ValueError as exc:
        fail(parser.prog, str(exc))

    def progress(m: EpochMetrics) -> None:
        if not args.quiet:
            print(format_epoch(m, cfg.epochs), file=sys.stderr, flush=True)

    try:
        result = train(cfg, on_epoch=progress)
    except DataError as exc:  # missing, truncated or inconsistent data files: one line, exit 2
        fail(parser.prog, str(exc))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        f = result.final
        print(
            f"{result.status}: val acc {f['val_accuracy']:.4f}  test acc {f['test_accuracy']:.4f}  "
            f"train acc {f['train_accuracy']:.4f}  gap {f['generalization_gap']:+.4f}  "
            f"steps {f['optimizer_steps']}  effective batch {f['effective_batch_size']}  "
            f"lr {f['lr']:.3g}  {f['wall_seconds']:.1f}s on {result.device}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
