"""What splat_render itself does before any backend runs: argument checks (shapes, dtypes, devices,
canvas size) with clear errors naming the argument, the backend choice, and defaults. The checks
of marker values run inside each backend: tests/test_backends.py."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import splatkern
from support import require


def good():
    return torch.rand(2, 3, 2) * 8, torch.rand(2, 3) + 0.5, torch.rand(2, 3)


def render(means, sigmas, amps, backend="auto", height=8, width=9):
    return splatkern.splat_render(means, sigmas, amps, height=height, width=width, backend=backend)


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda m, s, a: (m[..., :1], s, a), ValueError, r"means must have shape \[\.\.\., N, 2\]"),
        (lambda m, s, a: (m[0, 0], s, a), ValueError, "means must have shape"),
        (lambda m, s, a: (m, s[:, :2], a), ValueError, "sigmas must have shape"),
        (lambda m, s, a: (m, s, a[None]), ValueError, "amps must have shape"),
        (lambda m, s, a: (m.long(), s, a), TypeError, "means must be a floating-point tensor"),
        (lambda m, s, a: (m, s.int(), a), TypeError, "sigmas must be a floating-point tensor"),
        (lambda m, s, a: (m, s, a.bool()), TypeError, "amps must be a floating-point tensor"),
        (lambda m, s, a: (m.double(), s, a), TypeError, "must share one dtype"),
        (lambda m, s, a: (m.numpy(), s, a), TypeError, "means must be a torch.Tensor"),
        (lambda m, s, a: (m, s.to("meta"), a), ValueError, "must be on one device"),
    ],
    ids=["means-last-dim", "means-rank", "sigmas-shape", "amps-shape", "means-int", "sigmas-int", "amps-bool",
         "mixed-dtype", "numpy", "devices"],
)
def test_bad_markers(mutate, error, match):
    with pytest.raises(error, match=match):
        render(*mutate(*good()))


@pytest.mark.parametrize("height,width,error,match", [
    (0, 5, ValueError, "height must be >= 1"),
    (5, -1, ValueError, "width must be >= 1"),
    (5.0, 5, TypeError, "height must be an int"),
    (True, 5, TypeError, "height must be an int"),
])
def test_bad_canvas(height, width, error, match):
    with pytest.raises(error, match=match):
        render(*good(), height=height, width=width)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        render(*good(), backend="fast")


def test_unavailable_backend_names_what_is_available():
    with pytest.raises(ValueError, match=r"backend 'cuda' is not available for cpu tensors here; available: \["):
        render(*good(), backend="cuda")


@pytest.mark.skipif("cpu" not in splatkern.available_backends("cpu"), reason="the C++ extension (splatkern._C) is not built")
def test_auto_picks_the_cpu_kernel_for_cpu_tensors():
    assert splatkern.available_backends("cpu")[0] == "cpu"


DETERMINISTIC_ARG = 5


class _SplatkernFlags(TorchDispatchMode):
    """Appends to `flags` the argument `deterministic` (the sixth, in both ops' schemas) of every splatkern op
    dispatched below autograd."""

    def __init__(self, flags: list):
        super().__init__()
        self.flags = flags

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "splatkern":
            self.flags.append(args[DETERMINISTIC_ARG])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_deterministic_none_follows_torchs_flag(backend, monkeypatch):
    """``deterministic=None`` passes torch.are_deterministic_algorithms_enabled() to the kernels (the
    C++ forward and backward ops; the Triton backward), and an explicit value overrides it."""
    require("cpu", backend)
    flags = []  # the deterministic argument of each kernel call
    if backend == "triton":
        from splatkern import triton_kernels  # noqa: PLC0415 - imports triton

        backward = triton_kernels.backward
        monkeypatch.setattr(triton_kernels, "backward",
                            lambda *args, **kwargs: flags.append(args[DETERMINISTIC_ARG]) or backward(*args, **kwargs))
        watching, kernel_calls = contextlib.nullcontext(), 1
    else:
        watching, kernel_calls = _SplatkernFlags(flags), 2

    def flags_reaching_the_kernels(deterministic):
        flags.clear()
        means, sigmas, amps = (t.requires_grad_() for t in good())
        with watching:
            image = splatkern.splat_render(means, sigmas, amps, height=8, width=9, backend=backend,
                                           deterministic=deterministic)
            image.sum().backward()
        return flags[:]

    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for torch_flag in (False, True):
            torch.use_deterministic_algorithms(torch_flag)
            assert flags_reaching_the_kernels(None) == [torch_flag] * kernel_calls
            assert flags_reaching_the_kernels(not torch_flag) == [not torch_flag] * kernel_calls
    finally:
        torch.use_deterministic_algorithms(previous)


def test_default_amplitude_is_one():
    means, sigmas, _ = good()
    with_default = splatkern.splat_render(means, sigmas, height=8, width=9)
    with_ones = splatkern.splat_render(means, sigmas, torch.ones_like(sigmas), height=8, width=9)
    assert torch.equal(with_default, with_ones)
