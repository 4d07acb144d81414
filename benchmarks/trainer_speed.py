"""Images per second of our trainer vs a plain reference loop, and the cost of accumulation.

Measured side by side in one process, same model preset, same batch, same data (Fashion-MNIST,
28 px, from Debian's package or ``--data-dir``):

* ours: ``study.lib.train.train`` (uint8 data on the device, batched normalization, no DataLoader;
  bf16 autocast and channels-last on CUDA), steady-state images/s of its last epoch; on a CPU also
  with ``precision="bf16"`` (opt-in there, since the CPU default is fp32);
* reference: a torchvision-style loop: ``FashionMNIST`` dataset with per-sample ``ToTensor`` and
  ``Normalize``, a ``DataLoader``, eager fp32 forward/backward/step;
* accumulation: our trainer at batch 32 x 4 micro-batches vs batch 128 (paper protocol), as cost
  per image (seconds per image, ratio > 1 means accumulation is slower); beside it, the reference
  loop's own cost per image at batch 32 vs 128: a small model's forward/backward costs more per
  image at a smaller batch whatever the trainer does, so that ratio is the floor for ours.

Usage::

    python -m benchmarks.trainer_speed                 # CPU or GPU, whichever is there
    python -m benchmarks.trainer_speed --images 20000  # longer, steadier
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from study.lib.config import TrainConfig
from study.lib.data import load_raw
from study.lib.model import build_model, geometry_for
from study.lib.train import build_optimizer, resolve_device, train


def ours(cfg: TrainConfig) -> float:
    """Images/s of the last epoch (the first one pays for warm-up and compilation)."""
    return train(cfg).history[-1].images_per_second


def reference(cfg: TrainConfig, *, workers: int, images: int) -> float:
    """A plain torchvision-style training loop over the same images, eager fp32."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import FashionMNIST

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    transform = T.Compose([T.ToTensor(), T.Normalize((0.2860,), (0.3530,))])
    # the same geometry as the trainer: 28 px zero-padded to the model's input size
    geometry = geometry_for(28)
    pad = geometry.padding(28)
    transform = T.Compose([transform, T.Pad(pad)]) if pad else transform
    dataset = Subset(FashionMNIST(cfg.data_dir, train=True, transform=transform), range(images))
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model = build_model(cfg.model, image_size=geometry.input_size, in_chans=1, num_classes=10).to(device)
    optimizer = build_optimizer(cfg, model)
    rate = 0.0
    for _ in range(cfg.epochs):  # report the last epoch, like ours()
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = seen / (time.perf_counter() - start)
    return rate


def fashion_config(args: argparse.Namespace, device: torch.device, *, images: int, **changes) -> TrainConfig:
    """The benchmarks' Fashion-MNIST run: the GPU preset on a GPU, the CPU preset elsewhere (or
    ``args.model``), ``images`` training images, small validation and train-eval sets."""
    return TrainConfig(dataset="fashion-mnist", data_dir=args.data_dir,
                       model=args.model or ("swin-micro" if device.type == "cuda" else "swin-nano"),
                       epochs=args.epochs, train_subset=images, val_size=1000, train_eval_size=256,
                       device=args.device, **changes)  # fmt: skip


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="preset (default: swin-nano on CPU, swin-micro on GPU)")
    parser.add_argument("--images", type=int, default=None, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (last one counts)")
    parser.add_argument("--workers", type=int, default=None, help="reference DataLoader workers")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also measure ours with torch.compile")
    args = parser.parse_args()

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    images = args.images or (50_000 if on_gpu else 5_120)
    workers = args.workers if args.workers is not None else (4 if on_gpu else 0)
    load_raw("fashion-mnist", args.data_dir)  # puts Debian's copy in torchvision's layout if needed
    cfg = fashion_config(args, device, images=images, batch_size=128)
    print(f"device: {device_name(device)}; model {cfg.model}; {images} Fashion-MNIST images/epoch; "
          f"torch {torch.__version__}")  # fmt: skip

    ref = reference(cfg, workers=workers, images=images)
    ref_32 = reference(cfg.replace(batch_size=32), workers=workers, images=images)
    fast = ours(cfg)
    accumulated = ours(cfg.replace(batch_size=32, accumulation_steps=4))
    print(f"reference loop (DataLoader, {workers} workers, per-sample transforms, fp32): {ref:8.0f} img/s")
    print(f"reference loop, batch 32:                          {ref_32:8.0f} img/s")
    print(f"ours, batch 128:                                   {fast:8.0f} img/s")
    print(f"ours, batch 32 x 4 accumulation:                   {accumulated:8.0f} img/s")
    print(f"speed-up ours / reference at batch 128:            {fast / ref:8.2f}x")
    print(f"cost per image, 32 x 4 accumulation / batch 128:   {fast / accumulated:8.2f}x")
    print(f"  the reference loop's batch 32 / batch 128:       {ref / ref_32:8.2f}x (the model's own floor)")
    if not on_gpu:  # CPU default is fp32; bf16 autocast is opt-in there (--precision bf16)
        bf16 = ours(cfg.replace(precision="bf16"))
        print(f"ours, batch 128, bf16 autocast (--precision bf16): {bf16:8.0f} img/s")
        print(f"speed-up ours+bf16 / reference (fp32):             {bf16 / ref:8.2f}x")
    if args.compile:
        compiled = ours(cfg.replace(compile=True))
        print(f"ours with torch.compile, batch 128:                {compiled:8.0f} img/s")
        print(f"speed-up ours+compile / reference:                 {compiled / ref:8.2f}x")
    if on_gpu:
        epoch = train(cfg.replace(train_subset=None, val_size=5000, epochs=2)).history[-1]
        print(f"seconds per full Fashion-MNIST epoch (55,000 images, ours): {epoch.train_seconds / 2:.2f}")


if __name__ == "__main__":
    main()
