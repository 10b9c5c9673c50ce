import struct

import pytest
import torch

from splatkern import data


def test_digits_are_resized_into_unit_range_with_disjoint_fixed_splits():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.images.shape == (1437, 28, 28) and test.images.shape == (360, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert set(test.labels.tolist()) == set(range(10))
    # every 5th image is a test image: the first one of each set differs
    assert not torch.equal(train.images[0], test.images[0])


def test_real_mnist_loads_from_the_shared_directory(mnist_root):
    test = data.load("mnist", "test", mnist_root, download=False, limit=100)
    assert test.images.shape == (100, 28, 28) and test.labels.shape == (100,)
    assert test.labels[:3].tolist() == [7, 2, 1]  # MNIST's test set starts with a 7, a 2 and a 1
    assert float(test.images.max()) == 1.0 and float(test.images.min()) == 0.0


def test_missing_dataset_names_the_files_it_expected(tmp_path):
    with pytest.raises(data.DatasetNotFound, match=r"FashionMNIST/raw/t10k-images-idx3-ubyte"):
        data.load("fashion-mnist", "test", tmp_path, download=False)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("cifar", "train")
    with pytest.raises(ValueError, match="split"):
        data.load("digits", "validation")


def _write_idx(path, array: torch.Tensor) -> None:
    code = 0x08  # unsigned bytes
    header = struct.pack(">HBB", 0, code, array.dim()) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def test_emnist_images_are_transposed_to_mnist_orientation(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    stored = torch.zeros(2, 28, 28, dtype=torch.uint8)
    stored[:, 3, 20] = 255  # EMNIST's file holds the transpose of the upright glyph
    _write_idx(raw / "emnist-letters-test-images-idx3-ubyte", stored)
    _write_idx(raw / "emnist-letters-test-labels-idx1-ubyte", torch.tensor([1, 26]))
    letters = data.load("emnist-letters", "test", tmp_path, download=False)
    assert letters.images.shape == (2, 28, 28)
    assert float(letters.images[0, 20, 3]) == 1.0 and float(letters.images[0, 3, 20]) == 0.0
    assert letters.labels.tolist() == [1, 26]
