from pathlib import Path

import pytest

# Real MNIST in torchvision's layout, beside the clone (CI and this machine keep shared/ there).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}/MNIST/raw (expected beside the repository)")
    return SHARED_DATA
