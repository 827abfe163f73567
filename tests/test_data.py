"""Datasets: MNIST-1D shapes and determinism, splits, synthetic data, torchvision offline paths."""

import random
import struct

import numpy as np
import pytest
import torch

from normlab.engine.data import Batcher, cache_dir, load_dataset
from normlab.engine.errors import DataError
from normlab.engine.spec import DataConfig


def test_mnist1d_shapes_match_the_published_split():
    d = load_dataset(DataConfig(name="mnist1d"))
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    assert d.num_classes == 10 and set(d.y_train.unique().tolist()) == set(range(10))
    # the generator standardizes the whole set (mean 0, sd 1); train alone is close to that
    assert abs(d.x_train.mean().item()) < 0.05 and abs(d.x_train.std().item() - 1) < 0.05
    assert any(p.name.startswith("mnist1d-n5000") for p in cache_dir().iterdir())


def test_mnist1d_is_deterministic_and_leaves_global_rngs_alone():
    random.seed(7)
    np.random.seed(7)
    py_before, np_before = random.random(), np.random.rand()
    random.seed(7)
    np.random.seed(7)
    a = load_dataset(DataConfig(name="mnist1d", num_samples=600, data_seed=3))
    assert (random.random(), np.random.rand()) == (py_before, np_before)
    from normlab.engine import data as D

    D._MEMO.clear()
    b = load_dataset(DataConfig(name="mnist1d", num_samples=600, data_seed=3))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset(DataConfig(name="mnist1d", num_samples=600, data_seed=4))
    assert not torch.equal(a.x_train, c.x_train)


def test_validation_split_is_carved_from_train_with_a_fixed_seed():
    full = load_dataset(DataConfig(name="mnist1d"))
    d = load_dataset(DataConfig(name="mnist1d", val_size=500))
    assert len(d.y_val) == 500 and len(d.y_train) == 3500 and len(d.y_test) == 1000
    rows = {tuple(r) for r in full.x_train.numpy().round(6).tolist()}
    val = {tuple(r) for r in d.x_val.numpy().round(6).tolist()}
    tr = {tuple(r) for r in d.x_train.numpy().round(6).tolist()}
    assert val <= rows and tr <= rows and not (val & tr)
    with pytest.raises(DataError, match="val_size=4000 leaves no training data"):
        load_dataset(DataConfig(name="mnist1d", val_size=4000))


def test_synthetic_shapes_and_seed():
    cfg = DataConfig(name="synthetic", num_samples=200, input_shape=[3, 8, 8], num_classes=4)
    d = load_dataset(cfg)
    assert d.x_train.shape == (160, 3, 8, 8) and d.x_test.shape == (40, 3, 8, 8)
    assert d.num_classes == 4 and d.y_train.max() < 4
    m = load_dataset(DataConfig(name="synthetic", synthetic_kind="mixture", num_samples=100))
    assert m.x_train.shape == (80, 40)


def test_batcher_visits_every_example_once_per_epoch():
    x = torch.arange(10.0).unsqueeze(1)
    b = Batcher(x, torch.arange(10), 5, torch.Generator().manual_seed(0))
    epoch = torch.cat([b.next()[1], b.next()[1]])
    assert sorted(epoch.tolist()) == list(range(10))
    b2 = Batcher(x, torch.arange(10), 5, torch.Generator().manual_seed(0))
    assert torch.equal(b2.next()[1], epoch[:5])  # same seed, same order


def _write_idx(path, array: np.ndarray) -> None:
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">i", n) for n in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_reads_files_in_its_on_disk_format(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(30) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(10))
    d = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.y_train.tolist() == [i % 10 for i in range(30)]
    # standardized per channel with the training statistics
    assert abs(d.x_train.mean().item()) < 1e-4 and abs(d.x_train.std().item() - 1) < 1e-2


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_torchvision_data_gives_one_clear_error(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name=name, root=str(tmp_path / "nowhere")))
    msg = str(e.value)
    assert msg.startswith(f"{name}: dataset files not found under {tmp_path / 'nowhere'}")
    assert "run.data.download=true" in msg and "run.data.root" in msg


def test_imagefolder_needs_train_and_test_folders(tmp_path):
    with pytest.raises(DataError, match="imagefolder: expected folders ROOT/train"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=True))
    assert str(e.value).startswith(f"cifar10: download to {tmp_path} failed (no internet here?)")
    assert "\n" not in str(e.value)


def test_imagefolder_reads_a_users_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    d = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert d.x_train.shape == (6, 3, 16, 16) and d.x_test.shape == (4, 3, 16, 16)
    assert d.num_classes == 2 and sorted(d.y_train.tolist()) == [0, 0, 0, 1, 1, 1]


def test_torchvision_datasets_without_torchvision_say_which_extra_to_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DataError, match=r"cifar10: needs torchvision, an optional extra; install it with pip install"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
