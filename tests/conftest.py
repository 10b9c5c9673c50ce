"""Session setup and shared fixtures.

On machines without CUDA, Triton's interpreter runs the Triton kernels on CPU. TRITON_INTERPRET
must be set before anything imports triton (setting it later leaves tl.max and tl.sum broken), and
pytest imports this file before any test module. Importing torch does not import triton. A value
set by the caller is kept.
"""

import os
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Real MNIST in torchvision's layout, beside the clone (CI and this machine keep shared/ there).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}/MNIST/raw (expected beside the repository)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Batches of 16 gain little from a second thread, and on a busy 2-core machine two OpenMP threads
    waiting on each other made a training test 8x slower (65 s instead of 8 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
