"""The text task's data: the standard library's text, split by file, and the windows cut from it.

The corpus is text every Python installation carries (:func:`load_corpus`): the standard library's English
documentation (``pydoc_data/topics.py``) and a fixed list of its source files, split into training and
validation **by file**; the SHA-256 of each split's bytes is recorded with the results, so two results are
comparable exactly when their hashes agree (the files differ between Python versions). Used by
:mod:`adapters.torch.experiment.text`.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import ConfigError

if TYPE_CHECKING:
    from .text import TextConfig

__all__ = ["TRAIN_FILES", "VAL_FILES", "TextCorpus", "load_corpus", "train_batches", "val_windows"]

#: Standard-library files (relative to ``sysconfig.get_paths()["stdlib"]``) of the training split: the English
#: documentation of ``pydoc`` and modules present under these names in every CPython since 3.8.
TRAIN_FILES = ("pydoc_data/topics.py", "argparse.py", "dataclasses.py", "difflib.py", "inspect.py", "typing.py",
               "functools.py", "enum.py", "ast.py", "tokenize.py", "configparser.py", "shutil.py",
               "subprocess.py", "threading.py", "random.py", "pickle.py", "logging/__init__.py")
#: ... and of the validation split (other files: the model never trains on them).
VAL_FILES = ("textwrap.py", "fractions.py", "statistics.py", "heapq.py", "calendar.py", "csv.py")


@dataclass
class TextCorpus:
    """Byte sequences of the two splits, the files they came from and their content hashes.

    ``train`` and ``val`` are ``uint8`` tensors of shape ``(n_bytes,)`` (the files concatenated in the order
    of :data:`TRAIN_FILES` / :data:`VAL_FILES`, each followed by a newline); ``sha256`` maps split to the
    hex digest of those bytes.
    """

    train: torch.Tensor
    val: torch.Tensor
    files: dict
    sha256: dict
    stdlib: str

    def describe(self) -> dict:
        return {"name": "stdlib-text", "stdlib": self.stdlib, "files": self.files, "sha256": self.sha256,
                "train_bytes": int(self.train.numel()), "val_bytes": int(self.val.numel())}


def load_corpus(stdlib: str | None = None) -> TextCorpus:
    """Read the training and validation files from the standard library (no download).

    Parameters
    ----------
    stdlib : str, optional
        Directory of the standard library (default ``sysconfig.get_paths()["stdlib"]``).

    Raises
    ------
    ConfigError
        A file of :data:`TRAIN_FILES` / :data:`VAL_FILES` is missing (a trimmed Python installation).
    """
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    splits, hashes = {}, {}
    for split, names in (("train", TRAIN_FILES), ("val", VAL_FILES)):
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise ConfigError(f"the text task reads standard-library files that this Python does not have under "
                              f"{root}: {missing}; use a full CPython installation (some distributions ship "
                              "pydoc_data separately, e.g. a python3-doc package).")
        data = b"".join((root / n).read_bytes() + b"\n" for n in names)
        hashes[split] = hashlib.sha256(data).hexdigest()
        splits[split] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    return TextCorpus(splits["train"], splits["val"], {"train": list(TRAIN_FILES), "val": list(VAL_FILES)}, hashes,
                      str(root))


def _windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``(len(starts), length)`` int64 windows ``data[s : s + length]``."""
    idx = starts[:, None] + torch.arange(length)[None, :]
    return data[idx].long()


def val_windows(corpus: TextCorpus, config: TextConfig) -> torch.Tensor:
    """``n_val`` windows of ``seq_len + 1`` bytes, evenly spaced over the validation split (seed-independent)."""
    last = corpus.val.numel() - (config.seq_len + 1)
    starts = torch.linspace(0, last, config.n_val).long()
    return _windows(corpus.val, starts, config.seq_len + 1)


def train_batches(corpus: TextCorpus, config: TextConfig, seed: int):
    """The ``steps`` training batches of a seed: random windows of ``seq_len + 1`` bytes (same for every run)."""
    gen = torch.Generator().manual_seed(seed + 1)
    last = corpus.train.numel() - (config.seq_len + 1)
    for _ in range(config.steps):
        starts = torch.randint(0, last + 1, (config.batch_size,), generator=gen)
        yield _windows(corpus.train, starts, config.seq_len + 1)
