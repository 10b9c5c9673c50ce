"""Every backend of splat_render against the contract (splatkern/reference.py): each fact is one test,
parametrised over (device, backend). On CPU: the C++ kernel, Triton under its interpreter and the
reference; on CUDA: the CUDA kernels, Triton and the reference (marked `gpu`; skipped, with the
reason, where there is no CUDA device). The shapes, the tolerance table and the comparison with the
oracle are splatkern.testing's (which `splatkern check` runs on a user's machine); the test-only
helpers are in tests/support.py.
"""

from __future__ import annotations

import gc
import math
import re
import warnings

import pytest
import torch

from bench.cases import captured_in_cuda_graph
from splatkern import splat_render, splat_render_reference
from splatkern.facts import BAD_INDEX, FLAW_MESSAGES, NO_DOUBLE_BACKWARD
from splatkern.testing import (DTYPES, KERNEL_DTYPES, SHAPES, backward_modes, gradcheck, repeatability,
                               separated_markers)
from support import (
    ALL_CASES,
    COMPARED_CASES,
    CPP_CASES,
    CUDA_CASES,
    CUDA_FUSED_CASES,
    FUSED_CASES,
    FUSED_OPS,
    TOLERANCES,
    assert_grads_close,
    assert_matches_reference,
    check_axis_factors_flush_at_the_contract_exponent,
    check_exact_ties_go_to_the_lowest_index,
    clear_pixels,
    contract_matrix,
    make_markers,
    random_like_image,
    render_with_grads,
    require,
    with_modes,
)

# --- the contract's values, winners and gradients ---------------------------------------------------


def test_reference_is_the_formula_written_out():
    """The oracle itself, against the contract by hand at pixel (row 2, column 5): x = 5, y = 2."""
    means = torch.tensor([[4.0, 1.0], [6.5, 2.5]], dtype=torch.float64)
    sigmas = torch.tensor([1.5, 0.8], dtype=torch.float64)
    amps = torch.tensor([0.9, 0.6], dtype=torch.float64)
    expected = [a * math.exp(-((5 - m[0]) ** 2 + (2 - m[1]) ** 2) / (2 * s**2)) for m, s, a in
                zip(means.tolist(), sigmas.tolist(), amps.tolist())]
    image, index = splat_render_reference(means, sigmas, amps, 4, 8)
    assert image.dtype == torch.float64 and index.dtype == torch.int32 and image.shape == index.shape == (4, 8)
    assert image[2, 5].item() == pytest.approx(max(expected), rel=1e-12)
    assert index[2, 5].item() == int(expected[1] > expected[0])


@pytest.mark.parametrize("device, backend, dtype, deterministic, shape", contract_matrix(COMPARED_CASES, DTYPES, SHAPES))
def test_matches_reference(device, backend, dtype, deterministic, shape):
    require(device, backend)
    batch, n_markers, height, width, _ = shape
    inputs = make_markers(batch, n_markers, height, width, dtype=dtype, device=device, seed=n_markers)
    *_, clear = assert_matches_reference(backend, *inputs, height, width, deterministic=deterministic)
    assert clear.float().mean() > 0.5, "most winners should be clear, or the test checks little"


EXTREME_INPUTS = {
    "far-outside": dict(margin=30.0),
    "tiny-sigmas": dict(sigma_range=(1e-3, 2e-2)),
    "huge-sigmas": dict(sigma_range=(50.0, 1e4)),
    "mostly-negative-amps": {},
}


@pytest.mark.parametrize("device, backend", COMPARED_CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("kind", EXTREME_INPUTS)
def test_matches_reference_on_extreme_inputs(device, backend, dtype, kind):
    require(device, backend)
    means, sigmas, amps = make_markers((3,), 9, 15, 17, dtype=dtype, device=device, seed=5, **EXTREME_INPUTS[kind])
    if kind == "far-outside":
        outside = (means < -0.5).any(-1) | (means > 16.5).any(-1)
        assert outside.float().mean() > 0.5
    if kind == "mostly-negative-amps":  # where every marker is negative, the faintest one wins
        amps = amps - 0.6
    assert_matches_reference(backend, means, sigmas, amps, 15, 17)


@pytest.mark.parametrize("device, backend", CPP_CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_gradients_of_small_markers_far_from_the_origin(device, backend, dtype):
    """Small markers in the far corner of a 300 x 260 canvas. The CPU backward sums g e (1, j, i,
    j^2 + i^2) per marker and centres the sums on (mx, my) once, cancelling terms up to ~10^5 times
    the result; its gradients must still match the oracle's per-pixel (j - mx, i - my) products.
    (The Triton kernels form those products per pixel; under the interpreter this canvas takes minutes.)"""
    require(device, backend)
    height, width = 300, 260
    means, sigmas, amps = make_markers((2,), 6, 20, 20, dtype=dtype, device=device, seed=8, sigma_range=(0.4, 2.0),
                                       margin=0.0)
    means = means + torch.tensor([width - 20, height - 20], dtype=dtype, device=device)
    _, _, grads, _ = assert_matches_reference(backend, means, sigmas, amps, height, width)
    assert (grads[0] != 0).sum() > 10


@pytest.mark.parametrize("device, backend", ALL_CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_exact_ties_go_to_the_lowest_index(device, backend, dtype):
    require(device, backend)
    check_exact_ties_go_to_the_lowest_index(backend, device, dtype)


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_non_contiguous_inputs(device, backend):
    require(device, backend)
    means, sigmas, amps = make_markers((6,), 8, 14, 15, dtype=torch.float64, device=device, seed=9)
    means = means.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    sigmas = torch.stack([sigmas, sigmas], -1)[..., 0]
    amps = amps.t().contiguous().t()
    assert not (means.is_contiguous() or sigmas.is_contiguous() or amps.is_contiguous())
    assert_matches_reference(backend, means, sigmas, amps, 14, 15)


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_batch_items_render_independently(device, backend):
    """Leading dims are only a batch: each image is bit-identical to rendering its markers alone."""
    require(device, backend)
    means, sigmas, amps = make_markers((2, 3), 5, 8, 9, dtype=torch.float64, device=device, seed=1)
    image, index = splat_render(means, sigmas, amps, height=8, width=9, backend=backend, return_index=True)
    assert image.shape == index.shape == (2, 3, 8, 9)
    for i in range(2):
        for j in range(3):
            single, single_index = splat_render(means[i, j], sigmas[i, j], amps[i, j], height=8, width=9,
                                                backend=backend, return_index=True)
            assert torch.equal(image[i, j], single) and torch.equal(index[i, j], single_index)


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_empty_batch(device, backend):
    require(device, backend)
    means, sigmas, amps = make_markers((0,), 5, 9, 41, device=device)
    upstream = torch.ones(0, 9, 41, device=device)
    image, index, grads = render_with_grads(backend, means, sigmas, amps, 9, 41, upstream)
    assert image.shape == index.shape == (0, 9, 41)
    assert [g.shape for g in grads] == [means.shape, sigmas.shape, amps.shape]


@pytest.mark.parametrize("device, backend", FUSED_CASES)
def test_expanded_upstream_gradient(device, backend):
    """image.sum() hands the backward a stride-0 gradient; the kernels read raw pointers."""
    require(device, backend)
    means, sigmas, amps = make_markers((2,), 5, 7, 9, device=device, seed=10)
    expanded = torch.ones(1, device=device).expand(2, 7, 9)
    dense = torch.ones(2, 7, 9, device=device)
    grads = [render_with_grads(backend, means, sigmas, amps, 7, 9, upstream, deterministic=True)[2]
             for upstream in (expanded, dense)]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("device, backend, deterministic", with_modes(ALL_CASES))
def test_gradcheck_float64(device, backend, deterministic):
    require(device, backend)
    measure = gradcheck(backend, device, deterministic=deterministic)
    assert measure.ok, measure.note


def test_separated_markers_have_certain_winners():
    assert clear_pixels(*separated_markers("cpu"), 7, 8).all()


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_torch_func_grad_matches_autograd(device, backend):
    """torch.func.grad and torch.func.vjp work with every backend (the C++ ops' own autograd is
    invisible to them: splat_render takes a Python autograd.Function there) and agree with autograd."""
    require(device, backend)
    means, sigmas, amps = (t.detach() for t in separated_markers(device))
    upstream = random_like_image((7, 8), device=device, seed=3)

    def loss(m, s, a):
        return (splat_render(m, s, a, height=7, width=8, backend=backend) * upstream).sum()

    leaves = [t.clone().requires_grad_() for t in (means, sigmas, amps)]
    expected = torch.autograd.grad(loss(*leaves), leaves)
    got = torch.func.grad(loss, argnums=(0, 1, 2))(means, sigmas, amps)
    _, vjp = torch.func.vjp(lambda m, s, a: splat_render(m, s, a, height=7, width=8, backend=backend), means, sigmas, amps)
    for name, g, v, e in zip(("means", "sigmas", "amps"), got, vjp(upstream), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"grad of {name}: {m}")
        torch.testing.assert_close(v, e, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"vjp of {name}: {m}")


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_double_backward_is_refused_by_the_fused_backends(device, backend):
    """A fused backward has no derivative: a gradient of the gradient raises rather than being
    silently wrong. The reference differentiates twice (gradgradcheck)."""
    require(device, backend)

    def render(m, s, a):
        return splat_render(m, s, a, height=7, width=8, backend=backend)

    inputs = separated_markers(device)
    if backend == "reference":
        assert torch.autograd.gradgradcheck(render, inputs, eps=1e-6, atol=1e-7)
        return
    (grad_means,) = torch.autograd.grad(render(*inputs).square().sum(), inputs[0], create_graph=True)
    with pytest.raises(NotImplementedError, match=re.escape(NO_DOUBLE_BACKWARD)):
        grad_means.sum().backward()


@pytest.mark.parametrize("device, backend", FUSED_CASES)
@pytest.mark.parametrize("n_markers, dtype", [(0, torch.float64), (5, torch.float32)], ids=str)
def test_opcheck(device, backend, n_markers, dtype):
    """The backend's op pair: schema, fake tensors, autograd registration, AOT dispatch."""
    require(device, backend)
    forward, backward = (getattr(torch.ops.splatkern, name).default for name in FUSED_OPS[backend])
    means, sigmas, amps = make_markers((3,), n_markers, 6, 9, dtype=dtype, device=device, seed=2)
    torch.library.opcheck(forward, (*(t.clone().requires_grad_() for t in (means, sigmas, amps)), 6, 9, False))
    _, index = forward(means, sigmas, amps, 6, 9, False)
    grad_image = random_like_image((3, 6, 9), device=device, seed=5).to(dtype)
    for deterministic in backward_modes(backend):
        torch.library.opcheck(backward, (grad_image, means, sigmas, amps, index, deterministic))


# The reference on CPU is left out: inductor would compile its own C++ for it (tens of seconds here).
@pytest.mark.parametrize("device, backend", COMPARED_CASES)
def test_torch_compile_fullgraph(device, backend):
    """Compiled with fullgraph=True: the same image, winners and gradients as eager (bit-identical
    where the same kernels run), no warning from tracing splatkern's code, and the fused ops' value
    checks still raise."""
    require(device, backend)
    means, sigmas, amps = make_markers((2, 3), 16, 19, 23, device=device, seed=6)
    upstream = random_like_image((2, 3, 19, 23), device=device, seed=7).float()

    def render(m, s, a):
        return splat_render(m, s, a, height=19, width=23, backend=backend, return_index=True, deterministic=True)

    eager = render_with_grads(backend, means, sigmas, amps, 19, 23, upstream, deterministic=True)
    leaves = [t.clone().requires_grad_() for t in (means, sigmas, amps)]
    compiled_render = torch.compile(render, fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, index = compiled_render(*leaves)
    assert not [str(w.message) for w in caught if "splatkern" in str(w.message) or "ops.py" in str(w.message)]
    compiled = [image.detach(), index, torch.autograd.grad(image, leaves, upstream)]
    if backend in FUSED_OPS:
        assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
        assert all(torch.equal(c, e) for c, e in zip(compiled[2], eager[2], strict=True))
        bad_sigmas = sigmas.clone().requires_grad_()
        with pytest.raises(ValueError, match="sigmas must be > 0"):
            compiled_render(leaves[0], -bad_sigmas, leaves[2])
        with pytest.raises(ValueError, match="means must be finite"):
            compiled_render(leaves[0].detach().index_fill(1, torch.tensor([0], device=device), math.nan)
                            .requires_grad_(), *leaves[1:])
    else:  # inductor generates its own kernel for the reference's math, which may round differently
        atol, rtol = TOLERANCES[torch.float32][0]
        torch.testing.assert_close(compiled[0], eager[0], atol=atol, rtol=rtol)
        clear = clear_pixels(means, sigmas, amps, 19, 23)
        assert torch.equal(compiled[1][clear], eager[1][clear])
        assert_grads_close(compiled[2], eager[2], torch.float32)


@pytest.mark.parametrize("device, backend", FUSED_CASES)
def test_deterministic_is_bit_identical_on_repeat(device, backend):
    """deterministic=True repeats bit for bit, and the default backward agrees with it up to the order
    of additions."""
    require(device, backend)
    failed = [measure.describe() for measure in repeatability(backend, device) if not measure.ok]
    assert not failed, failed


# id: (which tensor, where, the bad value, the flaw bit whose message every backend must raise word for word:
# the C++ backends keep their own copy of splatkern.checks' texts)
FLAWS = {
    "sigma-zero": ("sigmas", (0, 1), 0.0, 2),
    "sigma-negative": ("sigmas", (1, 0), -1.0, 2),
    "sigma-nan": ("sigmas", (0, 0), math.nan, 1),
    "sigma-inf": ("sigmas", (1, 2), math.inf, 1),
    "means-nan": ("means", (0, 2, 1), math.nan, 0),
    "means-inf": ("means", (1, 3, 0), -math.inf, 0),
    "amps-nan": ("amps", (1, 2), math.nan, 3),
    "amps-inf": ("amps", (1, 3), math.inf, 3),
}


@pytest.mark.parametrize("device, backend", ALL_CASES)
@pytest.mark.parametrize("flaw", FLAWS)
def test_bad_values_raise_value_error(device, backend, flaw):
    require(device, backend)
    markers = dict(zip(("means", "sigmas", "amps"), make_markers((2,), 4, 9, 41, device=device, seed=10)))
    name, where, value, bit = FLAWS[flaw]
    markers[name][where] = value
    with pytest.raises(ValueError, match=re.escape(FLAW_MESSAGES[bit])):
        splat_render(**markers, height=9, width=41, backend=backend)


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_value_checks_see_every_image_and_marker_block(device, backend):
    """The GPU kernels check values in one tile per image while staging marker blocks: a flaw in the
    last image's last marker (past CUDA's block of 64 and Triton's of 4) is found; of several flaws the
    first in the contract's order (means, sigmas finite, sigmas > 0, amps) is reported."""
    require(device, backend)
    markers = dict(zip(("means", "sigmas", "amps"), make_markers((3,), 70, 40, 36, device=device, seed=4)))
    markers["amps"][2, 69] = math.nan
    with pytest.raises(ValueError, match="amps must be finite"):
        splat_render(**markers, height=40, width=36, backend=backend)
    markers["sigmas"][1, 65] = -2.0
    with pytest.raises(ValueError, match="sigmas must be > 0"):
        splat_render(**markers, height=40, width=36, backend=backend)
    markers["means"][2, 66, 1] = math.inf
    with pytest.raises(ValueError, match="means must be finite"):
        splat_render(**markers, height=40, width=36, backend=backend)


@pytest.mark.parametrize("device, backend", FUSED_CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_axis_factors_flush_at_the_contract_exponent(device, backend, dtype):
    require(device, backend)
    check_axis_factors_flush_at_the_contract_exponent(backend, device, dtype)


# --- raw ops ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, backend", FUSED_CASES)
def test_backward_op_rejects_an_index_it_cannot_gather(device, backend):
    """The backward gathers markers by the winner map: one outside [0, N), or not int32, is an error, not a read
    out of bounds."""
    require(device, backend)
    forward, backward = (getattr(torch.ops.splatkern, name) for name in FUSED_OPS[backend])
    means, sigmas, amps = make_markers((2,), 3, 4, 5, device=device)
    image, index = forward(means, sigmas, amps, 4, 5, False)
    grad_image = torch.ones_like(image)
    for bad in (3, -1):
        out_of_range = index.clone()
        out_of_range[1, 2, 3] = bad
        with pytest.raises(ValueError, match=re.escape(f"splat_backward: {BAD_INDEX.format(n_markers=3)}")):
            backward(grad_image, means, sigmas, amps, out_of_range, False)
    with pytest.raises(TypeError, match="index must be int32"):
        backward(grad_image, means, sigmas, amps, index.long(), False)


@pytest.mark.parametrize("device, backend", CPP_CASES)
def test_cpp_forward_op_rejects_bad_layouts(device, backend):
    """The C++ op checks what splat_render otherwise guarantees (csrc/splat.cpp)."""
    require(device, backend)
    means, sigmas, amps = make_markers((2,), 3, 4, 5, device=device)
    with pytest.raises(ValueError, match="means must have shape"):
        torch.ops.splatkern.splat_forward(means[..., :1].contiguous(), sigmas, amps, 4, 4, False)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.splatkern.splat_forward(means.transpose(0, 1), sigmas.t(), amps.t(), 4, 4, False)


# --- large inputs, on a GPU only ----------------------------------------------------------------------


@pytest.mark.parametrize("device, backend", CUDA_FUSED_CASES)
def test_large_batch(device, backend):
    """B=4096, N=256, 64x64: runs without materialising [B, N, H, W]; checked on a subset of images."""
    require(device, backend)
    batch, n_markers, size = 4096, 256, 64
    means, sigmas, amps = make_markers((batch,), n_markers, size, size, device=device, seed=11)
    subset = torch.arange(0, batch, 512, device=device)
    clear = clear_pixels(means[subset], sigmas[subset], amps[subset], size, size)
    upstream = torch.zeros(batch, size, size, device=device)
    upstream[subset] = (random_like_image(clear.shape, device=device, seed=12) * clear).float()
    image, index, grads = render_with_grads(backend, means, sigmas, amps, size, size, upstream)
    ref_image, ref_index, ref_grads = render_with_grads(
        "reference", *(t[subset].double() for t in (means, sigmas, amps)), size, size, upstream[subset].double())

    atol, rtol = TOLERANCES[torch.float32][0]
    torch.testing.assert_close(image[subset].double(), ref_image, atol=atol, rtol=rtol)
    assert torch.equal(index[subset][clear], ref_index[clear])
    assert_grads_close([g[subset] for g in grads], ref_grads, torch.float32)
    others = torch.ones(batch, dtype=torch.bool, device=device)
    others[subset] = False
    assert all((g[others] == 0).all() for g in grads), "gradient reached images whose upstream gradient is zero"


@pytest.mark.parametrize("device, backend", CUDA_CASES)
def test_no_memory_leak(device, backend):
    require(device, backend)
    means, sigmas, amps = (t.requires_grad_() for t in make_markers((16,), 32, 28, 28, device=device, seed=13))

    def step():
        image = splat_render(means, sigmas, amps, height=28, width=28, backend=backend)
        image.square().sum().backward()
        means.grad = sigmas.grad = amps.grad = None

    step()  # the first call compiles kernels and fills caches
    torch.cuda.synchronize()
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    gc.collect()
    assert torch.cuda.memory_allocated() == baseline


@pytest.mark.parametrize("device, backend", CUDA_FUSED_CASES)
def test_a_cuda_graph_replays_forward_and_backward(device, backend):
    """Captured calls skip the value checks' host sync (illegal during capture); a replay on new
    values in the captured inputs gives what eager calls give."""
    require(device, backend)
    leaves = [t.requires_grad_() for t in make_markers((4,), 9, 20, 24, device=device, seed=13)]
    upstream = random_like_image((4, 20, 24), device=device, seed=14).float()

    def step():
        image = splat_render(*leaves, height=20, width=24, backend=backend)
        return (image.detach(), *torch.autograd.grad(image, leaves, upstream))

    outputs = []  # the capturing call's (the last one's) output tensors, which replays overwrite
    replay = captured_in_cuda_graph(lambda: outputs.append(step()))
    with torch.no_grad():
        for leaf, value in zip(leaves, make_markers((4,), 9, 20, 24, device=device, seed=15)):
            leaf.copy_(value)
    replay()
    for got, expected in zip(outputs[-1], step()):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
