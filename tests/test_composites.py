"""The soft composite modes of splat_render (softor, over, smoothmax) in every backend, against the
contract (splatkern/reference.py): values and gradients against the float64 oracle on the shapes
and dtypes the max mode is held to, the exact edges of their domains (amps 0 and 1, v = 1, small
temperatures), gradcheck, opcheck, torch.compile, torch.func, the deterministic backward, their
argument errors, and properties on random inputs (hypothesis). "max" itself: test_backends.py.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splatkern import splat_render
from splatkern.facts import (BAD_TEMPERATURE, FLAW_BIT, FLAW_MESSAGES, INDEX_NEEDS_MAX, SOFT_STATE_PLANES,
                             UNIT_AMP_COMPOSITES, UNKNOWN_COMPOSITE)
from splatkern.testing import (CHECK_TEMPERATURE, DTYPES, SHAPES, SOFT_COMPOSITES, gradcheck, overlapping_markers,
                               repeatability)
from support import (
    ALL_CASES,
    COMPARED_CASES,
    FUSED_CASES,
    FUSED_OPS,
    assert_matches_reference,
    backward_modes,
    contract_matrix,
    make_markers,
    random_like_image,
    render_with_grads,
    require,
    soft_markers,
    soft_state_reference,
    with_modes,
)

FLAW_AMPS_OUTSIDE_UNIT = FLAW_MESSAGES[list(FLAW_BIT).index("amps_outside_unit")]


# --- values and gradients against the oracle --------------------------------------------------------


@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
@pytest.mark.parametrize("device, backend, dtype, deterministic, shape", contract_matrix(COMPARED_CASES, DTYPES, SHAPES))
def test_matches_reference(composite, device, backend, dtype, deterministic, shape):
    require(device, backend)
    batch, n_markers, height, width, _ = shape
    inputs = soft_markers(composite, batch, n_markers, height, width, dtype=dtype, device=device, seed=n_markers)
    if composite in UNIT_AMP_COMPOSITES and n_markers >= 7:
        assert (inputs[2] == 0).any() and (inputs[2] == 1).any(), "the edges of [0, 1] should be among the amps"
    image, index, *_ = assert_matches_reference(backend, *inputs, height, width, composite=composite,
                                                temperature=CHECK_TEMPERATURE, deterministic=deterministic)
    assert index is None


@pytest.mark.parametrize("device, backend, deterministic", with_modes(COMPARED_CASES))
@pytest.mark.parametrize("composite", ["softor", "over"])
def test_value_one_gives_the_exact_finite_gradient(composite, device, backend, deterministic):
    """Markers centred on pixel centres with amp 1 have v = 1 exactly there: a factor 1 - v of 0.
    With one such marker at a pixel its derivative is the product of the others' factors; with two,
    every derivative there is 0. No division by 1 - v may blow up (float64, against autograd of the
    reference's products)."""
    require(device, backend)
    means = torch.tensor([[[2.0, 3.0], [2.0, 3.0], [4.0, 1.0], [3.3, 2.1], [5.0, 4.0]]], dtype=torch.float64)
    sigmas = torch.tensor([[1.0, 0.7, 1.3, 1.1, 0.9]], dtype=torch.float64)
    amps = torch.tensor([[1.0, 1.0, 1.0, 0.6, 0.999999]], dtype=torch.float64)
    inputs = [t.to(device) for t in (means, sigmas, amps)]
    image, _, grads, _ = assert_matches_reference(backend, *inputs, 6, 7, composite=composite, deterministic=deterministic)
    assert image[0, 3, 2] == 1 and image[0, 1, 4] == 1
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("device, backend, deterministic", with_modes(COMPARED_CASES))
@pytest.mark.parametrize("temperature", [1e-3, 0.05, 20.0])
def test_smoothmax_at_small_and_large_temperatures(temperature, device, backend, deterministic):
    """Finite and equal to the oracle's softmax (which subtracts its max) down to t = 1e-3, where the
    weights span e^-1000; at a large t it is nearly the mean of all N values, zeros included."""
    require(device, backend)
    inputs = make_markers((2,), 9, 8, 11, dtype=torch.float64, device=device, seed=4)
    image, _, grads, _ = assert_matches_reference(backend, *inputs, 8, 11, composite="smoothmax",
                                                  temperature=temperature, deterministic=deterministic)
    assert torch.isfinite(image).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device, backend", FUSED_CASES)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_forward_saves_the_state_its_backward_reads(composite, device, backend, dtype):
    """The fused forward's second output for a soft mode: the per-pixel state of csrc/splat.cpp,
    against the float64 oracle, with pixels where one and where two markers are 1 exactly (Z = 1, 2)
    and pixels that no marker reaches."""
    require(device, backend)
    forward = getattr(torch.ops.splatkern, FUSED_OPS[backend][0]).default
    means, sigmas, amps = soft_markers(composite, (2,), 23, 13, 30, dtype=torch.float64, seed=8)
    means[:, :3] = torch.tensor([[4.0, 5.0], [4.0, 5.0], [9.0, 2.0]], dtype=torch.float64)  # on pixel centres
    amps[:, :3] = 1
    sigmas[:, 3] = 0.05  # a marker that reaches one pixel at most
    expected = soft_state_reference(means, sigmas, amps, 13, 30, composite, 0.3)
    inputs = [t.to(device=device, dtype=dtype) for t in (means, sigmas, amps)]
    image, state = forward(*inputs, 13, 30, False, composite, 0.3)
    assert state.shape == (2, SOFT_STATE_PLANES, 13, 30) and state.dtype == dtype
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(state[:, 0].double(), expected[:, 0], rtol=rtol, atol=rtol)
    torch.testing.assert_close(state[:, 1].double(), expected[:, 1], rtol=rtol, atol=rtol)
    if composite == "smoothmax":
        assert torch.equal(state[:, 1], image)
    else:
        assert state[:, 1, 5, 4].tolist() == [2, 2] and state[:, 1, 2, 9].tolist() == [1, 1]


@pytest.mark.parametrize("device, backend", ALL_CASES)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_no_markers_draw_zeros(composite, device, backend):
    require(device, backend)
    means, sigmas, amps = make_markers((3,), 0, 5, 6, device=device)
    upstream = torch.ones(3, 5, 6, device=device)
    image, _, grads = render_with_grads(backend, means, sigmas, amps, 5, 6, upstream, composite=composite)
    assert torch.equal(image, torch.zeros(3, 5, 6, device=device))
    assert [g.shape for g in grads] == [means.shape, sigmas.shape, amps.shape]


# --- gradcheck, opcheck, torch.compile, torch.func, determinism ------------------------------------


@pytest.mark.parametrize("device, backend, deterministic", with_modes(ALL_CASES))
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_gradcheck_float64(composite, device, backend, deterministic):
    require(device, backend)
    measure = gradcheck(backend, device, deterministic=deterministic, composite=composite)
    assert measure.ok, measure.note


@pytest.mark.parametrize("device, backend", FUSED_CASES)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_opcheck(composite, device, backend):
    """The op pair with a soft composite: schema, fake tensors (the soft state), autograd, AOT dispatch."""
    require(device, backend)
    forward, backward = (getattr(torch.ops.splatkern, name).default for name in FUSED_OPS[backend])
    means, sigmas, amps = soft_markers(composite, (3,), 5, 6, 9, device=device, seed=2)
    mode = (composite, CHECK_TEMPERATURE)
    torch.library.opcheck(forward, (*(t.clone().requires_grad_() for t in (means, sigmas, amps)), 6, 9, False, *mode))
    _, state = forward(means, sigmas, amps, 6, 9, False, *mode)
    assert state.shape == (3, SOFT_STATE_PLANES, 6, 9) and state.dtype == means.dtype
    grad_image = random_like_image((3, 6, 9), device=device, seed=5).float()
    for deterministic in backward_modes(backend):
        torch.library.opcheck(backward, (grad_image, means, sigmas, amps, state, deterministic, *mode))


# The reference on CPU is left out: inductor would compile its own C++ for it (tens of seconds here).
@pytest.mark.parametrize("device, backend", [case for case in COMPARED_CASES if case.values[1] != "triton"
                                             or case.values[0] == "cuda"])
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_torch_compile_fullgraph(composite, device, backend):
    """Compiled with fullgraph=True: bit-identical to eager, and the value checks inside the op (amps
    in [0, 1] for softor and over) still raise."""
    require(device, backend)
    means, sigmas, amps = soft_markers(composite, (2, 3), 16, 19, 23, device=device, seed=6)
    upstream = random_like_image((2, 3, 19, 23), device=device, seed=7).float()
    mode = dict(composite=composite, temperature=CHECK_TEMPERATURE, deterministic=True)

    def render(m, s, a):
        return splat_render(m, s, a, height=19, width=23, backend=backend, **mode)

    eager = render_with_grads(backend, means, sigmas, amps, 19, 23, upstream, **mode)
    leaves = [t.clone().requires_grad_() for t in (means, sigmas, amps)]
    compiled_render = torch.compile(render, fullgraph=True)
    image = compiled_render(*leaves)
    assert torch.equal(image.detach(), eager[0])
    assert all(torch.equal(c, e) for c, e in zip(torch.autograd.grad(image, leaves, upstream), eager[2], strict=True))
    if composite in UNIT_AMP_COMPOSITES:
        with pytest.raises(ValueError, match=re.escape(FLAW_AMPS_OUTSIDE_UNIT)):
            compiled_render(leaves[0], leaves[1], (leaves[2] * 2 + 0.1).detach().requires_grad_())


@pytest.mark.parametrize("device, backend", ALL_CASES)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_torch_func_grad_matches_autograd(composite, device, backend):
    require(device, backend)
    means, sigmas, amps = (t.detach() for t in overlapping_markers(device))
    upstream = random_like_image((7, 8), device=device, seed=3)

    def loss(m, s, a):
        return (splat_render(m, s, a, height=7, width=8, backend=backend, composite=composite) * upstream).sum()

    leaves = [t.clone().requires_grad_() for t in (means, sigmas, amps)]
    expected = torch.autograd.grad(loss(*leaves), leaves)
    got = torch.func.grad(loss, argnums=(0, 1, 2))(means, sigmas, amps)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device, backend", FUSED_CASES)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_deterministic_is_bit_identical_on_repeat(composite, device, backend):
    require(device, backend)
    shape = SHAPES[0] if device == "cpu" and backend == "triton" else None
    failed = [m.describe() for m in repeatability(backend, device, shape, composite=composite) if not m.ok]
    assert not failed, failed


# --- argument errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device, backend", ALL_CASES)
def test_bad_composite_arguments_raise_naming_them(device, backend):
    require(device, backend)
    means, sigmas, amps = make_markers((2,), 4, 5, 6, device=device, unit_amps=True)

    def render(**kwargs):
        return splat_render(means, sigmas, amps, height=5, width=6, backend=backend, **kwargs)

    with pytest.raises(ValueError, match=re.escape(f"{UNKNOWN_COMPOSITE}, got 'sum'")):
        render(composite="sum")
    for temperature in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=re.escape(BAD_TEMPERATURE)):
            render(composite="smoothmax", temperature=temperature)
    with pytest.raises(TypeError, match=re.escape(BAD_TEMPERATURE)):
        render(composite="smoothmax", temperature="warm")
    for composite in SOFT_COMPOSITES:
        with pytest.raises(ValueError, match=re.escape(INDEX_NEEDS_MAX)):
            render(composite=composite, return_index=True)


@pytest.mark.parametrize("device, backend", ALL_CASES)
@pytest.mark.parametrize("composite", UNIT_AMP_COMPOSITES)
@pytest.mark.parametrize("bad_amp", [-0.01, 1.01])
def test_amps_outside_the_unit_interval_are_refused(composite, bad_amp, device, backend):
    """softor and over read values as coverages; max and smoothmax take any finite amps."""
    require(device, backend)
    means, sigmas, amps = make_markers((2,), 70, 9, 10, device=device, unit_amps=True, seed=3)
    amps[1, 69] = bad_amp  # the last marker of the last image: every marker block is checked
    with pytest.raises(ValueError, match=re.escape(FLAW_AMPS_OUTSIDE_UNIT)):
        splat_render(means, sigmas, amps, height=9, width=10, backend=backend, composite=composite)
    for composite in ("max", "smoothmax"):
        splat_render(means, sigmas, amps, height=9, width=10, backend=backend, composite=composite)


@pytest.mark.parametrize("device, backend", FUSED_CASES)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_raw_ops_refuse_bad_composite_arguments(composite, device, backend):
    """The ops themselves check what splat_render checks, for callers that skip the wrapper."""
    require(device, backend)
    forward, _ = (getattr(torch.ops.splatkern, name) for name in FUSED_OPS[backend])
    means, sigmas, amps = make_markers((2,), 3, 4, 5, device=device, unit_amps=True)
    with pytest.raises(ValueError, match=re.escape(UNKNOWN_COMPOSITE)):
        forward(means, sigmas, amps, 4, 5, False, composite.upper(), 1.0)
    with pytest.raises(ValueError, match=re.escape(BAD_TEMPERATURE)):
        forward(means, sigmas, amps, 4, 5, False, composite, -1.0)


# --- properties on random inputs -----------------------------------------------------------------------

FAST_CASES = [case for case in FUSED_CASES if not (case.values[0] == "cpu" and case.values[1] == "triton")]


def random_op_inputs(seed: int, n_markers: int, device):
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(2, n_markers, 2, generator=gen, dtype=torch.float64) * 14 - 2
    sigmas = torch.rand(2, n_markers, generator=gen, dtype=torch.float64) * 2.5 + 0.3
    amps = torch.rand(2, n_markers, generator=gen, dtype=torch.float64)
    return [t.to(device) for t in (means, sigmas, amps)]


@pytest.mark.parametrize("device, backend", FAST_CASES)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_markers=st.integers(1, 24))
def test_properties_of_the_modes(device, backend, seed, n_markers):
    """softor >= max; every mode lies in [0, 1] when amps do; over equals softor up to rounding (the
    sum telescopes); permuting the markers leaves max, softor and smoothmax unchanged."""
    require(device, backend)
    means, sigmas, amps = random_op_inputs(seed, n_markers, device)

    def render(m, s, a, composite):
        return splat_render(m, s, a, height=10, width=11, backend=backend, composite=composite, temperature=0.3)

    images = {c: render(means, sigmas, amps, c) for c in ("max", *SOFT_COMPOSITES)}
    assert (images["softor"] >= images["max"] - 1e-12).all()
    for image in images.values():
        assert (image >= 0).all() and (image <= 1 + 1e-12).all()
    torch.testing.assert_close(images["over"], images["softor"], atol=1e-12, rtol=0)
    order = torch.randperm(n_markers, generator=torch.Generator().manual_seed(seed)).to(means.device)
    for composite in ("max", "softor", "smoothmax"):
        permuted = render(means[:, order], sigmas[:, order], amps[:, order], composite)
        torch.testing.assert_close(permuted, images[composite], atol=1e-12, rtol=0)


@pytest.mark.parametrize("device, backend", FAST_CASES)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_one_marker_is_itself_in_every_mode(device, backend, seed):
    require(device, backend)
    means, sigmas, amps = random_op_inputs(seed, 1, device)
    alone = splat_render(means, sigmas, amps, height=10, width=11, backend=backend)
    for composite in SOFT_COMPOSITES:
        image = splat_render(means, sigmas, amps, height=10, width=11, backend=backend, composite=composite)
        torch.testing.assert_close(image, alone, atol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("device, backend", FAST_CASES)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_markers=st.integers(2, 12))
def test_smoothmax_approaches_max_as_temperature_falls(device, backend, seed, n_markers):
    require(device, backend)
    means, sigmas, amps = random_op_inputs(seed, n_markers, device)
    top = splat_render(means, sigmas, amps, height=10, width=11, backend=backend)
    gaps = [(splat_render(means, sigmas, amps, height=10, width=11, backend=backend, composite="smoothmax",
                          temperature=t) - top).abs().max().item() for t in (1.0, 0.1, 1e-3)]
    assert gaps[2] <= gaps[1] + 1e-12 and gaps[1] <= gaps[0] + 1e-12
    assert gaps[2] < 0.01
