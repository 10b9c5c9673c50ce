"""What splat_render itself does before any backend runs: argument checks (shapes, dtypes, devices,
canvas size) with clear errors naming the argument, the backend choice, and defaults. The checks
of marker values run inside each backend: tests/test_backends.py."""

import pytest
import torch

import splatkern


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


def test_default_amplitude_is_one():
    means, sigmas, _ = good()
    with_default = splatkern.splat_render(means, sigmas, height=8, width=9)
    with_ones = splatkern.splat_render(means, sigmas, torch.ones_like(sigmas), height=8, width=9)
    assert torch.equal(with_default, with_ones)
