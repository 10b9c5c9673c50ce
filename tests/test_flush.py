"""Every fused kernel flushes a per-axis factor exp(-e) to zero exactly when e > -0.5 * log(smallest
normal) (the contract: splatkern/reference.py). The C++ value is kFlushExponent in csrc/splat.h,
shared by the CPU and CUDA kernels; this checks each backend against the number the contract names.
"""

from __future__ import annotations

import math

import pytest
import torch

import splatkern
from splatkern import splat_render

CASES = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "triton", id="triton", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_axis_factors_flush_at_the_contract_exponent(device, backend, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: torch.cuda.is_available() is False")
    if backend not in splatkern.available_backends(device):
        pytest.skip(f"backend {backend!r} is not available for {device} tensors in this install")
    threshold = -0.5 * math.log(torch.finfo(dtype).tiny)
    below, above = threshold * (1 - 1e-3), threshold * (1 + 1e-3)
    # Four one-pixel images, one marker each (sigma 1, amp 1), offset from the pixel along x or y
    # by sqrt(2 e): that axis's exponent is e, the other's 0.
    offsets = [-math.sqrt(2 * e) for e in (below, above)]
    means = torch.tensor([[[offsets[0], 0.0]], [[offsets[1], 0.0]], [[0.0, offsets[0]]], [[0.0, offsets[1]]]])
    means = means.to(device, dtype).requires_grad_(True)
    sigmas = torch.ones(4, 1, device=device, dtype=dtype)
    amps = torch.ones(4, 1, device=device, dtype=dtype, requires_grad=True)

    image = splat_render(means, sigmas, amps, height=1, width=1, backend=backend)
    (grad_amps,) = torch.autograd.grad(image.sum(), amps)

    kept = math.exp(-below)
    assert image.flatten().tolist() == [pytest.approx(kept, rel=1e-3), 0.0] * 2
    # The backward's e (d image / d amp) is flushed the same way.
    assert grad_amps.flatten().tolist() == [pytest.approx(kept, rel=1e-3), 0.0] * 2
