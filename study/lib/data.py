"""Datasets as uint8 tensors on the run's device, seeded splits, and the one place batches are split.

Every dataset ends up as ``uint8`` images of shape (N, C, H, W) plus ``int64`` labels. Images stay
uint8 on the device; normalization and (CIFAR-10 only) augmentation run batched there, so the
training loop has no DataLoader and no per-sample Python.

Where data comes from:

* ``digits``: scikit-learn's 8x8 digits (ships with scikit-learn, always offline). It has no
  official split, so a seeded 20% (360 images) is its test set.
* ``mnist`` / ``fashion-mnist``: torchvision's layout, IDX files in ``DATA_DIR/MNIST/raw`` or
  ``DATA_DIR/FashionMNIST/raw``. ``fashion-mnist`` is also taken from Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) with no download.
* ``cifar10``: torchvision's layout, the python pickle batches in
  ``DATA_DIR/cifar-10-batches-py``.

Missing files are downloaded by torchvision when the network allows; otherwise
``DataUnavailableError`` says where we looked and what to do. Files that are there but unusable
(truncated, not the format, image and label counts that disagree) raise ``DataFileError`` naming
the file. Both are ``DataError``, which every command turns into one line and exit code 2.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.lib.config import DATASET_SIZES, TrainConfig, validation_size

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The validation split is the same for every run (whatever cfg.seed), so validation accuracies of
# different seeds and trials are measured on the same images.
SPLIT_SEED = 0
NUM_CLASSES = 10
CIFAR_PAD = 4  # random-crop padding, as in the standard CIFAR-10 recipe
AUGMENTED = ("cifar10",)  # datasets with a standard augmentation (TrainConfig.augment)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


class DataError(RuntimeError):
    """The data cannot be used as asked: a user's problem, reported as one line (exit 2)."""


class DataUnavailableError(DataError):
    """The dataset is not on disk and could not be downloaded."""


class DataFileError(DataError):
    """A data file is there but unusable: truncated, not the expected format, or inconsistent."""


@dataclass(frozen=True)
class RawDataset:
    """Official splits as uint8 (N, C, H, W) images and int64 labels, on the CPU."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@dataclass(frozen=True)
class DataSplits:
    """The three splits of one run, resident on its device.

    ``train_eval_*`` is a fixed subset of the training split on which train accuracy is measured
    in eval mode (no augmentation), the fair side of the generalization gap.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_eval_images: torch.Tensor
    train_eval_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor  # (1, C, 1, 1) float32, per-channel mean of the training split in [0, 1]
    std: torch.Tensor  # (1, C, 1, 1)
    augment: bool

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def training_batch(
        self, idx: torch.Tensor, generator: torch.Generator, *, channels_last: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model inputs and labels of one effective batch: gathered, augmented (when the run
        augments) and normalized once, before the step splits it into micro-batches."""
        images = self.train_images[idx]
        if self.augment:
            images = augment(images, generator)
        x = normalize(images, self.mean, self.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.train_labels[idx]


# --- readers -------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz), the format of MNIST and Fashion-MNIST.

    Raises:
        DataFileError: the file is not an unsigned-byte IDX file, or is truncated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"{path}: cannot be read ({exc}); replace the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or len(raw) < 4 + 4 * raw[3]:
        raise DataFileError(f"{path} is not an unsigned-byte IDX file; replace the file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim)  # writable
    if data.size != int(np.prod(shape)):
        raise DataFileError(
            f"{path} is truncated or damaged: its header says {'x'.join(map(str, shape))} values but it "
            f"holds {data.size}; replace the file"
        )
    return data.reshape(shape)


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _install_debian_fashion_mnist(raw_folder: Path) -> bool:
    """Decompress Debian's Fashion-MNIST into torchvision's layout; True when it was there."""
    if not all(_find_idx(DEBIAN_FASHION_MNIST, n) for pair in _IDX_FILES.values() for n in pair):
        return False
    raw_folder.mkdir(parents=True, exist_ok=True)
    for pair in _IDX_FILES.values():
        for name in pair:
            source = _find_idx(DEBIAN_FASHION_MNIST, name)
            assert source is not None
            target = raw_folder / name
            if source.suffix == ".gz":
                with gzip.open(source, "rb") as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            else:
                shutil.copyfile(source, target)
    return True


def _download(dataset: str, data_dir: Path, looked_in: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[dataset]
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataUnavailableError(
            f"{dataset} is not in {looked_in} and the download failed ({reason}); put the "
            f"dataset there in torchvision's format or pass --data-dir to where it is"
        ) from None


def _load_idx_dataset(dataset: str, data_dir: Path) -> RawDataset:
    raw_folder = data_dir / _TORCHVISION_FOLDER[dataset] / "raw"
    names = [n for pair in _IDX_FILES.values() for n in pair]
    missing = not all(_find_idx(raw_folder, n) for n in names)
    if missing and not (dataset == "fashion-mnist" and _install_debian_fashion_mnist(raw_folder)):
        _download(dataset, data_dir, raw_folder)
    arrays = {}
    for split, (images, labels) in _IDX_FILES.items():
        img_path, lbl_path = _find_idx(raw_folder, images), _find_idx(raw_folder, labels)
        assert img_path is not None and lbl_path is not None
        image_array, label_array = read_idx(img_path), read_idx(lbl_path)
        if image_array.ndim != 3 or label_array.ndim != 1:
            raise DataFileError(
                f"{img_path} and {lbl_path} must hold (N, H, W) images and (N,) labels; found shapes "
                f"{image_array.shape} and {label_array.shape}"
            )
        if len(image_array) != len(label_array):  # training on misaligned labels would be silent
            raise DataFileError(
                f"{img_path} holds {len(image_array)} images but {lbl_path} holds {len(label_array)} "
                "labels; the two files must come from the same copy of the dataset"
            )
        arrays[split] = (image_array[:, None], label_array)  # (N, 1, 28, 28)
    return _raw(arrays["train"], arrays["test"])


def _load_cifar10(data_dir: Path) -> RawDataset:
    folder = data_dir / "cifar-10-batches-py"
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    test_files = [folder / "test_batch"]
    if not all(p.is_file() for p in train_files + test_files):
        _download("cifar10", data_dir, folder)

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for path in files:
            data, batch_labels = _read_cifar_batch(path)
            images.append(data)
            labels.append(batch_labels)
        return np.concatenate(images), np.concatenate(labels)

    return _raw(read(train_files), read(test_files))


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle batch: (N, 3, 32, 32) uint8 images and (N,) labels.

    The official batches have ``bytes`` keys (``b"data"``); a copy re-pickled after torchvision's
    ``latin1`` load has ``str`` keys. Both are accepted.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataFileError(
            f"{path}: not a readable CIFAR-10 pickle batch ({exc}); replace the file"
        ) from None
    if not isinstance(batch, dict):
        raise DataFileError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in entries or "labels" not in entries:
        raise DataFileError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels'; found {sorted(entries)}")
    data = np.asarray(entries["data"], dtype=np.uint8)
    labels = np.asarray(entries["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataFileError(
            f"{path}: expected N rows of 3072 pixel values and N labels; found data {data.shape} and "
            f"{len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities -> 0..255, so every dataset shares one uint8 pipeline
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    n_test = DATASET_SIZES["digits"][1]
    test, train = order[:n_test], order[n_test:]
    return _raw((images[train], labels[train]), (images[test], labels[test]))


def _raw(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> RawDataset:
    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64).copy())

    return RawDataset(images(train[0]), labels(train[1]), images(test[0]), labels(test[1]))


def load_raw(dataset: str, data_dir: str | Path) -> RawDataset:
    """Official train and test splits of ``dataset`` as CPU tensors."""
    data_dir = Path(data_dir)
    if dataset == "digits":
        return _load_digits()
    if dataset in _TORCHVISION_FOLDER:
        return _load_idx_dataset(dataset, data_dir)
    if dataset == "cifar10":
        return _load_cifar10(data_dir)
    raise ValueError(f"unknown dataset {dataset!r}")


# --- CIFAR-10 from an archive of JPEG images ----------------------------------------------------
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_BATCHES = 5


def write_cifar10_from_jpegs(archive: str | Path, data_dir: str | Path) -> Path:
    """Write CIFAR-10's official python layout (``data_batch_1..5``, ``test_batch``,
    ``batches.meta`` in ``DATA_DIR/cifar-10-batches-py``) from a tar archive of JPEG images in
    class folders (``train/<class>/<name>.jpg``, ``test/<class>/<name>.jpg``, as in the public
    JPEG copies of CIFAR-10), so that ``--dataset cifar10 --data-dir DATA_DIR`` reads it offline.

    Images are ordered by name, then shuffled with a fixed seed (classes interleaved, as in the
    official batches), so the same archive always gives the same files. JPEG is lossy: the pixels
    are close to, not equal to, the official ones; the labels are the class folders.

    Raises:
        DataUnavailableError: the archive is not there.
        DataFileError: it is not a readable tar archive of 32x32 JPEGs in the ten class folders.
    """
    import io
    import random
    import tarfile

    from PIL import Image, UnidentifiedImageError

    archive = Path(archive)
    if not archive.is_file():
        raise DataUnavailableError(f"{archive}: no such archive; give the path of a tar of CIFAR-10 JPEGs")
    items: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 3 and parts[0] in items:
                    items[parts[0]].append((member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"{archive}: not a readable tar archive ({exc}); replace the file") from None
    splits = {}
    for split, members in items.items():
        if not members:
            raise DataFileError(f"{archive}: no {split}/<class>/<image>.jpg files in it")
        members.sort()
        random.Random(0).shuffle(members)
        images, labels = [], []
        for name, blob in members:
            label = name.split("/")[1]
            if label not in CIFAR10_CLASSES:
                raise DataFileError(
                    f"{archive}: {name} is in no CIFAR-10 class folder ({', '.join(CIFAR10_CLASSES)})"
                )
            try:
                image = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataFileError(
                    f"{archive}: {name} is not a readable image ({exc}); replace the archive"
                ) from None
            if image.shape != (32, 32, 3):
                raise DataFileError(f"{archive}: {name} is {image.shape[1]}x{image.shape[0]}, not 32x32")
            images.append(image.transpose(2, 0, 1).reshape(-1))  # RGB planes, as the official rows
            labels.append(CIFAR10_CLASSES.index(label))
        splits[split] = (np.stack(images), labels)
    folder = Path(data_dir) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = splits["train"]
    per = len(y) // CIFAR10_TRAIN_BATCHES
    for i in range(CIFAR10_TRAIN_BATCHES):
        rows = slice(i * per, (i + 1) * per)
        _write_pickle(
            folder / f"data_batch_{i + 1}",
            {"batch_label": f"training batch {i + 1} of 5", "data": x[rows], "labels": y[rows]},
        )
    x, y = splits["test"]
    _write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": x, "labels": y})
    _write_pickle(
        folder / "batches.meta",
        {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per, "num_vis": 3072},
    )
    return folder


def _write_pickle(path: Path, obj: object) -> None:
    """Write then rename, so that a stopped build never leaves a half-written batch behind."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    partial.replace(path)


# --- splits --------------------------------------------------------------------------------------
def make_splits(
    cfg: TrainConfig,
    device: torch.device,
    raw: RawDataset | None = None,
    *,
    input_size: int | None = None,
) -> DataSplits:
    """Carve the fixed validation split (and optional subset) and move everything to ``device``.

    A fractional ``val_size`` is taken of the training images actually read (a partial copy of a
    dataset gets a proportional split), so the split is fixed for a given set of files.

    Args:
        cfg: The run (dataset, val_size, train_subset, train_eval_size, effective batch).
        device: Where the tensors live.
        raw: The dataset, if already loaded.
        input_size: Zero-pad the images (centred) to this side, the model's input size; the padding
            is black, the background of MNIST and Fashion-MNIST. Default: no padding.

    Raises:
        DataError: the files hold too few images for this configuration.
    """
    raw = raw if raw is not None else load_raw(cfg.dataset, cfg.data_dir)
    n_pool = len(raw.train_labels)
    n_val = validation_size(cfg.dataset, cfg.val_size, pool=n_pool)
    if n_val >= n_pool:
        raise DataError(f"val_size {cfg.val_size} leaves no training data: the files hold {n_pool} images")
    available = n_pool - n_val
    if cfg.train_subset is not None and cfg.train_subset > available:
        raise DataError(
            f"train_subset {cfg.train_subset} is more than the {available} training images the "
            f"{cfg.dataset} files hold after the validation split ({n_val}); lower train_subset"
        )
    n_train = available if cfg.train_subset is None else cfg.train_subset
    if cfg.effective_batch_size > n_train:
        raise DataError(
            f"effective batch {cfg.effective_batch_size} is larger than the {n_train} training images "
            f"of these {cfg.dataset} files; lower batch_size or accumulation_steps"
        )
    order = torch.randperm(n_pool, generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    pad = 0 if input_size is None else _padding(raw.train_images.shape[-1], input_size)

    def padded(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(images, (pad,) * 4) if pad else images

    train_images = padded(raw.train_images[train_idx])
    # per-channel statistics of the images the model trains on (padding included), in [0, 1]
    as_float = train_images.float().div_(255)
    mean = as_float.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = as_float.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
    eval_idx = torch.arange(min(cfg.train_eval_size, len(train_idx)))  # train_idx is already random

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True)

    return DataSplits(
        train_images=put(train_images),
        train_labels=put(raw.train_labels[train_idx]),
        train_eval_images=put(train_images[eval_idx]),
        train_eval_labels=put(raw.train_labels[train_idx][eval_idx]),
        val_images=put(padded(raw.train_images[val_idx])),
        val_labels=put(raw.train_labels[val_idx]),
        test_images=put(padded(raw.test_images)),
        test_labels=put(raw.test_labels),
        mean=put(mean),
        std=put(std),
        augment=cfg.augment and cfg.dataset in AUGMENTED,
    )


def _padding(native: int, input_size: int) -> int:
    extra = input_size - native
    if extra < 0 or extra % 2:
        raise ValueError(f"cannot pad {native} px images to {input_size} px evenly")
    return extra // 2


# --- on-device preprocessing ---------------------------------------------------------------------
def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> standardized float32."""
    return (images.float().div_(255) - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, batched, on uint8 images.

    Equivalent to torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` applied
    per sample, but one gather for the whole batch.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (CIFAR_PAD,) * 4)  # (B, C, H+8, W+8)
    dy = torch.randint(0, 2 * CIFAR_PAD + 1, (b,), device=device, generator=generator)
    dx = torch.randint(0, 2 * CIFAR_PAD + 1, (b,), device=device, generator=generator)
    flip = torch.rand(b, device=device, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reverses the column order
    batch_idx = torch.arange(b, device=device)[:, None, None, None]
    chan_idx = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def epoch_batches(
    num_samples: int,
    *,
    effective_batch_size: int,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """The one place batches are formed: the effective batches of one epoch.

    Draws a seeded permutation of the training set and cuts it into effective batches; the
    training step (``study.lib.train.optimizer_step``) then splits each into micro-batches.
    Accumulation therefore changes how a batch is split, never which samples form it.

    The last incomplete effective batch of an epoch is dropped: every optimizer step then averages
    exactly ``effective_batch_size`` samples, so steps are comparable across accumulation settings
    and accumulation stays exact. The permutation changes every epoch, so no sample is excluded
    systematically; at most ``effective_batch_size - 1`` samples sit out a given epoch.

    Yields:
        For each optimizer step, the index tensor of its effective batch, on ``device``. The
        permutation is drawn on the CPU (same order on every device) and moved once per epoch.
    """
    order = torch.randperm(num_samples, generator=generator).to(device or "cpu", non_blocking=True)
    for step in range(num_samples // effective_batch_size):
        yield order[step * effective_batch_size : (step + 1) * effective_batch_size]
