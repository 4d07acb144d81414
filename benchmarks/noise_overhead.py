"""What measuring the gradient noise scale costs: training seconds with ``noise_scale`` on vs off.

Side by side in one process, same preset, data, seed and batches (Fashion-MNIST, from Debian's
package or ``--data-dir``), for each setting of the grid that matters: no accumulation (one
step in ``study.lib.noise.HALVES_EVERY`` runs as two halves) and accumulation 4 (every step measured). The runs alternate off/on
``--repeats`` times and the ratio of the fastest training seconds is printed (the minimum is the
least disturbed by other load); the target is under 5% (a ratio below 1.05). On a shared
2-core machine, run-to-run spread can exceed that, so the meter's own work is also timed directly:
its calls for one accumulated step against the forward and backward passes of that step.

Usage::

    python -m benchmarks.noise_overhead                     # CPU or GPU, whichever is there
    python -m benchmarks.noise_overhead --images 10240 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.trainer_speed import device_name, fashion_config
from study.lib.config import TrainConfig
from study.lib.data import RawDataset, load_raw
from study.lib.model import build_model, geometry_for
from study.lib.noise import NoiseScaleMeter
from study.lib.train import resolve_device, train


def meter_share(
    model_name: str, device: torch.device, *, micro: int = 32, parts: int = 4, steps: int = 20
) -> float:
    """Seconds of the meter's calls per accumulated step / seconds of the step's forward and
    backward passes (random 28 px images padded to 32, the CPU preset)."""
    geometry = geometry_for(28)
    model = build_model(
        model_name, image_size=geometry.input_size, in_chans=1, num_classes=10, geometry=geometry
    )
    model = model.to(device)
    x = torch.randn(micro, 1, geometry.input_size, geometry.input_size, device=device)
    y = torch.randint(0, 10, (micro,), device=device)
    meter = NoiseScaleMeter(model.parameters(), small=micro, parts=parts)
    passes = metering = 0.0
    for step in range(steps + 1):  # the first step warms up
        for _ in range(parts):
            start = time.perf_counter()
            (torch.nn.functional.cross_entropy(model(x), y) / parts).backward()
            middle = time.perf_counter()
            meter.micro_batch_done()
            end = time.perf_counter()
            if step:
                passes, metering = passes + middle - start, metering + end - middle
        start = time.perf_counter()
        meter.step_done()
        if step:
            metering += time.perf_counter() - start
        model.zero_grad(set_to_none=True)
    return metering / passes


def train_seconds(cfg: TrainConfig, raw: RawDataset) -> float:
    """Training seconds (evaluation excluded) of the run's epochs after the first (warm-up)."""
    history = train(cfg, raw=raw).history
    return history[-1].train_seconds - history[0].train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="preset (default: swin-nano on CPU, swin-micro on GPU)")
    parser.add_argument("--images", type=int, default=5_120, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="off/on pairs per setting")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    raw = load_raw("fashion-mnist", args.data_dir)
    base = fashion_config(args, device, images=args.images)
    print(f"device: {device_name(device)}; model {base.model}; {args.images} Fashion-MNIST images/epoch; "
          f"{args.repeats} pairs")  # fmt: skip
    print(f"{'setting':<34}{'off s':>9}{'on s':>9}{'on / off':>10}")
    for label, changes in [
        ("batch 32, no accumulation", dict(batch_size=32)),
        ("batch 32 x 4 accumulation", dict(batch_size=32, accumulation_steps=4)),
        ("batch 128, no accumulation", dict(batch_size=128)),
    ]:
        cfg = base.replace(**changes)
        off, on = [], []
        for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
            off.append(train_seconds(cfg, raw))
            on.append(train_seconds(cfg.replace(noise_scale=True), raw))
        off_s, on_s = min(off), min(on)
        print(f"{label:<34}{off_s:9.2f}{on_s:9.2f}{on_s / off_s:9.3f}x", flush=True)
    if not on_gpu:  # on a GPU the calls are asynchronous: the training-time ratios are the measure
        share = meter_share(base.model, device)
        print(f"the meter's own work per step of 32 x 4, against its forward and backward: {share:.1%}")


if __name__ == "__main__":
    main()
