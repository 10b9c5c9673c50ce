"""splat_render on a CUDA device: every backend available there, checked against the reference.

Skipped, with the reason shown, where ``torch.cuda.is_available()`` is false. On a GPU machine
``bench/gpu_check.sh`` runs them (``pytest tests -m gpu``). The oracle is
``splat_render_reference`` evaluated in float64 on the very (dtype-rounded) inputs the backend saw.
"""

from __future__ import annotations

import gc

import pytest
import torch

import splatkern
from splatkern import splat_render, splat_render_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is False"),
]

DEVICE = "cuda"
ALL_BACKENDS = ("cuda", "triton", "reference")
# The fused backends' torch.library op pairs (the reference backend has none).
FUSED_OPS = {"cuda": ("splat_forward", "splat_backward"), "triton": ("splat_forward_triton", "splat_backward_triton")}

# (dtype, atol, rtol) for images. float16/bfloat16 are computed in float32, so their error is the
# final rounding to the dtype.
VALUE_TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-10),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
# (dtype, atol, rtol) for gradients: sums over many pixels, so atol is taken relative to the
# largest reference gradient of the tensor.
GRAD_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-9),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
# A pixel's winner is compared only where the best value clears the second by this fraction and
# is far above what the fused kernels flush to zero (one axis factor below ~1e-19 in float32).
CLEAR_WIN_GAP = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-4, torch.bfloat16: 1e-4}
CLEAR_WIN_FLOOR = 1e-15


def require(backend: str) -> None:
    if backend not in splatkern.available_backends(DEVICE):
        pytest.skip(f"backend {backend!r} is not available for CUDA tensors in this install")


def make_markers(batch_shape, n_markers, height, width, dtype, seed, requires_grad=False):
    """Random markers on the GPU: some centres off-canvas, sigmas 0.8..3.8, a few negative amps."""
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, n_markers)
    span = torch.tensor([width + 4.0, height + 4.0], dtype=torch.float64)
    means = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * span - 2
    sigmas = 0.8 + 3 * torch.rand(*shape, generator=generator, dtype=torch.float64)
    amps = torch.rand(*shape, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    return [t.to(DEVICE, dtype).requires_grad_(requires_grad) for t in (means, sigmas, amps)]


def as_float64(*tensors):
    return [t.detach().double().requires_grad_(True) for t in tensors]


def clear_winner_mask(means64, sigmas64, amps64, height, width, dtype):
    """Pixels whose winner is not a near-tie at the dtype's precision (see CLEAR_WIN_GAP)."""
    # Each marker alone: put the marker axis into the batch, one marker per image.
    per_marker, _ = splat_render_reference(
        means64.detach().unsqueeze(-2), sigmas64.detach().unsqueeze(-1), amps64.detach().unsqueeze(-1), height, width
    )
    if per_marker.shape[-3] < 2:
        return torch.ones(per_marker.shape[:-3] + (height, width), dtype=torch.bool, device=per_marker.device)
    best, second = per_marker.topk(2, dim=-3).values.unbind(-3)
    return (best > CLEAR_WIN_FLOOR) & (best - second > CLEAR_WIN_GAP[dtype] * best)


def grads_of(output, inputs, grad_output):
    if not output.requires_grad:  # the reference's image for N = 0 does not depend on the markers
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(output, inputs, grad_output, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def assert_grads_close(actual, expected, dtype):
    atol, rtol = GRAD_TOLERANCES[dtype]
    for name, got, want in zip(("means", "sigmas", "amps"), actual, expected):
        assert got.dtype == dtype and got.shape == want.shape, name
        scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
        torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol, msg=lambda m: f"grad {name}: {m}")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    require(request.param)
    return request.param


# (leading dims, N, height, width): odd sizes that are no multiple of any block size, N from one
# marker to more than a marker block, H != W.
SHAPES = [
    ((), 1, 9, 41),
    ((3,), 7, 9, 41),
    ((2, 3), 64, 28, 28),
    ((2,), 300, 33, 70),
    ((4,), 0, 9, 41),
]


@pytest.mark.parametrize("dtype", list(VALUE_TOLERANCES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{'x'.join(map(str, s[0])) or 'nobatch'}-N{s[1]}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_matches_reference(backend, dtype, shape, deterministic):
    batch_shape, n_markers, height, width = shape
    means, sigmas, amps = make_markers(batch_shape, n_markers, height, width, dtype, seed=n_markers, requires_grad=True)
    image, index = splat_render(
        means, sigmas, amps, height=height, width=width, backend=backend, return_index=True, deterministic=deterministic
    )
    inputs64 = as_float64(means, sigmas, amps)
    ref_image, ref_index = splat_render_reference(*inputs64, height, width)

    assert image.dtype == dtype and image.device.type == DEVICE and image.shape == (*batch_shape, height, width)
    assert index.dtype == torch.int32 and index.shape == image.shape
    atol, rtol = VALUE_TOLERANCES[dtype]
    torch.testing.assert_close(image.double(), ref_image, atol=atol, rtol=rtol)

    clear = clear_winner_mask(*inputs64, height, width, dtype)
    if n_markers == 0:
        assert (index == -1).all()
    else:
        assert clear.float().mean() > 0.5, "the test inputs should leave most winners clear"
        assert torch.equal(index[clear], ref_index[clear])

    # Upstream gradient only on clear pixels: a near-tie may pass the gradient to either marker.
    grad_output = torch.randn(image.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_output = (grad_output.to(DEVICE) * clear).to(dtype)
    grads = grads_of(image, (means, sigmas, amps), grad_output)
    ref_grads = grads_of(ref_image, inputs64, grad_output.double())
    assert_grads_close(grads, ref_grads, dtype)


def test_empty_batch(backend):
    means, sigmas, amps = make_markers((0,), 5, 9, 41, torch.float32, seed=0, requires_grad=True)
    image, index = splat_render(means, sigmas, amps, height=9, width=41, backend=backend, return_index=True)
    assert image.shape == index.shape == (0, 9, 41)
    grads = grads_of(image, (means, sigmas, amps), torch.ones_like(image))
    assert [g.shape for g in grads] == [means.shape, sigmas.shape, amps.shape]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_gradcheck_float64(backend, deterministic):
    means, sigmas, amps = make_markers((2,), 4, 7, 11, torch.float64, seed=3, requires_grad=True)

    def render(m, s, a):
        return splat_render(m, s, a, height=7, width=11, backend=backend, deterministic=deterministic)

    # The atomic backward may add in any order: allow rounding-level differences between runs.
    assert torch.autograd.gradcheck(render, (means, sigmas, amps), nondet_tol=0.0 if deterministic else 1e-12)


@pytest.mark.parametrize("fused", list(FUSED_OPS))
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_opcheck(fused, deterministic):
    require(fused)
    forward_name, backward_name = FUSED_OPS[fused]
    forward = getattr(torch.ops.splatkern, forward_name).default
    backward = getattr(torch.ops.splatkern, backward_name).default
    means, sigmas, amps = make_markers((3,), 5, 9, 13, torch.float32, seed=4, requires_grad=True)
    torch.library.opcheck(forward, (means, sigmas, amps, 9, 13, deterministic))
    image, index = forward(means.detach(), sigmas.detach(), amps.detach(), 9, 13, deterministic)
    grad_image = torch.randn(image.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    torch.library.opcheck(backward, (grad_image, means.detach(), sigmas.detach(), amps.detach(), index, deterministic))


def test_compile_fullgraph_matches_eager(backend):
    means, sigmas, amps = make_markers((2, 3), 16, 19, 23, torch.float32, seed=6, requires_grad=True)

    def render(m, s, a):
        return splat_render(m, s, a, height=19, width=23, backend=backend, deterministic=True)

    eager = render(means, sigmas, amps)
    compiled = torch.compile(render, fullgraph=True)(means, sigmas, amps)
    grad_output = torch.randn(eager.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    eager_grads = grads_of(eager, (means, sigmas, amps), grad_output)
    compiled_grads = grads_of(compiled, (means, sigmas, amps), grad_output)
    if backend in FUSED_OPS:  # the same kernels run: bit-identical
        assert torch.equal(compiled, eager)
        assert all(torch.equal(c, e) for c, e in zip(compiled_grads, eager_grads))
    else:  # inductor generates its own kernel for the reference math
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
        for c, e in zip(compiled_grads, eager_grads):
            torch.testing.assert_close(c, e, atol=1e-4 * max(1.0, e.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("fused", list(FUSED_OPS))
def test_deterministic_is_bit_identical_on_repeat(fused):
    require(fused)
    # Many pixels per marker, so the atomic path would see contention.
    means, sigmas, amps = make_markers((8,), 64, 64, 64, torch.float32, seed=8, requires_grad=True)
    grad_output = torch.randn(8, 64, 64, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    runs = []
    for _ in range(3):
        image, index = splat_render(
            means, sigmas, amps, height=64, width=64, backend=fused, return_index=True, deterministic=True
        )
        runs.append([image, index, *grads_of(image, (means, sigmas, amps), grad_output)])
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))
    # ...and it agrees with the atomic backward up to the order of additions.
    atomic = splat_render(means, sigmas, amps, height=64, width=64, backend=fused, deterministic=False)
    for got, want in zip(grads_of(atomic, (means, sigmas, amps), grad_output), runs[0][2:]):
        torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, want.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize(
    "flaw, message",
    [
        (lambda m, s, a: s.__setitem__((0, 1), 0.0), "sigmas must be > 0"),
        (lambda m, s, a: s.__setitem__((1, 0), -1.0), "sigmas must be > 0"),
        (lambda m, s, a: m.__setitem__((0, 2, 1), float("nan")), "means must be finite"),
        (lambda m, s, a: s.__setitem__((0, 0), float("nan")), "sigmas must be finite"),
        (lambda m, s, a: a.__setitem__((1, 3), float("inf")), "amps must be finite"),
    ],
    ids=["sigma-zero", "sigma-negative", "means-nan", "sigma-nan", "amps-inf"],
)
def test_bad_values_raise_value_error(backend, flaw, message):
    means, sigmas, amps = make_markers((2,), 4, 9, 41, torch.float32, seed=10)
    flaw(means, sigmas, amps)
    with pytest.raises(ValueError, match=message):
        splat_render(means, sigmas, amps, height=9, width=41, backend=backend)


@pytest.mark.parametrize("fused", list(FUSED_OPS))
def test_large_batch(fused):
    """B=4096, N=256, 64x64: runs without materialising [B, N, H, W]; checked on a subset."""
    require(fused)
    batch, n_markers, size = 4096, 256, 64
    means, sigmas, amps = make_markers((batch,), n_markers, size, size, torch.float32, seed=11, requires_grad=True)
    image, index = splat_render(means, sigmas, amps, height=size, width=size, backend=fused, return_index=True)
    subset = torch.arange(0, batch, 512, device=DEVICE)
    inputs64 = as_float64(means[subset], sigmas[subset], amps[subset])
    ref_image, ref_index = splat_render_reference(*inputs64, size, size)
    atol, rtol = VALUE_TOLERANCES[torch.float32]
    torch.testing.assert_close(image[subset].double(), ref_image, atol=atol, rtol=rtol)
    clear = clear_winner_mask(*inputs64, size, size, torch.float32)
    assert torch.equal(index[subset][clear], ref_index[clear])
    # Gradients of the subset's images reach only the subset's markers.
    grad_output = torch.zeros_like(image)
    grad_output[subset] = torch.randn(ref_image.shape, generator=torch.Generator().manual_seed(12)).to(DEVICE) * clear
    grads = grads_of(image, (means, sigmas, amps), grad_output)
    ref_grads = grads_of(ref_image, inputs64, grad_output[subset].double())
    assert_grads_close([g[subset] for g in grads], ref_grads, torch.float32)


def test_no_memory_leak(backend):
    means, sigmas, amps = make_markers((16,), 32, 28, 28, torch.float32, seed=13, requires_grad=True)

    def step():
        image = splat_render(means, sigmas, amps, height=28, width=28, backend=backend)
        image.square().sum().backward()
        means.grad = sigmas.grad = amps.grad = None

    step()  # first call: kernel compilation and caches
    torch.cuda.synchronize()
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    gc.collect()
    assert torch.cuda.memory_allocated() == baseline
