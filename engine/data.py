"""Datasets as in-memory tensors, plus a tiny seeded batcher.

The data here are small enough to live in memory, so a batch is one index gather instead of a
DataLoader round trip. Every random choice takes an explicit seed or `torch.Generator`; nothing
touches a global RNG (mnist1d seeds numpy's and Python's global RNGs, so we put them back).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import plugins
from .config import to_dict
from .errors import DataError
from .files import atomic_write
from .spec import DataConfig


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {"train": (self.x_train, self.y_train), "test": (self.x_test, self.y_test)}
        if len(self.y_val):
            out["val"] = (self.x_val, self.y_val)
        return out

    def to(self, device: torch.device | str) -> "Dataset":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return Dataset(**moved)


class Batcher:
    """Endless minibatches: a fresh permutation every epoch from the run's own generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.x, self.y = x, y
        self.n = len(y)
        self.batch_size = min(batch_size, self.n)
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next_index(self) -> torch.Tensor:
        """The indices of the next minibatch."""
        if self._pos + self.batch_size > len(self._order):  # drop the ragged tail of an epoch
            self._order = torch.randperm(self.n, generator=self.generator).to(self.x.device)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.next_index()
        return self.x[idx], self.y[idx]


def cache_dir() -> Path:
    """Where generated/downloaded data live: $NORMLAB_CACHE, else ~/.cache/normlab."""
    root = os.environ.get("NORMLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "normlab"
    )
    return Path(root)


_MEMO: dict[str, Dataset] = {}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load (and memoize within this process) the dataset a config describes, on the CPU."""
    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key not in _MEMO:
        loader = {
            "mnist1d": _mnist1d,
            "synthetic": _synthetic,
            "mnist": _torchvision,
            "fashion_mnist": _torchvision,
            "cifar10": _torchvision,
            "imagefolder": _imagefolder,
            **plugins.PLUGIN_DATASETS,  # a plugin returns x_train, y_train, x_test, y_test, num_classes
        }[cfg.name]
        x_tr, y_tr, x_te, y_te, classes = loader(cfg)
        _MEMO[key] = _finish(cfg, x_tr, y_tr, x_te, y_te, int(classes))
    return _MEMO[key]


def _finish(cfg: DataConfig, x_tr, y_tr, x_te, y_te, num_classes: int) -> Dataset:
    """Carve validation from train with a fixed seed, then apply the size limits."""
    x_tr, y_tr = torch.as_tensor(x_tr, dtype=torch.float32), torch.as_tensor(y_tr, dtype=torch.long)
    x_te, y_te = torch.as_tensor(x_te, dtype=torch.float32), torch.as_tensor(y_te, dtype=torch.long)
    if cfg.val_size >= len(y_tr):
        raise DataError(
            f"data.val_size={cfg.val_size} leaves no training data ({len(y_tr)} training examples); lower it"
        )
    order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(cfg.data_seed + 1))
    val_idx, tr_idx = order[: cfg.val_size].sort().values, order[cfg.val_size :].sort().values
    x_val, y_val = x_tr[val_idx], y_tr[val_idx]
    x_tr, y_tr = x_tr[tr_idx], y_tr[tr_idx]
    if cfg.max_train:
        x_tr, y_tr = x_tr[: cfg.max_train], y_tr[: cfg.max_train]
    if cfg.max_test:
        x_te, y_te = x_te[: cfg.max_test], y_te[: cfg.max_test]
    return Dataset(x_tr.contiguous(), y_tr, x_val.contiguous(), y_val, x_te.contiguous(), y_te, num_classes)


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _mnist1d(cfg: DataConfig):
    """MNIST-1D from the package's offline generator (never `get_dataset`, which downloads)."""
    name = f"mnist1d-n{cfg.num_samples}-split{cfg.train_split}-seed{cfg.data_seed}.npz"
    path = cache_dir() / name
    if not path.exists():
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise DataError(
                f"mnist1d: the 'mnist1d' package is not installed ({exc}); run `pip install normlab` "
                "(in a checkout: `pip install -e .`) again"
            ) from None
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = cfg.num_samples, cfg.train_split, cfg.data_seed
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = make_dataset(args)
        finally:  # make_dataset seeds the global RNGs; leave them as we found them
            random.setstate(py_state)
            np.random.set_state(np_state)
        _atomic_save_npz(
            path,
            x=d["x"].astype(np.float32),
            y=d["y"].astype(np.int64),
            x_test=d["x_test"].astype(np.float32),
            y_test=d["y_test"].astype(np.int64),
        )
    with np.load(path) as f:
        return f["x"], f["y"], f["x_test"], f["y_test"], 10


TEACHER_HIDDEN = 64  # hidden units of the random teacher network (tanh)
MIXTURE_MEAN_SCALE = 6.0  # class means ~ N(0, (6 / sqrt(dim))^2 I): well separated but overlapping
MIXTURE_NOISE_SCALE = 3.0  # within-class std = 3 * data.noise (at least 3e-3)


def _synthetic(cfg: DataConfig):
    """Inputs ~ N(0, I); labels from a random teacher network, or a Gaussian mixture."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    shape, k, n = tuple(cfg.input_shape), cfg.num_classes, cfg.num_samples
    dim = int(np.prod(shape))
    if cfg.synthetic_kind == "teacher":
        x = torch.randn(n, dim, generator=g)
        w1 = torch.randn(dim, TEACHER_HIDDEN, generator=g) / dim**0.5  # unit-variance pre-activations
        w2 = torch.randn(TEACHER_HIDDEN, k, generator=g) / TEACHER_HIDDEN**0.5
        logits = torch.tanh((x + cfg.noise * torch.randn(n, dim, generator=g)) @ w1) @ w2
        y = logits.argmax(1)
    else:
        means = torch.randn(k, dim, generator=g) / dim**0.5 * MIXTURE_MEAN_SCALE
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = means[y] + max(cfg.noise, 1e-3) * torch.randn(n, dim, generator=g) * MIXTURE_NOISE_SCALE
    x = x.reshape(n, *shape)
    split = int(n * cfg.train_split)
    return x[:split], y[:split], x[split:], y[split:], k


_TV = {"mnist": ("MNIST", 10), "fashion_mnist": ("FashionMNIST", 10), "cifar10": ("CIFAR10", 10)}


def _data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else cache_dir() / "torchvision"


def _import_torchvision(dataset: str):
    """torchvision is an optional extra: only its datasets (and image folders) need it."""
    try:
        import torchvision.datasets as tvd
        import torchvision.transforms as transforms
    except ImportError:
        raise DataError(
            f"{dataset}: needs torchvision, an optional extra; install it with pip install 'normlab[vision]' "
            "(in a checkout: pip install -e '.[vision]') "
            "(or choose data.name mnist1d or synthetic)"
        ) from None
    return tvd, transforms


def _torchvision(cfg: DataConfig):
    tvd, _ = _import_torchvision(cfg.name)

    cls_name, classes = _TV[cfg.name]
    root = _data_root(cfg)
    cls = getattr(tvd, cls_name)
    hint = (
        f"{cfg.name}: dataset files not found under {root}. Either {{set:run.data.download=true}} "
        f"on a machine with internet access, or put the files "
        f"torchvision's {cls_name} reads there (or {{set:run.data.root=DIR}} to the folder that holds them)"
    )
    offline = (
        f"{cfg.name}: download to {root} failed (no internet here?). Copy torchvision's "
        f"{cls_name} files into {root}, or {{set:run.data.root=DIR}} to the folder that holds them, and run "
        "without download"
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each mirror it tries
            train = cls(str(root), train=True, download=cfg.download)
            test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as exc:
        text = str(exc).lower()
        if cfg.download and "download" in text:
            raise DataError(offline) from None
        if "not found" in text or "corrupted" in text:
            raise DataError(hint) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{cfg.name}: could not read the files under {root}: {first}") from None
    except OSError:  # URLError and friends: no network
        raise DataError(offline) from None

    def as_tensor(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(np.asarray(ds.data)).float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 and cfg.name != "cifar10" else x
        if cfg.name == "cifar10":
            x = x.permute(0, 3, 1, 2)
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    x_tr, y_tr = as_tensor(train)
    x_te, y_te = as_tensor(test)
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, classes


def _imagefolder(cfg: DataConfig):
    """A user's own images: ROOT/train/<class>/*.png and ROOT/test/<class>/*.png."""
    tvd, T = _import_torchvision("imagefolder")

    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is None or not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(
            f"imagefolder: expected folders ROOT/train/<class>/ and ROOT/test/<class>/ "
            f"with images; got root={cfg.root!r}. {{Set:run.data.root=DIR}}"
        )
    size = cfg.image_size or 32
    tf = T.Compose([T.Resize((size, size)), T.ToTensor()])
    try:
        train, test = tvd.ImageFolder(str(root / "train"), tf), tvd.ImageFolder(str(root / "test"), tf)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"imagefolder: cannot read images under {root}: {exc}") from None
    if train.classes != test.classes:
        raise DataError(f"imagefolder: train classes {train.classes} differ from test classes {test.classes}")

    def stack(ds):
        xs, ys = zip(*[ds[i] for i in range(len(ds))])
        return torch.stack(xs), torch.tensor(ys)

    x_tr, y_tr = stack(train)
    x_te, y_te = stack(test)
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, len(train.classes)
