"""``python -m study.train``: train one configuration and print its metrics (every TrainConfig field
is a flag; ``--json`` prints the whole result)."""

from __future__ import annotations

import json
import sys

from study.lib.cli import ArgumentParser, add_config_arguments, config_from_args, fail
from study.lib.data import DataError
from study.lib.train import EpochMetrics, resolve_device, train


def format_epoch(m: EpochMetrics, epochs: int) -> str:
    return (
        f"epoch {m.epoch}/{epochs}  loss {m.train_loss:.4f}  train acc {m.train_accuracy:.4f}  "
        f"val acc {m.val_accuracy:.4f}  gap {m.generalization_gap:+.4f}  steps {m.optimizer_steps}  "
        f"lr {m.lr:.3g}  {m.images_per_second:.0f} img/s  {m.wall_seconds:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
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
