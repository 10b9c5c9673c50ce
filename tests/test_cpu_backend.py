"""What only the C++ CPU kernel promises: the same bits whatever the thread count. Its values,
winners and gradients are checked with every other backend's in test_backends.py, whose shapes
include the CPU kernel's tilings (row tiles of ~4096 pixels below a batch of 16, whole images from 16)."""

import pytest
import torch

import splatkern
from support import make_markers, random_like_image, require


@pytest.mark.parametrize("batch", [1, 40])  # tiled across rows, and one tile per image
def test_thread_count_does_not_change_results(batch):
    require("cpu", "cpu")
    inputs = make_markers((batch,), 30, 64, 70, seed=11)
    upstream = random_like_image((batch, 64, 70)).float()
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in inputs]
            image, index = splatkern.splat_render(*leaves, height=64, width=70, backend="cpu", return_index=True)
            (image * upstream).sum().backward()
            results.append([image, index, *(t.grad for t in leaves)])
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)
