"""Where does the paper-protocol baseline overfit? Settings measured side by side, with references.

For each candidate setting (training images x epochs, micro-batch), the paper's baseline recipe
(Adam, constant lr 1e-3, no accumulation, no regularization; ``swin-nano`` unless ``--model``;
CIFAR-10's standard crop and flip unless ``--no-augment``) is trained once, evaluated every ``--eval-every`` epochs in eval mode on all its
training images (up to ``--train-eval-size``) and on the validation split. Beside it, on the same
split and in the same loop (``study.lib.train.train``: same batches, same optimizer, same
evaluation), a 256-unit MLP and a small CNN, and scikit-learn's logistic regression on the pixels,
so that a reader sees what the data allows at this budget.

Printed per run: the validation-loss minimum (its epoch and optimizer steps), the rise of the
validation loss after it (last / minimum), train accuracy and train loss (eval mode) at the last
epoch, the best validation accuracy and the one at the minimum, and the run's seconds (training,
and all of it with evaluation). With ``--epoch-points`` the budget criteria are checked: the
baseline beats the MLP by at least 0.05 validation accuracy at its best epoch; at the last point
its train accuracy is >= 0.80 and its validation loss >= 1.25x its minimum; the minimum lies
between the first and the last point.

Usage::

    python -m benchmarks.overfitting --dataset cifar10 --data-dir data --settings 2560x200 \\
        --epoch-points 40,80,200 --json overfitting.json
    python -m benchmarks.overfitting --settings 2560x200 --batch-sizes 32,64,128 --no-references
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from benchmarks.references import MLP, REFERENCES, cpu_seconds, logistic_regression, register
from study.lib.cli import render_table
from study.lib.config import TrainConfig
from study.lib.data import load_raw
from study.lib.train import EpochMetrics, train

MIN_MLP_MARGIN, MIN_TRAIN_ACCURACY, MIN_RISE = 0.05, 0.80, 1.25  # the cpu budget's criteria


@dataclass
class Curve:
    """One run: its setting and the metrics of its evaluated epochs."""

    model: str
    train_subset: int
    epochs: int
    batch_size: int
    parameters: int = 0
    epoch: list[int] = field(default_factory=list)
    optimizer_steps: list[int] = field(default_factory=list)
    train_eval_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    train_seconds: float = math.nan
    seconds: float = math.nan  # the whole run: training and evaluation
    cpu_seconds: float = math.nan

    @property
    def best(self) -> int:
        """Index of the validation-loss minimum."""
        return int(np.argmin(self.val_loss))

    def summary(self) -> dict[str, float]:
        b = self.best
        return {
            "best_epoch": self.epoch[b],
            "best_steps": self.optimizer_steps[b],
            "min_val_loss": self.val_loss[b],
            "val_accuracy_at_min": self.val_accuracy[b],
            "max_val_accuracy": max(self.val_accuracy),
            "rise": self.val_loss[-1] / self.val_loss[b],
            "last_train_accuracy": self.train_accuracy[-1],
            "last_train_eval_loss": self.train_eval_loss[-1],
            "last_val_accuracy": self.val_accuracy[-1],
        }

    def at(self, epoch: int) -> int:
        return self.epoch.index(epoch)


def run(cfg: TrainConfig, raw) -> Curve:
    curve = Curve(cfg.model, cfg.train_subset, cfg.epochs, cfg.batch_size)
    start_cpu, start = cpu_seconds(), time.perf_counter()

    def on_epoch(m: EpochMetrics) -> None:
        for key in (
            "epoch",
            "optimizer_steps",
            "train_eval_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
        ):
            getattr(curve, key).append(getattr(m, key))
        curve.train_seconds = m.train_seconds
        print(
            f"  {cfg.model} {cfg.train_subset}x{cfg.epochs} b{cfg.batch_size} epoch {m.epoch}: train loss "
            f"{m.train_eval_loss:.3f} acc {m.train_accuracy:.3f}  val loss {m.val_loss:.3f} acc {m.val_accuracy:.3f}"
            f"  {m.images_per_second:.0f} img/s",
            file=sys.stderr,
            flush=True,
        )

    result = train(cfg, on_epoch=on_epoch, raw=raw)
    curve.parameters = result.num_parameters
    curve.seconds, curve.cpu_seconds = time.perf_counter() - start, cpu_seconds() - start_cpu
    return curve


def criteria(base: Curve, mlp_best: float | None, points: list[int]) -> dict[str, bool | float]:
    """The cpu budget's overfitting criteria for a baseline curve at ``points`` (1:2:5)."""
    s = base.summary()
    last = base.at(points[-1])
    rise = base.val_loss[last] / min(base.val_loss[: last + 1])
    best = int(np.argmin(base.val_loss[: last + 1]))
    out: dict[str, bool | float] = {
        "train_accuracy_at_last_point": base.train_accuracy[last],
        "rise_at_last_point": rise,
        "min_epoch": base.epoch[best],
        "train_accuracy >= 0.80": base.train_accuracy[last] >= MIN_TRAIN_ACCURACY,
        "val loss >= 1.25x its minimum": rise >= MIN_RISE,
        "minimum between the first and last point": points[0] < base.epoch[best] < points[-1],
    }
    if mlp_best is not None:
        out["margin_over_mlp"] = s["val_accuracy_at_min"] - mlp_best
        out["beats the MLP by 0.05"] = s["val_accuracy_at_min"] - mlp_best >= MIN_MLP_MARGIN
    return out


def render(curves: list[Curve], logistic: dict[int, float], *, markdown: bool) -> str:
    header = ["model", "images x epochs", "batch", "params", "val-loss min (epoch, steps)", "val loss last / min",
              "train acc last", "train loss last", "val acc at min", "max val acc", "train s", "all s"]  # fmt: skip
    rows = []
    for subset, acc in logistic.items():
        rows.append(
            [
                "logistic regression",
                f"{subset} (fit)",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                f"{acc:.3f}",
                "-",
                "-",
                "-",
            ]
        )
    for c in curves:
        s = c.summary()
        rows.append([
            c.model, f"{c.train_subset} x {c.epochs}", str(c.batch_size), f"{c.parameters / 1e6:.2f}M",
            f"{s['min_val_loss']:.3f} ({s['best_epoch']}, {s['best_steps']})", f"{s['rise']:.2f}x",
            f"{s['last_train_accuracy']:.3f}", f"{s['last_train_eval_loss']:.3f}", f"{s['val_accuracy_at_min']:.3f}",
            f"{s['max_val_accuracy']:.3f}", f"{c.train_seconds:.0f}", f"{c.seconds:.0f}",
        ])  # fmt: skip
    return render_table(header, rows, markdown=markdown)


def parse_settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        images, _, epochs = item.strip().partition("x")
        out.append((int(images), int(epochs)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="cifar10", choices=["cifar10", "fashion-mnist", "mnist", "digits"]
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument(
        "--settings", default="2560x200", help="comma-separated IMAGESxEPOCHS (default: 2560x200)"
    )
    parser.add_argument("--batch-sizes", default="32", help="micro-batches of the baseline (default: 32)")
    parser.add_argument("--model", default="swin-nano")
    parser.add_argument("--base-lr", type=float, default=1e-3)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--train-eval-size", type=int, default=5000)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--epoch-points", help="e.g. 40,80,200: check the budget criteria at these epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CIFAR-10's standard crop and flip for every trained model (default: on)",
    )
    parser.add_argument(
        "--no-references", action="store_true", help="skip the MLP, the CNN and logistic regression"
    )
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", help="write the curves, summaries and criteria to this file")
    args = parser.parse_args(argv)
    register()
    raw = load_raw(args.dataset, args.data_dir)
    points = [int(p) for p in args.epoch_points.split(",")] if args.epoch_points else None
    curves: list[Curve] = []
    logistic: dict[int, float] = {}
    checks = []
    print(f"{args.dataset}, {torch.get_num_threads()} thread(s), torch {torch.__version__}", flush=True)
    for subset, epochs in parse_settings(args.settings):
        base_cfg = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            model=args.model,
            epochs=epochs,
            train_subset=subset,
            val_size=args.val_size,
            train_eval_size=args.train_eval_size,
            eval_every=args.eval_every,
            base_lr=args.base_lr,
            seed=args.seed,
            device="cpu",
            precision=args.precision,
        )  # fmt: skip — the paper's baseline recipe: Adam, constant lr, no regularization or augmentation
        mlp_best = None
        if not args.no_references:
            logistic[subset] = logistic_regression(base_cfg, raw)
            for name in REFERENCES:
                curves.append(run(base_cfg.replace(model=name, precision="fp32"), raw))
                if name == MLP:
                    mlp_best = curves[-1].summary()["max_val_accuracy"]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            curves.append(run(base_cfg.replace(batch_size=batch), raw))
            if points and batch == 32:
                checks.append({"setting": f"{subset}x{epochs}", **criteria(curves[-1], mlp_best, points)})
        print(render(curves, logistic, markdown=False), file=sys.stderr, flush=True)
    print(render(curves, logistic, markdown=args.markdown))
    for check in checks:
        print(", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in check.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "logistic_regression": logistic, "criteria": checks,
                 "curves": [{**asdict(c), "summary": c.summary()} for c in curves]}, f, indent=1,
            )  # fmt: skip


if __name__ == "__main__":
    main()
