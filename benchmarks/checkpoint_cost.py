"""What a checkpoint costs beside an epoch of training: seconds and bytes per checkpoint.

For each model preset, one process builds the run of a budget-like configuration (micro-batch 32,
Adam, ``--images`` training images), trains ``--epochs`` epochs and times each, then writes the
run's whole state as a trial's checkpoint (``study.lib.checkpoint.Checkpoints.write``: model,
optimizer, random generators, counters and history, written atomically) ``--repeats`` times and
times each write. It prints per preset the median seconds of an epoch and of a checkpoint, their
ratio, and the checkpoint's size. A trial checkpoints after every evaluated epoch by default
(``--checkpoint-every 1``), at most once per epoch: the ratio is the most it adds to a run.

Usage::

    python -m benchmarks.checkpoint_cost                     # digits, the CPU presets and swin-micro
    python -m benchmarks.checkpoint_cost --dataset cifar10 --data-dir data --images 2560
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from study.lib.checkpoint import Checkpoints
from study.lib.config import TrainConfig
from study.lib.data import load_raw
from study.lib.train import start, train_epoch

PRESETS = ("swin-nano", "vit-nano", "bn-cnn-nano", "swin-micro")


def measure(cfg: TrainConfig, raw, *, repeats: int) -> dict[str, float]:
    """Median seconds per epoch (after a warm-up epoch) and per checkpoint, and the checkpoint's bytes."""
    run = start(cfg, raw=raw, test_at=(), geometry=None)
    epochs = []
    for _ in range(cfg.epochs):
        t0 = time.perf_counter()
        train_epoch(run)
        epochs.append(time.perf_counter() - t0)
    writes = []
    with tempfile.TemporaryDirectory() as folder:
        store = Checkpoints(folder)
        for _ in range(repeats):
            t0 = time.perf_counter()
            store.write("benchmark", 0, run)
            writes.append(time.perf_counter() - t0)
        size = store.path("benchmark", 0).stat().st_size
    epoch = statistics.median(epochs[1:] or epochs)
    write = statistics.median(writes)
    return {"epoch_s": epoch, "checkpoint_s": write, "ratio": write / epoch, "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.checkpoint_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--images", type=int, default=1024, help="training images (default: 1024)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed, the first a warm-up (default: 3)")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoint writes timed (default: 5)")
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args(argv)
    raw = load_raw(args.dataset, args.data_dir)
    print(f"{args.dataset}, {args.images} training images, micro-batch 32, {torch.get_num_threads()} thread(s)")
    print(f"{'preset':<14}{'epoch s':>10}{'checkpoint s':>14}{'ratio':>9}{'MiB':>8}")
    for preset in args.presets.split(","):
        cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=preset, train_subset=args.images,
                          epochs=args.epochs, batch_size=32, device="cpu", val_size=100, train_eval_size=100)  # fmt: skip
        m = measure(cfg, raw, repeats=args.repeats)
        print(f"{preset:<14}{m['epoch_s']:>10.3f}{m['checkpoint_s']:>14.4f}{m['ratio']:>9.4f}{m['bytes'] / 2**20:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
