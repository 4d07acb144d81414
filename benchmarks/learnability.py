"""Does the Swin learn the task? Candidate presets and geometries against non-Swin references.

Every candidate trains with the paper's baseline recipe (Adam, constant lr 1e-3 or --base-lr,
batch 32, no accumulation, no weight decay, dropout or drop-path) on the same split of the same data; beside
them, on that split, two references a reader knows: scikit-learn's logistic regression on the
pixels, and a 256-unit MLP trained in the same loop (same batches, same optimizer). A Swin that
ends below the logistic regression has not learned the task at this budget, and a study run on it
would find "under-training" by construction.

Printed per candidate: validation accuracy after each epoch, training images per second, and the
seconds (training wall-clock, and CPU seconds of the process: both cores count) until validation
accuracy first reached each threshold.

Usage::

    python -m benchmarks.learnability                                  # Fashion-MNIST, 10,240 images
    python -m benchmarks.learnability --train-subset 4000 --epochs 5   # shorter
    python -m benchmarks.learnability --candidates nano-p4w4,mini-p4w4 --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from benchmarks.references import MLP, cpu_seconds, logistic_regression, register
from study.lib.cli import render_table
from study.lib.config import TrainConfig
from study.lib.data import load_raw
from study.lib.model import PRESETS, Geometry, SwinPreset
from study.lib.train import EpochMetrics, train

# Candidates: (preset, geometry). Presets not shipped in study.lib.model are registered for this
# process only, so that train() can build them.
EXTRA_PRESETS = {
    "swin-mini": SwinPreset(embed_dim=48, depths=(2, 2), num_heads=(3, 6)),
    "swin-nano-deep": SwinPreset(embed_dim=32, depths=(2, 4), num_heads=(2, 4)),
    "swin-micro-deep": SwinPreset(embed_dim=96, depths=(2, 6), num_heads=(3, 6)),  # swin-micro before
}
OLD_28 = Geometry(input_size=28, patch_size=2, window_size=7)  # the geometry before the 32 px padding
PAD_32 = Geometry(input_size=32, patch_size=4, window_size=4)
PAD_32_P2 = Geometry(input_size=32, patch_size=2, window_size=4)
CANDIDATES: dict[str, tuple[str, Geometry]] = {
    "nano-28p2w7": ("swin-nano", OLD_28),
    "nano-p4w4": ("swin-nano", PAD_32),
    "nano-deep-p4w4": ("swin-nano-deep", PAD_32),
    "mini-p4w4": ("swin-mini", PAD_32),
    "nano-p2w4": ("swin-nano", PAD_32_P2),
    "micro-p4w4": ("swin-micro", PAD_32),
    "micro-deep-p4w4": ("swin-micro-deep", PAD_32),
}
DEFAULT_CANDIDATES = ("nano-28p2w7", "nano-p4w4", "mini-p4w4", "micro-p4w4")
THRESHOLDS = (0.80, 0.85, 0.88)


@dataclass
class Row:
    name: str
    parameters: int
    val_accuracy: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)  # cumulative, training only
    cpu_seconds: list[float] = field(default_factory=list)  # cumulative, whole run (evaluation too)
    images_per_second: float = math.nan
    steps_per_epoch: int = 0

    def first_reaching(self, threshold: float) -> tuple[float, float] | None:
        """(training seconds, CPU seconds) at the first epoch whose val accuracy >= threshold."""
        for acc, wall, cpu in zip(self.val_accuracy, self.train_seconds, self.cpu_seconds, strict=True):
            if acc >= threshold:
                return wall, cpu
        return None


def run_model(name: str, cfg: TrainConfig, raw, geometry: Geometry | None = None) -> Row:
    """Train ``cfg.model`` in ``study.lib.train.train`` and record its validation accuracy per epoch."""
    if cfg.precision == "bf16":
        name = f"{name} bf16"
    row = Row(name, 0)
    start_cpu = cpu_seconds()

    def on_epoch(m: EpochMetrics) -> None:
        row.val_accuracy.append(m.val_accuracy)
        row.train_seconds.append(m.train_seconds)
        row.cpu_seconds.append(cpu_seconds() - start_cpu)
        print(
            f"  {name} epoch {m.epoch}: val acc {m.val_accuracy:.4f}  {m.images_per_second:.0f} img/s",
            file=sys.stderr,
        )

    result = train(cfg, on_epoch=on_epoch, raw=raw, geometry=geometry)
    row.parameters = result.num_parameters
    row.images_per_second = result.final["images_per_second"]
    row.steps_per_epoch = result.history[0].optimizer_steps
    return row


def run_swin(name: str, cfg: TrainConfig, raw) -> Row:
    preset, geometry = CANDIDATES[name]
    return run_model(name, cfg.replace(model=preset), raw, geometry)


def run_mlp(cfg: TrainConfig, raw) -> Row:
    """The 256-unit MLP (``benchmarks.references``) in the Swin's loop: same split, batches, optimizer;
    it sees the images as the Swin does (MNIST-sized ones zero-padded to 32 px)."""
    return run_model(MLP, cfg.replace(model=MLP), raw)


def run_logistic_regression(cfg: TrainConfig, raw) -> Row:
    """scikit-learn's multinomial logistic regression on standardized pixels, same split."""
    start_cpu, tick = cpu_seconds(), time.perf_counter()
    accuracy = logistic_regression(cfg, raw)
    row = Row("logistic-regression", 0)
    row.val_accuracy = [accuracy]
    row.train_seconds = [time.perf_counter() - tick]
    row.cpu_seconds = [cpu_seconds() - start_cpu]
    return row


def render(rows: list[Row], thresholds: tuple[float, ...], *, markdown: bool) -> str:
    header = [
        "model",
        "params",
        "val acc per epoch",
        "last",
        "img/s",
        *(f"s to {t:.2f} (cpu s)" for t in thresholds),
    ]
    body = []
    for r in rows:
        reach = []
        for t in thresholds:
            hit = r.first_reaching(t)
            reach.append("-" if hit is None else f"{hit[0]:.0f} ({hit[1]:.0f})")
        per_epoch = " ".join(f"{a:.3f}" for a in r.val_accuracy) if len(r.val_accuracy) > 1 else "(fit)"
        ips = "-" if math.isnan(r.images_per_second) else f"{r.images_per_second:.0f}"
        body.append(
            [
                r.name,
                f"{r.parameters / 1e6:.2f}M" if r.parameters else "-",
                per_epoch,
                f"{r.val_accuracy[-1]:.3f}",
                ips,
                *reach,
            ]
        )
    return render_table(header, body, markdown=markdown)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "cifar10", "digits"]
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--train-subset", type=int, default=10_240, help="training images (default: 10240)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images (default: 5000)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--base-lr",
        type=float,
        default=1e-3,
        help="Adam's constant lr for every model (default: 1e-3, the grid's baseline)",
    )
    parser.add_argument(
        "--candidates",
        default=",".join(DEFAULT_CANDIDATES),
        help=f"comma-separated, of: {', '.join(CANDIDATES)} (default: {','.join(DEFAULT_CANDIDATES)})",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        help="fp32 (the default), bf16 (autocast), or both: each candidate once per precision",
    )
    parser.add_argument("--no-references", action="store_true", help="skip logistic regression and the MLP")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    for preset, spec in EXTRA_PRESETS.items():
        PRESETS.setdefault(preset, spec)
    register()

    raw = load_raw(args.dataset, args.data_dir)
    cfg = TrainConfig(  # the paper's baseline recipe
        dataset=args.dataset,
        data_dir=args.data_dir,
        batch_size=32,
        accumulation_steps=1,
        optimizer="adam",
        base_lr=args.base_lr,
        lr_scaling="none",
        schedule="constant",
        epochs=args.epochs,
        train_subset=args.train_subset,
        val_size=args.val_size,
        train_eval_size=1000,
        seed=args.seed,
        device="cpu",
    )
    print(
        f"{args.dataset}: {args.train_subset} training and {args.val_size} validation images, {args.epochs} epochs, "
        f"Adam lr {args.base_lr:g}, batch 32, seed {args.seed}; cpu, {torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    rows = []
    if not args.no_references:
        rows.append(run_logistic_regression(cfg, raw))
        rows.append(run_mlp(cfg, raw))
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    for name in names:
        for precision in precisions:
            rows.append(run_swin(name, cfg.replace(precision=precision), raw))
            print(render(rows[-1:], THRESHOLDS, markdown=False), file=sys.stderr, flush=True)
    print(render(rows, THRESHOLDS, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
