"""What a run of a budget costs, and what pays on this machine: evaluation schedule, bf16, compile.

Measured side by side in one process on the budget's own setting (default: CIFAR-10 at the ``cpu``
budget, ``swin-nano`` on 2,560 images, 5,000 validation images, the training images evaluated):

* **training seconds per epoch** of the budget's run (micro-batch 32, and the other micro-batches
  with ``--batch-sizes``), the median of ``--epochs`` epochs after a warm-up epoch, for fp32 (the
  CPU default), bf16 autocast, and ``torch.compile`` (its compile time, the first epoch's extra
  seconds, printed apart);
* **one evaluation** (the training subset and the validation split, eval mode), in seconds;
* **a run's cost**: ``epochs x epoch + evaluations x evaluation``, for the budget's schedule
  (every ``eval_every`` epochs, plus the epoch points) and for evaluating after every epoch;
* **threads**: an epoch with ``--threads`` intra-op threads against one, when the machine has them;
  run it on a quiet machine for that row (two single-thread processes, one per core, is how the
  experiment runs);
* **what accumulation itself costs** (``--accumulation-steps N``): seconds per epoch of (b x N)
  against (b x 1), the same micro-batch, and against (bN x 1), the same effective batch (the same
  update), for each micro-batch b. The three are timed in turn, ``--rounds`` times, so that load
  from other processes falls on all of them alike; the ratios are of the medians.

Usage::

    python -m benchmarks.budget_cost                          # CIFAR-10 cpu budget, micro-batch 32
    python -m benchmarks.budget_cost --batch-sizes 32,64,128 --compile --threads 2
    python -m benchmarks.budget_cost --batch-sizes 32,128 --accumulation-steps 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from study.lib.config import TrainConfig
from study.lib.data import load_raw
from study.lib.grid import grid_budget
from study.lib.train import EpochMetrics, train


def epoch_seconds(cfg: TrainConfig, raw, epochs: int) -> tuple[float, float]:
    """(median training seconds per epoch after the first, the first epoch's extra seconds)."""
    seconds: list[float] = []
    last = 0.0

    def on_epoch(m: EpochMetrics) -> None:
        nonlocal last
        seconds.append(m.train_seconds - last)
        last = m.train_seconds

    train(
        cfg.replace(epochs=epochs + 1, eval_every=1), on_epoch=on_epoch, raw=raw
    )  # training seconds exclude evaluation
    steady = statistics.median(seconds[1:])
    return steady, seconds[0] - steady


def evaluation_seconds(cfg: TrainConfig, raw, repeats: int = 3) -> float:
    """Seconds of one evaluation (training subset and validation split, eval mode): the wall time
    of an evaluated epoch minus its training time, median of ``repeats``."""
    walls: list[float] = []
    previous = {"wall": 0.0, "train": 0.0}

    def on_epoch(m: EpochMetrics) -> None:
        walls.append((m.wall_seconds - previous["wall"]) - (m.train_seconds - previous["train"]))
        previous.update(wall=m.wall_seconds, train=m.train_seconds)

    train(cfg.replace(epochs=repeats), on_epoch=on_epoch, raw=raw)
    return statistics.median(walls)


def accumulation_cost(base: TrainConfig, raw, batch: int, n: int, epochs: int, rounds: int) -> None:
    """Seconds per epoch of (batch x n), (batch x 1) and (batch*n x 1), timed in turn ``rounds``
    times; prints the medians and accumulation's ratios at equal micro-batch and equal effective
    batch."""
    settings = {
        "b x N": base.replace(batch_size=batch, accumulation_steps=n),
        "b x 1": base.replace(batch_size=batch),
        "bN x 1": base.replace(batch_size=batch * n),
    }
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, cfg in settings.items():
            seconds[name].append(epoch_seconds(cfg, raw, epochs)[0])
    acc, micro, effective = (statistics.median(seconds[k]) for k in settings)
    print(f"{batch} x {n}: {acc:.2f} s/epoch; {batch} x 1: {micro:.2f} (accumulation / same micro-batch "
          f"{acc / micro:.2f}x); {batch * n} x 1: {effective:.2f} (accumulation / same effective batch "
          f"{acc / effective:.2f}x); medians of {rounds} rounds", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batch-sizes", default="32")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up (default: 3)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--threads", type=int, default=1, help="also time this many intra-op threads")
    parser.add_argument("--accumulation-steps", type=int, default=0,
                        help="also time (b x N) against (b x 1) and (bN x 1) for each micro-batch b")  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the accumulation timing (default: 3)"
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(1)
    budget = grid_budget(args.budget, args.dataset)
    raw = load_raw(args.dataset, args.data_dir)
    base = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=budget.model, train_subset=budget.train_subset,
                       device="cpu", **budget.settings)  # fmt: skip
    points, total = budget.epoch_points, max(budget.epoch_points)
    evaluation = evaluation_seconds(base, raw)
    every = base.eval_every
    scheduled = len(set(range(every, total + 1, every)) | set(points))
    print(f"{args.dataset} at budget {args.budget}: {base.model}, {base.train_subset} images, {total} epochs; "
          f"one evaluation {evaluation:.2f} s; {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(f"{'setting':<34} {'s/epoch':>8} {'vs fp32':>8} {'first-epoch extra s':>20} "
          f"{'run, eval every ' + str(every):>20} {'run, eval every 1':>18}")  # fmt: skip
    for batch in batches:
        cfg = base.replace(batch_size=batch)
        settings = [("fp32", cfg), ("bf16 autocast", cfg.replace(precision="bf16"))]
        if args.compile:
            settings.append(("torch.compile", cfg.replace(compile=True)))
        reference = None
        for name, setting in settings:
            seconds, extra = epoch_seconds(setting, raw, args.epochs)
            reference = reference or seconds
            run = total * seconds + max(0.0, extra)
            print(f"{f'batch {batch}, {name}':<34} {seconds:>8.2f} {reference / seconds:>7.2f}x {extra:>20.1f} "
                  f"{(run + scheduled * evaluation) / 60:>17.1f} min {(run + total * evaluation) / 60:>14.1f} min",
                  flush=True)  # fmt: skip
        if args.threads > 1:
            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            seconds, _ = epoch_seconds(cfg, raw, args.epochs)
            torch.set_num_threads(1)
            print(f"{f'batch {batch}, fp32, {args.threads} threads':<34} {seconds:>8.2f} {reference / seconds:>7.2f}x"
                  f"  ({time.perf_counter() - start:.0f} s measured)")  # fmt: skip
    if args.accumulation_steps > 1:
        print(f"what accumulation itself costs, fp32, {args.epochs} epochs after a warm-up per timing:")
        for batch in batches:
            accumulation_cost(base, raw, batch, args.accumulation_steps, args.epochs, args.rounds)


if __name__ == "__main__":
    main()
