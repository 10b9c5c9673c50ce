"""What every backend test shares: the backends to test, random markers, the mask of pixels whose
winner is certain, rendering with gradients, the tolerance table and the comparison with the oracle,
the facts that test_backends.py and test_cuda_emulated.py both check; and where cuobjdump is, for the
tests that read compiled GPU code.

The oracle is ``splat_render_reference`` in float64 on the very (dtype-rounded) inputs the backend saw.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import shutil
from pathlib import Path

import pytest
import torch

import splatkern
from splatkern.reference import splat_render_reference

# --- the backends under test ----------------------------------------------------------------------

# (device, backend) of every fused backend. Triton on CPU tensors runs under the interpreter, which
# tests/conftest.py turns on where there is no CUDA device.
FUSED_CASES = [
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.gpu),
]
# ... and the reference backend, where the public op's own dtype, batch and device handling is tested.
ALL_CASES = [
    *FUSED_CASES,
    pytest.param("cpu", "reference", id="cpu-reference"),
    pytest.param("cuda", "reference", id="cuda-reference", marks=pytest.mark.gpu),
]
# Backends whose backward has a separate deterministic path (the CPU kernel always is deterministic,
# the reference is autograd of torch.max).
WITH_ATOMIC_BACKWARD = ("cuda", "triton")
# The torch.library op pair of each fused backend.
FUSED_OPS = {
    "cpu": ("splat_forward", "splat_backward"),
    "cuda": ("splat_forward", "splat_backward"),
    "triton": ("splat_forward_triton", "splat_backward_triton"),
}


def require(device: str, backend: str) -> None:
    """Skip, saying why, where this machine or install cannot run `backend` on `device` tensors."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: torch.cuda.is_available() is False")
    if backend not in splatkern.available_backends(device):
        why = {
            ("cpu", "cpu"): "the C++ extension (splatkern._C) is not built",
            ("cuda", "cuda"): "the C++ extension was built without CUDA kernels",
            ("cpu", "triton"): "Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest.py sets it only without CUDA)",
        }.get((device, backend), "triton is not installed")
        pytest.skip(f"backend {backend!r} is not available for {device} tensors here: {why}")


def is_interpreted(device: str, backend: str) -> bool:
    """Triton's interpreter costs milliseconds per kernel loop step and program: such cases get small shapes."""
    return device == "cpu" and backend == "triton"


# --- inputs ---------------------------------------------------------------------------------------


def make_markers(batch_shape, n_markers, height, width, *, dtype=torch.float32, device="cpu", seed=0,
                 sigma_range=(0.3, 6.0), margin=4.0):
    """Random markers: centres over the image and up to `margin` px outside it, log-uniform sigmas,
    amplitudes in [-0.2, 1.2] (a few negative), and, for N > 2, marker 1 so far outside, with sigma 1,
    that the fused kernels flush both its axis factors to zero in every dtype."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, n_markers)
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    means = xy * torch.tensor([width - 1 + 2 * margin, height - 1 + 2 * margin], dtype=torch.float64) - margin
    lo, hi = torch.log(torch.tensor(sigma_range, dtype=torch.float64))
    sigmas = torch.exp(lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64))
    amps = 1.4 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.2
    if n_markers > 2:
        means[..., 1, :] = torch.tensor([-40.0, height + 40.0], dtype=torch.float64)
        sigmas[..., 1] = 1.0
    return tuple(t.to(device, dtype) for t in (means, sigmas, amps))


def random_like_image(shape, *, device="cpu", seed=0):
    """A seeded upstream gradient (drawn on CPU so that every device sees the same numbers)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


# --- which pixels have a certain winner -----------------------------------------------------------

# Relative gap between a pixel's two best values below which a fused kernel may rightly pick the
# other marker: separable factors round differently from the oracle (CUDA's fast __expf too, by up
# to ~50 ulp near the flush cut-off). Keyed by the dtype the kernels compute in.
NEAR_TIE = {torch.float32: 1e-4, torch.float64: 1e-9}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are computed in float32 (the contract)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def clear_pixels(means, sigmas, amps, height, width):
    """True where every backend must pick the oracle's winner: the best value beats the runner-up by
    more than NEAR_TIE, relative, and is clearly above where the kernels flush an axis factor (below
    sqrt(smallest normal)) to zero. With fewer than two markers the winner is never in doubt."""
    dtype = compute_dtype(means.dtype)
    batch_shape, n_markers = means.shape[:-2], means.shape[-2]
    if n_markers < 2:
        return torch.ones(*batch_shape, height, width, dtype=torch.bool, device=means.device)
    # Each marker alone, in float64: the marker axis becomes a batch axis of one-marker images.
    per_marker, _ = splat_render_reference(means.detach().double().unsqueeze(-2), sigmas.detach().double()[..., None],
                                           amps.detach().double()[..., None], height, width)
    best, runner_up = per_marker.topk(2, dim=-3).values.unbind(-3)
    # A value a * fx * fy above 2 max|a| sqrt(tiny) has both factors above sqrt(tiny): none flushed.
    flush_floor = 2 * float(amps.detach().abs().max()) * torch.finfo(dtype).tiny ** 0.5
    return (best - runner_up > NEAR_TIE[dtype] * best.abs()) & (best.abs() > flush_floor)


# --- rendering and comparing ----------------------------------------------------------------------


def renderer(backend):
    """splat_render with `backend` given: a backend name, or already a callable with splat_render's
    signature (tests/test_cuda_emulated.py renders through the emulated CUDA kernels that way)."""
    return backend if callable(backend) else functools.partial(splatkern.splat_render, backend=backend)


def render_with_grads(backend, means, sigmas, amps, height, width, upstream, **kwargs):
    """Image, winner map, and the gradients of sum(image * upstream) w.r.t. means, sigmas, amps.
    `backend`: as renderer takes it."""
    leaves = [t.detach().clone().requires_grad_() for t in (means, sigmas, amps)]
    image, index = renderer(backend)(*leaves, height=height, width=width, return_index=True, **kwargs)
    if not image.requires_grad:  # the reference's image for N = 0 does not depend on the markers
        return image, index, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(image, leaves, upstream.to(image.dtype), allow_unused=True)
    return image.detach(), index, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


# (atol, rtol) per dtype. Images: against the float64 oracle (float16/bfloat16 are computed in
# float32, so their error is the final rounding); float32 leaves room for CUDA's __expf (~|x| * 6e-8
# relative per factor exp(-x), x <= 43.7). Gradients: sums over the pixels a marker wins, in float32
# by atomics on GPUs, compared with atol relative to the largest gradient of the tensor (at least 1).
TOLERANCES = {
    #                image            gradients
    torch.float32: ((2e-6, 2e-5), (1e-4, 2e-4)),
    torch.float64: ((1e-12, 1e-10), (1e-10, 1e-9)),
    torch.float16: ((1e-3, 2e-3), (2e-3, 2e-3)),
    torch.bfloat16: ((8e-3, 1e-2), (1.6e-2, 1.6e-2)),
}


def assert_grads_close(grads, ref_grads, dtype):
    """Gradients of one backend against the reference's (either may be in any float dtype)."""
    atol, rtol = TOLERANCES[dtype][1]
    for name, grad, ref in zip(("means", "sigmas", "amps"), grads, ref_grads, strict=True):
        assert grad.shape == ref.shape, name
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        torch.testing.assert_close(grad.double(), ref.double(), atol=atol * scale, rtol=rtol,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")


def assert_matches_reference(backend, means, sigmas, amps, height, width, *, clear=None, seed=0, **kwargs):
    """The backend's image everywhere, and its winner map and gradients where the winner is clear
    (the upstream gradient is zero on other pixels, so none can send its gradient to the marker
    the oracle did not pick), against the float64 oracle. `clear` defaults to clear_pixels(...).
    Returns the image, winner map and gradients of the backend, and the mask of clear pixels."""
    dtype, device = means.dtype, means.device
    if clear is None:
        clear = clear_pixels(means, sigmas, amps, height, width)
    # Rounded to the dtype first: exactly what the op's backward receives.
    upstream = (random_like_image(clear.shape, device=device, seed=seed + 1) * clear).to(dtype)
    image, index, grads = render_with_grads(backend, means, sigmas, amps, height, width, upstream, **kwargs)
    ref_image, ref_index, ref_grads = render_with_grads(
        "reference", *(t.double() for t in (means, sigmas, amps)), height, width, upstream.double())

    assert image.dtype == dtype and image.device == device and image.shape == ref_image.shape
    assert index.dtype == torch.int32 and index.shape == image.shape
    assert all(g.dtype == dtype and g.device == device for g in grads)
    atol, rtol = TOLERANCES[dtype][0]
    torch.testing.assert_close(image.double(), ref_image, atol=atol, rtol=rtol)
    assert torch.equal(index[clear], ref_index[clear])
    assert_grads_close(grads, ref_grads, dtype)
    return image, index, grads, clear


# --- facts more than one test module checks ---------------------------------------------------------


def check_exact_ties_go_to_the_lowest_index(backend, device, dtype):
    """Exact copies of marker 1 (the brightest, at the centre) in the same Triton marker block (2), in
    Triton's next forward block (5) and in CUDA's next marker block (65) never win, nor get gradient."""
    height, width, copies = 11, 13, [2, 5, 65]
    means, sigmas, amps = make_markers((2,), 70, height, width, dtype=dtype, device=device, seed=3)
    means[:, 1] = torch.tensor([6.0, 5.0], dtype=dtype, device=device)
    sigmas[:, 1], amps[:, 1] = 2.0, 1.5
    others = [n for n in range(70) if n not in copies]
    # Where the winner is certain without the copies, it is marker 1 wherever a copy ties with it.
    clear = clear_pixels(means[:, others], sigmas[:, others], amps[:, others], height, width)
    for n in copies:
        means[:, n], sigmas[:, n], amps[:, n] = means[:, 1], sigmas[:, 1], amps[:, 1]

    _, index, grads, _ = assert_matches_reference(backend, means, sigmas, amps, height, width, clear=clear)
    assert (index == 1).sum() > 10
    assert not torch.isin(index, torch.tensor(copies, dtype=torch.int32, device=device)).any()
    for grad in grads:
        assert (grad[:, copies] == 0).all()
        assert (grad[:, 1] != 0).all()


def check_axis_factors_flush_at_the_contract_exponent(backend, device, dtype):
    """A per-axis factor exp(-e) is flushed to zero exactly when e > -0.5 * log(smallest normal), in
    the forward and in the backward's e (the contract; csrc/splat_constants.h kFlushExponent for C++)."""
    threshold = -0.5 * math.log(torch.finfo(dtype).tiny)
    below, above = threshold * (1 - 1e-3), threshold * (1 + 1e-3)
    # Four one-pixel images, one marker each (sigma 1, amp 1), offset from the pixel along x or y
    # by sqrt(2 e): that axis's exponent is e, the other's 0.
    offsets = [-math.sqrt(2 * e) for e in (below, above)]
    means = torch.tensor([[[offsets[0], 0.0]], [[offsets[1], 0.0]], [[0.0, offsets[0]]], [[0.0, offsets[1]]]])
    means = means.to(device, dtype)
    sigmas = torch.ones(4, 1, device=device, dtype=dtype)
    amps = torch.ones(4, 1, device=device, dtype=dtype, requires_grad=True)

    image = renderer(backend)(means, sigmas, amps, height=1, width=1)
    (grad_amps,) = torch.autograd.grad(image.sum(), amps)  # d image / d amp is the backward's e

    kept = math.exp(-below)
    assert image.flatten().tolist() == [pytest.approx(kept, rel=1e-3), 0.0] * 2
    assert grad_amps.flatten().tolist() == [pytest.approx(kept, rel=1e-3), 0.0] * 2
    # The oracle does not flush: what is checked here is the kernels' own rule.
    assert (splat_render_reference(means.double(), sigmas.double(), amps.detach().double(), 1, 1)[0] > 0).all()


# --- reading compiled GPU code ----------------------------------------------------------------------


def cuobjdump_path() -> str | None:
    """cuobjdump: the copy bundled with triton's NVIDIA backend, else the CUDA toolkit's on PATH."""
    triton = importlib.util.find_spec("triton")
    if triton is not None:
        bundled = Path(triton.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("cuobjdump")
