"""The Triton backend of splat_render against the float64 reference.

Without CUDA the kernels run on CPU under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), with CUDA on the GPU. The interpreter costs ~0.6 ms per kernel loop step,
so the shapes are small; they are chosen to cut the kernels' tiles and marker blocks unevenly.
"""

import pytest
import torch

from splatkern import available_backends, splat_render
from splatkern.reference import splat_render_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.skipif(
    "triton" not in available_backends(DEVICE),
    reason=f"the triton backend is not available for {DEVICE} tensors here (triton missing, or no TRITON_INTERPRET=1)",
)

# (dtype, atol, rtol) of the image; gradients use the same rtol, with atol relative to their largest value.
TOLERANCES = [
    (torch.float32, 1e-6, 1e-5),
    (torch.float64, 1e-13, 1e-12),
    (torch.float16, 1e-3, 2e-3),
    (torch.bfloat16, 8e-3, 1e-2),
]
# (batch shape, N, H, W): N = 1; N above the forward's (4) and backward's (16 / 8) marker blocks;
# H != W; images cut unevenly by the forward's tiles (up to 32 x 32) and the backward's 1024-pixel runs.
SHAPES = [
    ((), 1, 9, 41),
    ((2,), 5, 28, 28),
    ((2, 3), 3, 13, 7),
    ((1,), 21, 9, 41),
    ((1,), 6, 70, 20),
]


def make_markers(batch_shape, n_markers, height, width, dtype, seed=0):
    """Random markers around the image (some outside it), and one far outside whose factors all flush."""
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, n_markers)
    means = torch.rand(*shape, 2, generator=generator, dtype=torch.float64)
    means = means * torch.tensor([width + 6.0, height + 6.0], dtype=torch.float64) - 3
    if n_markers > 2:
        means[..., 1, :] = torch.tensor([-40.0, height + 40.0])
    sigmas = 0.7 + 3 * torch.rand(*shape, generator=generator, dtype=torch.float64)
    amps = 0.2 + torch.rand(*shape, generator=generator, dtype=torch.float64)
    return tuple(t.to(DEVICE, dtype) for t in (means, sigmas, amps))


def ambiguous_pixels(means, sigmas, amps, height, width, compute_dtype):
    """Pixels where a fused kernel computing in `compute_dtype` may rightly pick another winner than
    the reference: the two best values are within rounding, or the best is below the scale where the
    kernels flush axis factors to zero (sqrt of the smallest normal, times the amplitude)."""
    if means.shape[-2] == 1:
        return torch.zeros(*means.shape[:-2], height, width, dtype=torch.bool, device=means.device)
    one_marker_images = [
        splat_render_reference(means[..., n : n + 1, :], sigmas[..., n : n + 1], amps[..., n : n + 1], height, width)
        for n in range(means.shape[-2])
    ]
    per_marker = torch.stack([image for image, _ in one_marker_images], dim=-3)
    best, runner_up = per_marker.topk(2, dim=-3).values.unbind(-3)
    rounding = 1e-12 if compute_dtype == torch.float64 else 1e-5
    flushed = 2 * float(amps.abs().max()) * torch.finfo(compute_dtype).tiny ** 0.5
    return (best - runner_up <= rounding * best.abs()) | (best.abs() <= flushed)


def render_with_grads(backend, means, sigmas, amps, height, width, grad_image, deterministic=False):
    inputs = [t.detach().clone().requires_grad_() for t in (means, sigmas, amps)]
    image, index = splat_render(
        *inputs, height=height, width=width, backend=backend, return_index=True, deterministic=deterministic
    )
    grads = torch.autograd.grad(image, inputs, grad_image.to(image.dtype))
    return image.detach(), index, grads


def assert_grads_close(actual, expected, rtol):
    for name, got, want in zip(("means", "sigmas", "amps"), actual, expected, strict=True):
        torch.testing.assert_close(
            got.double(), want, atol=rtol * float(want.abs().max()), rtol=rtol, msg=lambda m, n=name: f"grad {n}: {m}"
        )


@pytest.mark.parametrize(("dtype", "atol", "rtol"), TOLERANCES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize(("batch_shape", "n_markers", "height", "width"), SHAPES, ids=str)
def test_matches_reference(batch_shape, n_markers, height, width, dtype, atol, rtol):
    means, sigmas, amps = make_markers(batch_shape, n_markers, height, width, dtype)
    exact = [t.double() for t in (means, sigmas, amps)]  # the reference sees the very same inputs
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # halves run in float32
    ambiguous = ambiguous_pixels(*exact, height, width, compute_dtype)
    assert ambiguous.float().mean() < 0.5, "too few unambiguous pixels for the test to mean anything"
    grad_image = torch.randn(*batch_shape, height, width, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grad_image = grad_image.masked_fill(ambiguous, 0.0)  # gradients go to the winner: compare where it is certain

    image, index, grads = render_with_grads("triton", means, sigmas, amps, height, width, grad_image)
    ref_grad_image = grad_image.to(dtype).double()  # what the op's backward receives
    ref_image, ref_index, ref_grads = render_with_grads("reference", *exact, height, width, ref_grad_image)

    assert image.shape == (*batch_shape, height, width) and image.dtype == dtype
    assert index.shape == image.shape and index.dtype == torch.int32
    torch.testing.assert_close(image.double(), ref_image, atol=atol, rtol=rtol)
    assert torch.equal(index[~ambiguous], ref_index[~ambiguous])
    assert_grads_close(grads, ref_grads, rtol)
    assert all(g.dtype == dtype for g in grads)


def test_exact_ties_go_to_the_lowest_index():
    """Copies of marker 1 inside its marker block (2) and in the next block (5) never win."""
    height, width = 11, 13
    means, sigmas, amps = make_markers((2,), 7, height, width, torch.float32, seed=3)
    means[:, 1] = torch.tensor([5.0, 4.0])  # inside the image, so marker 1 wins pixels
    for copy in (2, 5):
        means[:, copy], sigmas[:, copy], amps[:, copy] = means[:, 1], sigmas[:, 1], amps[:, 1]
    grad_image = torch.randn(2, height, width, generator=torch.Generator().manual_seed(2)).to(DEVICE)

    image, index, grads = render_with_grads("triton", means, sigmas, amps, height, width, grad_image)
    ref_image, ref_index, ref_grads = render_with_grads("reference", means, sigmas, amps, height, width, grad_image)

    assert (index == 1).any()
    assert not ((index == 2) | (index == 5)).any()
    assert torch.equal(index, ref_index)
    for grad in grads:
        assert (grad[:, [2, 5]] == 0).all()
        assert (grad[:, 1] != 0).all()
    torch.testing.assert_close(image, ref_image, atol=1e-6, rtol=1e-5)
    assert_grads_close(grads, [g.double() for g in ref_grads], 1e-5)


def test_deterministic_backward_is_bitwise_repeatable():
    height, width = 28, 28
    means, sigmas, amps = make_markers((3,), 20, height, width, torch.float32, seed=4)
    grad_image = torch.randn(3, height, width, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    first = render_with_grads("triton", means, sigmas, amps, height, width, grad_image, deterministic=True)[2]
    second = render_with_grads("triton", means, sigmas, amps, height, width, grad_image, deterministic=True)[2]
    atomic = render_with_grads("triton", means, sigmas, amps, height, width, grad_image, deterministic=False)[2]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert_grads_close(atomic, [g.double() for g in first], 1e-5)


def test_expanded_upstream_gradient():
    """image.sum() hands the backward a stride-0 gradient; the kernels read raw pointers."""
    means, sigmas, amps = make_markers((2,), 5, 7, 9, torch.float32, seed=10)
    expanded = render_with_grads("triton", means, sigmas, amps, 7, 9, torch.ones(1, device=DEVICE).expand(2, 7, 9))[2]
    dense = render_with_grads("triton", means, sigmas, amps, 7, 9, torch.ones(2, 7, 9, device=DEVICE))[2]
    assert all(torch.equal(a, b) for a, b in zip(expanded, dense, strict=True))


def test_gradcheck_float64():
    """Two well separated markers of distinct amplitude: no pixel is near a tie."""
    means = torch.tensor([[1.2, 1.7], [4.6, 3.1]], dtype=torch.float64, device=DEVICE, requires_grad=True)
    sigmas = torch.tensor([1.3, 0.9], dtype=torch.float64, device=DEVICE, requires_grad=True)
    amps = torch.tensor([0.8, 1.4], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m, s, a: splat_render(m, s, a, height=5, width=6, backend="triton"), (means, sigmas, amps)
    )


def test_no_markers_and_no_images():
    means, sigmas, amps = (t.requires_grad_() for t in make_markers((2,), 0, 5, 3, torch.float32))
    image, index = splat_render(means, sigmas, amps, height=5, width=3, backend="triton", return_index=True)
    assert torch.equal(image, torch.zeros(2, 5, 3, device=DEVICE))
    assert torch.equal(index, torch.full((2, 5, 3), -1, dtype=torch.int32, device=DEVICE))
    grads = torch.autograd.grad(image.sum(), (means, sigmas, amps))
    assert [tuple(g.shape) for g in grads] == [(2, 0, 2), (2, 0), (2, 0)]

    means, sigmas, amps = (t.requires_grad_() for t in make_markers((0,), 4, 5, 3, torch.float32))
    image, index = splat_render(means, sigmas, amps, height=5, width=3, backend="triton", return_index=True)
    assert image.shape == index.shape == (0, 5, 3)
    grads = torch.autograd.grad(image.sum(), (means, sigmas, amps))
    assert [tuple(g.shape) for g in grads] == [(0, 4, 2), (0, 4), (0, 4)]


def test_backward_op_rejects_an_index_out_of_range():
    means, sigmas, amps = make_markers((1,), 3, 4, 4, torch.float32)
    grad_image = torch.ones(1, 4, 4, device=DEVICE)
    index = torch.zeros(1, 4, 4, dtype=torch.int32, device=DEVICE)
    index[0, 2, 1] = 3
    with pytest.raises(ValueError, match=r"index holds 3, outside \[0, 3\)"):
        torch.ops.splatkern.splat_backward_triton(grad_image, means, sigmas, amps, index, False)


def test_opcheck():
    means, sigmas, amps = make_markers((2,), 5, 6, 7, torch.float32, seed=6)
    torch.library.opcheck(torch.ops.splatkern.splat_forward_triton, (means, sigmas, amps, 6, 7, False))
    _, index = torch.ops.splatkern.splat_forward_triton(means, sigmas, amps, 6, 7, False)
    grad_image = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    for deterministic in (False, True):
        torch.library.opcheck(
            torch.ops.splatkern.splat_backward_triton, (grad_image, means, sigmas, amps, index, deterministic)
        )


def test_torch_compile_fullgraph_matches_eager():
    height, width = 9, 12
    means, sigmas, amps = make_markers((2,), 5, height, width, torch.float32, seed=7)
    weights = torch.randn(2, height, width, generator=torch.Generator().manual_seed(8)).to(DEVICE)

    def loss(m, s, a):
        return (splat_render(m, s, a, height=height, width=width, backend="triton") * weights).sum()

    def value_and_grads(fn):
        inputs = [t.detach().clone().requires_grad_() for t in (means, sigmas, amps)]
        value = fn(*inputs)
        return value.detach(), torch.autograd.grad(value, inputs)

    eager_value, eager_grads = value_and_grads(loss)
    compiled_value, compiled_grads = value_and_grads(torch.compile(loss, fullgraph=True))
    torch.testing.assert_close(compiled_value, eager_value)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_axis_factors_flush_to_zero_past_the_cutoff(dtype):
    """The contract's flush rule: an axis exponent above -0.5 * log(smallest normal) makes the value exactly 0."""
    means = torch.tensor([[0.3, 1.0]], dtype=dtype, device=DEVICE)
    sigmas = torch.tensor([1.0], dtype=dtype, device=DEVICE)
    amps = torch.tensor([1.5], dtype=dtype, device=DEVICE)
    image = splat_render(means, sigmas, amps, height=3, width=40, backend="triton")
    reference = splat_render(means, sigmas, amps, height=3, width=40, backend="reference")
    x_exponent = (torch.arange(40, dtype=dtype, device=DEVICE) - 0.3) ** 2 / 2
    flushed = x_exponent > -0.5 * torch.log(torch.tensor(torch.finfo(dtype).tiny, dtype=torch.float64))
    assert flushed.any() and not flushed.all()
    assert (image[:, flushed] == 0).all() and (reference[:, flushed] > 0).any()  # the oracle does not flush
    torch.testing.assert_close(image[:, ~flushed], reference[:, ~flushed], atol=0, rtol=1e-5)
