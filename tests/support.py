"""What the backend tests share besides splatkern.testing (random markers, the mask of pixels whose
winner is certain, rendering with gradients, the tolerance table and the comparison with the
oracle, which users run too): the backends to test, that comparison as assertions, the facts that
test_backends.py and test_cuda_emulated.py both check; and where cuobjdump is, for the tests that
read compiled GPU code.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest
import torch

import splatkern
from splatkern.facts import FLUSH_EXPONENT, UNIT_AMP_COMPOSITES
from splatkern.reference import composite_reference, marker_values, splat_render_reference
from splatkern.testing import (  # noqa: F401 - re-exported for the test modules
    KERNEL_DTYPES,
    TOLERANCES,
    WITH_ATOMIC_BACKWARD,
    backward_modes,
    clear_pixels,
    compare_with_reference,
    is_interpreted,
    make_markers,
    make_strokes,
    measure_grads,
    random_like_image,
    render_with_grads,
    renderer,
)

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
CUDA_FUSED_CASES = [case for case in FUSED_CASES if case.values[0] == "cuda"]
CUDA_CASES = [case for case in ALL_CASES if case.values[0] == "cuda"]
# Where the reference backend is compared with the float64 oracle: on CPU it is the oracle itself, up to
# the wrapper's dtype casts, which every other case runs too; on CUDA it also runs on another device.
COMPARED_CASES = [*FUSED_CASES, *(case for case in CUDA_CASES if case.values[1] == "reference")]
CPP_CASES = [case for case in FUSED_CASES if case.values[1] in ("cpu", "cuda")]


def mode_id(backend: str, deterministic: bool) -> str:
    if backend not in WITH_ATOMIC_BACKWARD:
        return ""
    return "-deterministic" if deterministic else "-atomic"


def with_modes(cases):
    """(device, backend, deterministic) for each case and each of its backward modes."""
    return [
        pytest.param(*case.values, deterministic, marks=case.marks, id=case.id + mode_id(case.values[1], deterministic))
        for case in cases
        for deterministic in backward_modes(case.values[1])
    ]


def contract_matrix(cases, dtypes, shapes):
    """(device, backend, dtype, deterministic, shape) for every case, with the deterministic backward
    of the backends that have one in the kernels' own dtypes. The interpreted case is marked skip,
    with the reason, for shapes too slow for the interpreter and for float16/bfloat16, which run the
    very float32 kernels it checks (cuda-triton runs all of them)."""
    params = []
    for case in cases:
        device, backend = case.values
        for dtype in dtypes:
            for deterministic in backward_modes(backend) if dtype in KERNEL_DTYPES else (False,):
                for shape in shapes:
                    marks = list(case.marks)
                    if is_interpreted(device, backend) and not shape.interpreted:
                        marks.append(pytest.mark.skip(reason="Triton interpreter: shape too slow for it (cuda-triton runs it)"))
                    elif is_interpreted(device, backend) and dtype not in KERNEL_DTYPES:
                        marks.append(pytest.mark.skip(reason="Triton interpreter: float16/bfloat16 run the float32 kernels "
                                                             "it checks (cuda-triton runs them)"))
                    dtype_id = str(dtype).removeprefix("torch.")
                    params.append(pytest.param(device, backend, dtype, deterministic, shape, marks=marks,
                                               id=f"{case.id}-{dtype_id}{mode_id(backend, deterministic)}-{shape}"))
    return params


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


def soft_markers(composite, batch_shape, n_markers, height, width, **kwargs):
    """make_markers, with amps in [0, 1] (some exactly 0 and 1) for the modes that need them."""
    return make_markers(batch_shape, n_markers, height, width, unit_amps=composite in UNIT_AMP_COMPOSITES, **kwargs)


def soft_state_reference(means, sigmas, amps, height, width, composite, temperature):
    """The per-pixel state a fused forward of a soft composite saves for its backward, [B, 2, H, W]
    (csrc/splat.cpp states it), from the reference's marker values, in their dtype."""
    return state_of_values(marker_values(means, sigmas, amps, height, width), composite, temperature)


def state_of_values(values, composite, temperature):
    """The soft state [B, 2, H, W] of per-marker (or per-stroke) values [B, N, H, W], in their dtype."""
    if composite == "smoothmax":
        log_sum = temperature * torch.logsumexp(values / temperature, dim=1)
        return torch.stack([log_sum, composite_reference(values, composite, temperature)], dim=1)
    factors = 1 - values
    zero = factors == 0
    return torch.stack([torch.where(zero, 1, factors).prod(dim=1), zero.sum(dim=1).to(values.dtype)], dim=1)


def assert_grads_close(grads, ref_grads, dtype):
    """Gradients of one backend against the reference's (either may be in any float dtype)."""
    failed = [measure.describe() for measure in measure_grads(grads, ref_grads, dtype) if not measure.ok]
    assert not failed, "; ".join(failed)


def assert_matches_reference(backend, means, sigmas, amps, height, width, *, clear=None, seed=0, **kwargs):
    """splatkern.testing.compare_with_reference, asserted: the image everywhere, and the winner map
    and gradients where the winner is clear. Returns the image, winner map and gradients of the
    backend, and the mask of clear pixels."""
    comparison = compare_with_reference(backend, means, sigmas, amps, height, width, clear=clear, seed=seed, **kwargs)
    assert comparison.ok, comparison.describe()
    return comparison.image, comparison.index, comparison.grads, comparison.clear


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
    """A per-axis factor exp(-e) is flushed to zero exactly when e > splatkern.facts.FLUSH_EXPONENT,
    in the forward and in the backward's e (the contract)."""
    threshold = FLUSH_EXPONENT[str(dtype).removeprefix("torch.")]
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
