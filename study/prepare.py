"""``python -m study.prepare cifar10 ARCHIVE``: datasets from offline archives, in torchvision's layout.

With the network, torchvision downloads the official files when a command first needs them. Without
it, a tar archive of the CIFAR-10 images as JPEGs in class folders (``train/<class>/*.jpg``,
``test/<class>/*.jpg``) becomes the official python layout in ``--data-dir``, which every command
then reads with ``--dataset cifar10 --data-dir DIR``. Keep the folder out of git (``data/`` is
ignored).
"""

from __future__ import annotations

from study.lib.cli import ArgumentParser, fail
from study.lib.data import DataError, load_raw, write_cifar10_from_jpegs

PROG = "study.prepare"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("dataset", choices=["cifar10"], help="the dataset to write")
    parser.add_argument("archive", help="tar archive (.tar, .tar.gz) of the images as JPEGs in class folders")
    parser.add_argument("--data-dir", default="data", help="where to write it (default: ./data)")
    args = parser.parse_args(argv)
    try:
        folder = write_cifar10_from_jpegs(args.archive, args.data_dir)
        raw = load_raw("cifar10", args.data_dir)  # read back: the layout every command reads
    except DataError as exc:
        fail(PROG, str(exc))
    print(
        f"{folder}: {len(raw.train_labels)} training and {len(raw.test_labels)} test images; "
        f"use --dataset cifar10 --data-dir {args.data_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
