import numpy as np
import pytest
import torch

from study.lib.config import TrainConfig
from study.lib.data import (
    DEBIAN_FASHION_MNIST,
    DataUnavailableError,
    augment,
    epoch_batches,
    load_raw,
    make_splits,
    normalize,
)
from tests.conftest import write_cifar10, write_mnist_like


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_files_in_torchvision_layout_are_read(tmp_path, dataset, folder, gz):
    written = write_mnist_like(tmp_path / folder / "raw", n_train=50, n_test=20, gz=gz)
    raw = load_raw(dataset, tmp_path)
    assert raw.train_images.shape == (50, 1, 28, 28) and raw.train_images.dtype == torch.uint8
    assert raw.test_images.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(raw.train_images[:, 0].numpy(), written["train"][0])
    np.testing.assert_array_equal(raw.test_labels.numpy(), written["t10k"][1])
    assert raw.train_labels.dtype == torch.int64


def test_cifar10_pickle_batches_are_read(tmp_path):
    written = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=12)
    raw = load_raw("cifar10", tmp_path)
    assert raw.train_images.shape == (60, 3, 32, 32) and raw.test_images.shape == (12, 3, 32, 32)
    data, labels = written["data_batch_2"]
    # row layout of a CIFAR batch: 1024 red, 1024 green, 1024 blue values, row-major
    np.testing.assert_array_equal(raw.train_images[12].numpy(), data[0].reshape(3, 32, 32))
    assert raw.train_labels[12:24].tolist() == labels
    assert raw.test_labels.tolist() == written["test_batch"][1]


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist absent")
def test_fashion_mnist_comes_from_the_debian_package(tmp_path, offline_env):
    raw = load_raw("fashion-mnist", tmp_path)
    assert raw.train_images.shape == (60_000, 1, 28, 28)
    assert raw.test_images.shape == (10_000, 1, 28, 28)
    assert sorted(raw.train_labels.unique().tolist()) == list(range(10))
    assert raw.train_labels.bincount().tolist() == [6000] * 10  # the real dataset is balanced
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


@pytest.mark.parametrize(("dataset", "where"), [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_data_offline_says_where_it_looked(tmp_path, offline_env, dataset, where):
    with pytest.raises(DataUnavailableError) as info:
        load_raw(dataset, tmp_path)
    message = str(info.value)
    assert f"{dataset} is not in {tmp_path / where}" in message
    assert "download failed" in message and "--data-dir" in message


def test_digits_are_offline_uint8_with_a_seeded_test_split():
    a, b = load_raw("digits", "unused"), load_raw("digits", "unused")
    assert a.train_images.shape == (1437, 1, 8, 8) and a.test_images.shape == (360, 1, 8, 8)
    assert int(a.train_images.max()) == 255
    assert torch.equal(a.test_labels, b.test_labels) and torch.equal(a.test_images, b.test_images)


def test_splits_are_disjoint_fixed_and_sized(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw", n_train=300, n_test=40)
    cfg = TrainConfig(
        dataset="mnist",
        data_dir=str(tmp_path),
        val_size=50,
        train_subset=None,
        batch_size=8,
        train_eval_size=30,
    )
    # config sizes come from the real dataset; the files here are smaller, so split them directly
    raw = load_raw("mnist", tmp_path)
    splits = make_splits(cfg, torch.device("cpu"), raw)
    assert len(splits.val_labels) == 50 and len(splits.train_labels) == 250
    assert len(splits.train_eval_labels) == 30 and len(splits.test_labels) == 40
    flat = lambda t: {bytes(row) for row in t.reshape(len(t), -1).numpy()}  # noqa: E731
    assert not flat(splits.val_images) & flat(splits.train_images)
    assert flat(splits.train_eval_images) <= flat(splits.train_images)
    again = make_splits(cfg.replace(seed=7), torch.device("cpu"), raw)
    assert torch.equal(again.val_images, splits.val_images)  # same validation set for any seed


def test_normalize_standardizes_the_training_split():
    cfg = TrainConfig()
    splits = make_splits(cfg, torch.device("cpu"))
    x = normalize(splits.train_images, splits.mean, splits.std)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


def _reference_crop_flip(image: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crop = padded[:, dy : dy + 32, dx : dx + 32]
    return crop.flip(-1) if flip else crop


def test_batched_augmentation_equals_per_sample_crop_and_flip():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(3))
    # replay the same random draws to get each sample's offsets and flip
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 9, (64,), generator=g)
    dx = torch.randint(0, 9, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert 0 < int(flip.sum()) < 64 and len(set(dy.tolist())) > 1
    for i in range(64):
        expected = _reference_crop_flip(images[i], int(dy[i]), int(dx[i]), bool(flip[i]))
        assert torch.equal(out[i], expected), i


def test_an_epoch_is_cut_into_whole_effective_batches():
    batches = list(epoch_batches(100, effective_batch_size=32, generator=torch.Generator().manual_seed(5)))
    assert [len(b) for b in batches] == [32, 32, 32]  # 100 // 32: the incomplete last batch is dropped
    seen = torch.cat(batches)
    assert len(set(seen.tolist())) == 96
    again = list(epoch_batches(100, effective_batch_size=32, generator=torch.Generator().manual_seed(5)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # seeded


# --- real-file robustness ------------------------------------------------------------------------
def test_fractional_validation_split_is_taken_of_the_images_actually_read(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw", n_train=5000, n_test=100)
    cfg = TrainConfig(dataset="mnist", data_dir=str(tmp_path), val_size=0.1, batch_size=32)
    data = make_splits(cfg, torch.device("cpu"))
    assert len(data.val_labels) == 500 and len(data.train_labels) == 4500
    again = make_splits(cfg.replace(seed=3), torch.device("cpu"))  # the split is fixed for these files
    assert torch.equal(again.val_images, data.val_images)


def test_cifar10_batches_with_bytes_or_str_keys_load_identically(tmp_path):
    write_cifar10(tmp_path / "official" / "cifar-10-batches-py", per_batch=12, seed=5)
    write_cifar10(tmp_path / "repickled" / "cifar-10-batches-py", per_batch=12, seed=5, str_keys=True)
    a, b = load_raw("cifar10", tmp_path / "official"), load_raw("cifar10", tmp_path / "repickled")
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_padding_to_the_model_input_is_black_and_centred(tmp_path):
    written = write_mnist_like(tmp_path / "MNIST" / "raw", n_train=200, n_test=10)
    cfg = TrainConfig(dataset="mnist", data_dir=str(tmp_path), val_size=50, batch_size=16)
    data = make_splits(cfg, torch.device("cpu"), input_size=32)
    assert data.image_size == 32 and data.test_images.shape == (10, 1, 32, 32)
    test = data.test_images[:, 0]
    np.testing.assert_array_equal(test[:, 2:30, 2:30].numpy(), written["t10k"][0])
    assert test[:, :2].sum() == 0 and test[:, 30:].sum() == 0 and test[:, :, :2].sum() == 0


def damage(raw_folder, kind: str) -> str:
    """Write MNIST files with one defect; returns the file a user must be told about."""
    write_mnist_like(raw_folder, n_train=300, n_test=60)
    if kind == "count-mismatch":  # a label file from another copy of the dataset
        from tests.conftest import write_idx

        write_idx(raw_folder / "train-labels-idx1-ubyte", np.zeros(299, dtype=np.uint8))
        return "train-labels-idx1-ubyte"
    path = raw_folder / "train-images-idx3-ubyte"  # truncated: an interrupted copy
    path.write_bytes(path.read_bytes()[:-1000])
    return "train-images-idx3-ubyte"


@pytest.mark.parametrize("kind", ["count-mismatch", "truncated"])
def test_damaged_idx_files_raise_one_data_error_naming_the_file(tmp_path, kind):
    from study.lib.data import DataError

    name = damage(tmp_path / "MNIST" / "raw", kind)
    with pytest.raises(DataError, match=name):
        load_raw("mnist", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["count-mismatch", "truncated"])
@pytest.mark.parametrize(
    "command",
    [
        ["study.train", "--epochs", "1", "--train-subset", "64"],
        ["study.run", "--space", "quick", "--n-trials", "1", "--budget", "quick"],
        ["study.grid", "--budget", "quick"],
    ],
)
def test_damaged_data_exits_2_with_one_line_everywhere(tmp_path, kind, command):
    from tests.conftest import cli

    name = damage(tmp_path / "MNIST" / "raw", kind)
    db = tmp_path / "s.db"
    module, *rest = command
    storage = [] if module == "study.train" else ["--storage", f"sqlite:///{db}"]
    proc = cli(module, *rest, "--dataset", "mnist", "--data-dir", str(tmp_path), "--device", "cpu", *storage)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and name in proc.stderr and "Traceback" not in proc.stderr
    assert "search_spaces" not in proc.stderr  # the data file is the culprit, not the space
    assert not db.exists()  # the storage is untouched


# --- CIFAR-10 from the offline JPEG archive --------------------------------------------------------
def test_cifar10_built_from_the_real_archive_loads_as_30000_and_5000_balanced_images(real_cifar10):
    raw = load_raw("cifar10", real_cifar10)
    assert raw.train_images.shape == (30_000, 3, 32, 32) and raw.test_images.shape == (5_000, 3, 32, 32)
    assert raw.train_images.dtype == torch.uint8
    assert torch.bincount(raw.train_labels).tolist() == [3_000] * 10
    assert torch.bincount(raw.test_labels).tolist() == [500] * 10
    # classes interleaved, as in the official batches: the first batch holds every class
    assert len(set(raw.train_labels[:6000].tolist())) == 10
    assert raw.train_images.float().std() > 40  # real pictures, not a constant


@pytest.mark.parametrize("damage", ["missing", "not-an-archive", "truncated", "no-class-folders"])
def test_a_missing_or_corrupt_cifar10_archive_is_one_line_and_exit_2(tmp_path, damage):
    import tarfile

    from tests.conftest import cifar10_archive, cli, require

    archive = tmp_path / "c.tar.gz"
    if damage == "not-an-archive":
        archive.write_bytes(b"not a tar file\n" * 100)
    elif damage == "truncated":
        real = cifar10_archive()
        require(real.is_file(), f"the offline CIFAR-10 archive is not at {real}")
        archive.write_bytes(real.read_bytes()[:300_000])
    elif damage == "no-class-folders":
        image = tmp_path / "x.jpg"
        image.write_bytes(b"\xff\xd8 not really a jpeg")
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(image, arcname="pictures/x.jpg")
    out = tmp_path / "data"
    proc = cli("study.prepare", "cifar10", str(archive), "--data-dir", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("study.prepare: error: ") and str(archive) in lines[0]
    assert not (out / "cifar-10-batches-py" / "test_batch").exists()  # nothing half-written to read
