"""Sequence-classification datasets for the training experiment, as plain tensors.

Every loader returns a :class:`SequenceDataset`: float inputs ``x`` of shape ``(N, L, C)``
(batch, length, channels) and integer labels ``y`` of shape ``(N,)``, split into train
and test. Nothing here downloads anything.

``mnist1d``
    MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024;
    arXiv 2011.14439): sequences of length 40, 10 classes, *generated locally* with the
    ``mnist1d`` package's ``make_dataset`` (seed 42), then cached on disk as ``.npz``. By
    default the published 4000 train / 1000 test split (the generator's default arguments);
    with ``test_examples=N`` one generator call makes 4000 + N sequences, 4000 to train on and
    N to test on (a larger test set decides smaller differences). The package's
    ``get_dataset`` is never called: it downloads.
``smnist``
    Sequential MNIST (pixel by pixel, ``L = 784``, ``C = 1``) from a local copy of
    MNIST in torchvision's layout (``DATA_DIR/MNIST/raw/...``).
``scifar``
    Sequential CIFAR-10 (``L = 1024``, ``C = 3``, the S4 benchmark's colour variant)
    from a local copy in torchvision's layout (``DATA_DIR/cifar-10-batches-py/``).
any ``(x, y)`` tensors
    :func:`from_tensors` wraps your own data, e.g.::

        from adapters.torch.data import from_tensors
        from adapters.torch.training import ExperimentConfig, run_comparison
        data = from_tensors(x_train, y_train, x_test, y_test, name="mine")
        run_comparison(ExperimentConfig(out="runs/mine"), data=data)

Errors a user can fix (a missing directory, torchvision not installed, files not
found) raise :class:`DatasetError` with a message that says how.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "DatasetError", "SequenceDataset", "default_cache_dir", "from_tensors", "load_dataset",
           "mnist1d", "scifar", "smnist"]

DATASETS = ("mnist1d", "smnist", "scifar")


class DatasetError(ValueError):
    """A dataset cannot be loaded for a reason the user can fix (the message says how)."""


@dataclass(frozen=True)
class SequenceDataset:
    """Train and test tensors of a sequence-classification task.

    Attributes
    ----------
    x_train, x_test : Tensor, float32, shapes (N, L, C) and (M, L, C)
    y_train, y_test : Tensor, int64, shapes (N,) and (M,)
        Class indices in ``0 .. n_classes - 1``.
    name : str
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "custom"

    @property
    def seq_len(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def in_features(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def subset(self, n_train: int, n_test: int) -> "SequenceDataset":
        """The first ``n_train`` training and ``n_test`` test examples (for smoke runs)."""
        return SequenceDataset(self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
                               self.y_test[:n_test], self.name)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test sequences, length {self.seq_len}, "
                f"{self.in_features} channel(s), {self.n_classes} classes")


def from_tensors(x_train, y_train, x_test, y_test, *, name: str = "custom") -> SequenceDataset:
    """Wrap your own data for :func:`adapters.torch.training.run_comparison`.

    Parameters
    ----------
    x_train, x_test : array-like, shape (N, L) or (N, L, C)
        Input sequences (numpy arrays or tensors); a 2-D input is one channel.
    y_train, y_test : array-like of int, shape (N,)
        Class labels ``0 .. K - 1``.
    name : str
        Shown in tables and ``results.json``.

    Returns
    -------
    SequenceDataset
        float32 inputs of shape (N, L, C) and int64 labels, on the CPU.

    Raises
    ------
    DatasetError
        Mismatched lengths or shapes, non-integer or negative labels, NaN/Inf inputs.
    """
    xs, ys = [], []
    for which, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach().cpu()
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        if x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
            raise DatasetError(f"x_{which} must have shape (N, L) or (N, L, C) with N, L >= 1, got {tuple(x.shape)}.")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DatasetError(f"y_{which} must have shape (N,) = ({x.shape[0]},) to match x_{which}, "
                               f"got {tuple(y.shape)}.")
        if y.is_floating_point() or y.is_complex():
            if not bool((y == y.round()).all()):
                raise DatasetError(f"y_{which} must hold integer class labels, got non-integer values.")
        y = y.to(torch.int64)
        if bool((y < 0).any()):
            raise DatasetError(f"y_{which} must hold class labels 0..K-1, got a negative label {int(y.min())}.")
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise DatasetError(f"x_{which} contains NaN or Inf; clean the data first.")
        xs.append(x.contiguous())
        ys.append(y)
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(f"train and test sequences must have the same (L, C), got {tuple(xs[0].shape[1:])} and "
                           f"{tuple(xs[1].shape[1:])}.")
    return SequenceDataset(xs[0], ys[0], xs[1], ys[1], name)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lti_reduce``, else ``~/.cache/lti_reduce``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lti_reduce"


def mnist1d(cache_dir: str | os.PathLike | None = None, *, test_examples: int | None = None) -> SequenceDataset:
    """MNIST-1D, generated locally with ``mnist1d.data.make_dataset`` and cached.

    Parameters
    ----------
    cache_dir : path, optional
        Where the generated arrays are kept (created if needed); default
        :func:`default_cache_dir`. The file name carries a hash of the generator's
        arguments, so a different ``mnist1d`` default never reads a stale cache.
    test_examples : int, optional
        ``None``: the published split. ``N`` (rounded down to a multiple of 10: the generator
        makes the same number of sequences of each class): the generator is called with
        ``num_samples = 4000 + N`` and ``train_split = 4000 / (4000 + N)``. The training set then has the published size but not the published examples (the generator draws
        and normalizes all ``4000 + N`` together).

    Returns
    -------
    SequenceDataset
        4000 train / 1000 (or ``N``) test sequences, shape (N, 40, 1), 10 classes, named
        ``"mnist1d"`` (published split) or ``"mnist1d-4000/N"``.

    Notes
    -----
    Generation takes a few seconds; the cache makes later runs instant. If the cache
    directory is not writable the data are regenerated every time (no error).
    ``make_dataset`` reseeds numpy's global generator; callers seed after loading.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DatasetError("the mnist1d dataset needs the 'mnist1d' package: pip install mnist1d "
                           "(or pass --dataset smnist/scifar with --data-dir).") from exc
    args = get_dataset_args()
    name = "mnist1d"
    if test_examples is not None:
        test_examples = int(test_examples) // 10 * 10
        if test_examples < 10:
            raise DatasetError(f"test_examples must be at least 10, got {test_examples}.")
        n_train = 4000
        args.num_samples = n_train + test_examples
        args.train_split = n_train / args.num_samples
        if int(args.num_samples * args.train_split) != n_train:  # guard the generator's int() split
            args.train_split = (n_train + 0.5) / args.num_samples
        name = f"mnist1d-{n_train}/{test_examples}"
    spec = {k: v for k, v in vars(args).items() if k != "url"}
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"mnist1d-{digest}.npz"
    arrays = None
    if path.is_file():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a truncated or foreign file: regenerate it
            arrays = None
    if arrays is None:
        raw = make_dataset(args)
        arrays = {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except OSError:
            pass
    return from_tensors(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], name=name)


def _torchvision(dataset: str):
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets
    except ImportError as exc:
        raise DatasetError(f"the {dataset} dataset is read with torchvision, which is not installed: "
                           "pip install torchvision (or use --dataset mnist1d, which needs no files).") from exc
    return datasets


def _train_test(dataset_cls, root: Path, what: str, layout: str):
    """The train and test splits of a torchvision dataset class read from ``root`` (never downloaded)."""
    try:
        return (dataset_cls(str(root), train=True, download=False),
                dataset_cls(str(root), train=False, download=False))
    except RuntimeError as exc:
        raise DatasetError(f"no {what} files found under '{root}': it must contain {layout}.") from exc


def _existing_dir(data_dir, dataset: str, layout: str) -> Path:
    if data_dir is None:
        raise DatasetError(f"the {dataset} dataset is read from local files: pass --data-dir DIR (data_dir=) pointing "
                           f"at a directory with {layout}.")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data directory '{path}' does not exist; pass --data-dir pointing at a directory with "
                           f"{layout}.")
    return path


def smnist(data_dir) -> SequenceDataset:
    """Sequential MNIST: each image as a sequence of 784 pixels in [0, 1], normalized.

    Parameters
    ----------
    data_dir : path
        A directory holding torchvision's ``MNIST/raw`` files (e.g. from
        ``torchvision.datasets.MNIST(data_dir, download=True)`` on a machine with network).

    Returns
    -------
    SequenceDataset
        60000 train / 10000 test sequences of shape (784, 1), 10 classes.
    """
    layout = "torchvision's MNIST files (DIR/MNIST/raw/train-images-idx3-ubyte ...)"
    root = _existing_dir(data_dir, "smnist", layout)
    train, test = _train_test(_torchvision("smnist").MNIST, root, "MNIST", layout)

    def prep(ds):
        x = ds.data.reshape(len(ds.data), -1, 1).to(torch.float32) / 255.0
        return (x - 0.1307) / 0.3081, ds.targets

    return from_tensors(*prep(train), *prep(test), name="smnist")


def scifar(data_dir) -> SequenceDataset:
    """Sequential CIFAR-10: each image as 1024 RGB pixels (row-major), normalized per channel.

    Parameters
    ----------
    data_dir : path
        A directory holding torchvision's ``cifar-10-batches-py`` folder.

    Returns
    -------
    SequenceDataset
        50000 train / 10000 test sequences of shape (1024, 3), 10 classes.
    """
    layout = "torchvision's CIFAR-10 folder (DIR/cifar-10-batches-py/)"
    root = _existing_dir(data_dir, "scifar", layout)
    train, test = _train_test(_torchvision("scifar").CIFAR10, root, "CIFAR-10", layout)
    mean = torch.tensor([0.4914, 0.4822, 0.4465])
    std = torch.tensor([0.2470, 0.2435, 0.2616])

    def prep(ds):
        x = torch.as_tensor(ds.data).reshape(len(ds.data), -1, 3).to(torch.float32) / 255.0
        return (x - mean) / std, torch.as_tensor(ds.targets)

    return from_tensors(*prep(train), *prep(test), name="scifar")


def load_dataset(name: str, data_dir=None, *, mnist1d_test: int | None = None) -> SequenceDataset:
    """The dataset called ``name`` (one of :data:`DATASETS`).

    ``data_dir`` is the cache directory for ``mnist1d`` (optional) and the directory
    holding the files for ``smnist`` and ``scifar`` (required). ``mnist1d_test``: the
    ``test_examples`` of :func:`mnist1d` (ignored for the other datasets).
    """
    if name == "mnist1d":
        return mnist1d(data_dir, test_examples=mnist1d_test)
    if name == "smnist":
        return smnist(data_dir)
    if name == "scifar":
        return scifar(data_dir)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or pass your own tensors "
                       "with adapters.torch.data.from_tensors.")
