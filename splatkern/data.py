"""Datasets behind one loader: images as float32 ``[N, 28, 28]`` in ``[0, 1]`` and int64 labels ``[N]``.

``digits`` (scikit-learn's embedded 8x8 digits, resized) needs no files. The torchvision sets are
read from ``data_dir`` in torchvision's layout (``<data_dir>/MNIST/raw/...``) and downloaded there
only when ``download`` is allowed and the network answers.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

IMAGE_SIZE = 28
DEFAULT_DATA_DIR = Path("~/.cache/splatkern").expanduser()
DATASETS = ("digits", "mnist", "fashion-mnist", "emnist-letters", "emnist-balanced")
# scikit-learn's digits have no split: every 5th image is the test set (class-balanced, fixed).
DIGITS_TEST_EVERY = 5


class ImageSet(NamedTuple):
    images: torch.Tensor  # [N, 28, 28] float32 in [0, 1]
    labels: torch.Tensor  # [N] int64


class DatasetNotFound(FileNotFoundError):
    """The dataset's files are missing from data_dir and could not be downloaded."""


def load(name: str, split: str, data_dir: str | os.PathLike = DEFAULT_DATA_DIR, *, download: bool = True,
         limit: int | None = None) -> ImageSet:
    """The ``split`` ("train" or "test") of dataset ``name`` (one of ``DATASETS``); only the first ``limit``
    images when ``limit`` is given."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if name == "digits":
        images, labels = _sklearn_digits(split)
    else:
        images, labels = _torchvision(name, split == "train", Path(data_dir).expanduser(), download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageSet(images.contiguous(), labels.to(torch.int64))


def _sklearn_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # noqa: PLC0415 - scikit-learn is an optional dependency

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # pixel values are 0..16
    images = F.interpolate(images[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(digits.target)
    is_test = torch.arange(len(labels)) % DIGITS_TEST_EVERY == 0
    keep = is_test if split == "test" else ~is_test
    return images[keep, 0].clamp(0.0, 1.0), labels[keep]


def _torchvision(name: str, train: bool, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets  # noqa: PLC0415 - torchvision is an optional dependency

    if name.startswith("emnist-"):
        emnist_split = name.removeprefix("emnist-")
        cls, extra = datasets.EMNIST, {"split": emnist_split}
        prefix = f"emnist-{emnist_split}-{'train' if train else 'test'}"
    else:
        cls, extra = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name], {}
        prefix = "train" if train else "t10k"
    make = functools.partial(cls, root, train=train, **extra)
    try:
        dataset = make(download=False)
    except RuntimeError:
        expected = [root / cls.__name__ / "raw" / f"{prefix}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]
        dataset = _download(make, name, download, expected)
    images = dataset.data.to(torch.float32) / 255.0
    if name.startswith("emnist-"):
        images = images.transpose(1, 2)  # EMNIST stores each image transposed relative to MNIST
    return images, dataset.targets


def _download(make, name: str, download: bool, expected: list[Path]):
    missing = "\n  ".join(str(path) for path in expected)
    if not download:
        raise DatasetNotFound(f"dataset {name!r} not found; expected the files\n  {missing}\n(downloading is off)")
    raw = expected[0].parent
    created = [folder for folder in (raw.parent, raw) if not folder.exists()]
    try:
        return make(download=True)
    except (RuntimeError, OSError) as error:
        for folder in reversed(created):  # torchvision makes the folders first: leave data_dir as it was
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise DatasetNotFound(
            f"dataset {name!r} not found and the download failed ({str(error).strip().splitlines()[-1]}); "
            f"expected the files\n  {missing}\nPut them there (torchvision layout) or pass --data-dir."
        ) from error
