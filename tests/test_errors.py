"""Every bad input gets a clear Python error naming the argument, on every backend and under compile."""

import math

import pytest
import torch

import splatkern

BACKENDS = [b for b in ("reference", "cpu") if b in splatkern.available_backends("cpu")]


def good():
    return torch.rand(2, 3, 2) * 8, torch.rand(2, 3) + 0.5, torch.rand(2, 3)


def render(means, sigmas, amps, backend="auto", height=8, width=9):
    return splatkern.splat_render(means, sigmas, amps, height=height, width=width, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
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
        (lambda m, s, a: (m, s.index_fill(1, torch.tensor([1]), 0.0), a), ValueError, "sigmas must be > 0"),
        (lambda m, s, a: (m, -s, a), ValueError, "sigmas must be > 0"),
        (lambda m, s, a: (m.index_fill(1, torch.tensor([2]), math.nan), s, a), ValueError, "means must be finite"),
        (lambda m, s, a: (m, s.index_fill(1, torch.tensor([0]), math.inf), a), ValueError, "sigmas must be finite"),
        (lambda m, s, a: (m, s, a.index_fill(1, torch.tensor([0]), math.nan)), ValueError, "amps must be finite"),
    ],
    ids=["means-last-dim", "means-rank", "sigmas-shape", "amps-shape", "means-int", "sigmas-int", "amps-bool",
         "mixed-dtype", "numpy", "devices", "sigma-zero", "sigma-negative", "means-nan", "sigmas-inf", "amps-nan"],
)
def test_bad_markers(backend, mutate, error, match):
    with pytest.raises(error, match=match):
        render(*mutate(*good()), backend=backend)


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


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension (splatkern._C) is not built")
def test_raw_op_rejects_bad_input_without_crashing():
    means, sigmas, amps = good()
    with pytest.raises(ValueError, match="means must have shape"):
        torch.ops.splatkern.splat_forward(means[..., :1].contiguous(), sigmas, amps, 4, 4, False)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.splatkern.splat_forward(means.transpose(0, 1), sigmas.t(), amps.t(), 4, 4, False)
    image, index = torch.ops.splatkern.splat_forward(means, sigmas, amps, 4, 4, False)
    with pytest.raises(ValueError, match="index holds 7"):
        torch.ops.splatkern.splat_backward(torch.ones_like(image), means, sigmas, amps, torch.full_like(index, 7), False)
    with pytest.raises(TypeError, match="index must be int32"):
        torch.ops.splatkern.splat_backward(torch.ones_like(image), means, sigmas, amps, index.long(), False)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension (splatkern._C) is not built")
def test_value_checks_survive_torch_compile():
    compiled = torch.compile(lambda m, s, a: render(m, s, a, backend="cpu"), fullgraph=True)
    means, sigmas, amps = good()
    compiled(means, sigmas, amps)
    with pytest.raises(ValueError, match="sigmas must be > 0"):
        compiled(means, -sigmas, amps)
    with pytest.raises(ValueError, match="means must be finite"):
        compiled(means.index_fill(1, torch.tensor([0]), math.nan), sigmas, amps)
