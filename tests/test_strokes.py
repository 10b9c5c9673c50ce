"""stroke_render: every fused backend that draws strokes against the float64 oracle
(splatkern/stroke_reference.py) in every composite mode and dtype; gradcheck, opcheck, torch.compile,
torch.func and repeatability; the argument errors; and the contract's invariants (P = 1 is a marker,
coincident vertices are a marker, a straight polyline is its one segment, reversal changes nothing).
test_cpu_backend.py shows that the CPU kernel's culling and vector width change no bit."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import splatkern
from splatkern.checks import compute_dtype
from splatkern.facts import (BAD_INDEX, BAD_TEMPERATURE, COMPOSITES, FLAW_BIT, FLUSH_EXPONENT, INDEX_NEEDS_MAX,
                             STROKE_FLAW_MESSAGES, UNIT_AMP_COMPOSITES, UNKNOWN_COMPOSITE)
from splatkern.stroke_reference import stroke_render_reference
from splatkern.testing import NEAR_TIE, measure_close
from support import FUSED_CASES, TOLERANCES, make_strokes, measure_grads, random_like_image, require

STROKE_OPS = {"cpu": ("stroke_forward", "stroke_backward"), "cuda": ("stroke_forward", "stroke_backward"),
              "triton": ("stroke_forward_triton", "stroke_backward_triton")}
# (batch shape, S, P, height, width): one vertex (markers), a few strokes, the gesture model's one
# long stroke, a row of tiles (130 rows), no stroke at all, and no batch dimension.
SHAPES = [((2,), 3, 1, 9, 14), ((3,), 3, 6, 17, 23), ((2,), 1, 25, 28, 28), ((1,), 4, 5, 130, 37),
          ((2,), 0, 3, 5, 6), ((), 2, 4, 11, 12), ((2, 2), 2, 3, 8, 9)]


def segment_values(paths, sigmas, amps, height, width):
    """[..., S, K, H, W] every segment's value alone, in float64 (each segment drawn as a stroke)."""
    if paths.shape[-2] > 1:
        paths = torch.stack([paths[..., :-1, :], paths[..., 1:, :]], dim=-2)  # [..., S, K, 2, 2]
        sigmas = torch.stack([sigmas[..., :-1], sigmas[..., 1:]], dim=-1)
        amps = torch.stack([amps[..., :-1], amps[..., 1:]], dim=-1)
    else:
        paths, sigmas, amps = paths[..., None, :, :], sigmas[..., None, :], amps[..., None, :]
    shape = paths.shape[:-2]  # [..., S, K]
    flat = [t.detach().double().reshape(-1, 1, *t.shape[len(shape):]) for t in (paths, sigmas, amps)]
    image, _ = stroke_render_reference(*flat, height, width)
    return image.reshape(*shape, height, width)


def clear_pixels(paths, sigmas, amps, height, width, composite):
    """True where every backend must find the oracle's winners: for "max" the winning segment of all
    beats the runner-up by more than NEAR_TIE (relative) and is not flushed; for the other modes each
    stroke's winning segment beats its runner-up so, or is too small to matter (flushed)."""
    dtype = compute_dtype(paths.dtype)
    values = segment_values(paths, sigmas, amps, height, width)  # [..., S, K, H, W]
    values = values.flatten(-4, -3)[..., None, :, :, :] if composite == "max" else values
    if values.shape[-3] < 2 or values.shape[-4] == 0:
        return torch.ones(values.shape[:-4] + (height, width), dtype=torch.bool)
    best, runner_up = values.topk(2, dim=-3).values.unbind(-3)
    floor = 2 * float(amps.abs().max()) * math.exp(-FLUSH_EXPONENT[str(dtype).removeprefix("torch.")])
    clear = best - runner_up > NEAR_TIE[dtype] * best.abs()
    if composite == "max":  # where every value is flushed the kernels' winner is the lowest, the oracle's not
        return (clear & (best.abs() > floor)).squeeze(-3)
    return (clear | (best.abs() < floor)).all(dim=-3)  # a stroke flushed there gets no gradient there


def render(backend, paths, sigmas, amps, height, width, upstream, **options):
    """Image, winner map (max) and the gradients of sum(image * upstream)."""
    leaves = [t.detach().clone().requires_grad_() for t in (paths, sigmas, amps)]
    out = splatkern.stroke_render(*leaves, height=height, width=width, backend=backend,
                                  return_index=options.get("composite", "max") == "max", **options)
    image, index = out if isinstance(out, tuple) else (out, None)
    if not image.requires_grad:
        return image, index, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(image, leaves, upstream.to(image.dtype), allow_unused=True)
    return image.detach(), index, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def assert_matches_reference(backend, device, dtype, shape, composite, *, deterministic=False, temperature=0.3,
                             seed=0):
    batch_shape, strokes, vertices, height, width = shape
    inputs = make_strokes(batch_shape, strokes, vertices, height, width, dtype=dtype, device=device, seed=seed,
                          unit_amps=composite in UNIT_AMP_COMPOSITES)
    clear = clear_pixels(*(t.cpu() for t in inputs), height, width, composite).to(device)
    upstream = random_like_image((*batch_shape, height, width), device=device, seed=seed + 1) * clear
    options = dict(composite=composite, temperature=temperature)
    image, index, grads = render(backend, *inputs, height, width, upstream, deterministic=deterministic, **options)
    ref_image, ref_index, ref_grads = render("reference", *(t.double() for t in inputs), height, width, upstream,
                                             **options)
    assert image.dtype == dtype and image.shape == (*batch_shape, height, width)
    failed = [m.describe() for m in [measure_close("image", image, ref_image, *TOLERANCES[dtype][0]),
                                     *measure_grads(grads, ref_grads, dtype)] if not m.ok]
    if index is not None:
        differ = int((index != ref_index)[clear].sum())
        if differ:
            failed.append(f"winners: {differ} of {int(clear.sum())} clear pixels differ")
    assert not failed, "; ".join(failed)
    return image, index, grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, [*s[0], *s[1:]])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("device,backend", FUSED_CASES)
def test_fused_backends_match_the_oracle(device, backend, composite, dtype, shape):
    require(device, backend)
    if backend == "triton" and device == "cpu" and (dtype not in (torch.float32, torch.float64) or shape[3] > 40):
        shape = ((1,), 2, 3, 9, 10)  # the interpreter: a small case of each mode and dtype
    for deterministic in (False, True) if device == "cuda" else (False,):
        assert_matches_reference(backend, device, dtype, shape, composite, deterministic=deterministic)


def test_reference_backend_is_the_oracle_through_the_op():
    paths, sigmas, amps = make_strokes((2, 3), 2, 4, 10, 11, dtype=torch.float64, unit_amps=True)
    image = splatkern.stroke_render(paths, sigmas, amps, height=10, width=11, backend="reference", composite="over")
    expected, _ = stroke_render_reference(paths.reshape(6, 2, 4, 2), sigmas.reshape(6, 2, 4), amps.reshape(6, 2, 4),
                                          10, 11, "over")
    assert torch.equal(image, expected.reshape(2, 3, 10, 11))


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("device,backend", FUSED_CASES)
def test_gradcheck(device, backend, composite):
    """Finite differences of the fused op in float64, on strokes with distinct values everywhere."""
    require(device, backend)
    paths = torch.tensor([[[[1.3, 1.1], [4.7, 2.2], [5.4, 5.6]], [[0.8, 5.2], [2.9, 3.7], [6.1, 0.4]]]],
                         dtype=torch.float64, device=device)
    sigmas = torch.tensor([[[0.9, 1.4, 1.1], [1.2, 0.8, 1.5]]], dtype=torch.float64, device=device)
    amps = torch.tensor([[[0.6, 0.9, 0.75], [0.8, 0.5, 0.95]]], dtype=torch.float64, device=device)
    leaves = [t.requires_grad_() for t in (paths, sigmas, amps)]
    assert torch.autograd.gradcheck(
        lambda p, s, a: splatkern.stroke_render(p, s, a, height=7, width=8, backend=backend, composite=composite,
                                                temperature=0.4, deterministic=True),
        leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("device,backend", FUSED_CASES)
def test_opcheck(device, backend, composite):
    require(device, backend)
    forward_name, backward_name = STROKE_OPS[backend]
    forward, backward = getattr(torch.ops.splatkern, forward_name), getattr(torch.ops.splatkern, backward_name)
    paths, sigmas, amps = make_strokes((2,), 3, 4, 9, 10, device=device, unit_amps=True)
    args = (paths.requires_grad_(), sigmas.requires_grad_(), amps.requires_grad_(), 9, 10, True, composite, 0.5)
    torch.library.opcheck(forward, args)
    image, saved = forward(*(t.detach() if isinstance(t, torch.Tensor) else t for t in args))
    torch.library.opcheck(backward, (torch.ones_like(image), paths.detach(), sigmas.detach(), amps.detach(), saved,
                                     True, composite, 0.5))


@pytest.mark.parametrize("device,backend", FUSED_CASES)
def test_compile_and_func_give_eager_results(device, backend):
    require(device, backend)
    paths, sigmas, amps = make_strokes((2,), 2, 5, 12, 13, device=device, unit_amps=True)

    def loss(p, s, a):
        return (splatkern.stroke_render(p, s, a, height=12, width=13, backend=backend, composite="softor") ** 2).sum()

    eager = torch.func.grad(loss, argnums=(0, 1, 2))(paths, sigmas, amps)
    leaves = [t.clone().requires_grad_() for t in (paths, sigmas, amps)]
    compiled = torch.compile(loss, fullgraph=True)
    compiled(*leaves).backward()
    for expected, got in zip(eager, leaves):
        assert torch.equal(got.grad, expected)
    with pytest.raises(ValueError, match=re.escape(STROKE_FLAW_MESSAGES[2])):
        compiled(paths, -sigmas, amps)  # the value checks stay in the compiled graph


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("device,backend", FUSED_CASES)
def test_deterministic_repeats_are_bit_identical(device, backend, composite):
    require(device, backend)
    inputs = make_strokes((3,), 4, 6, 30, 31, device=device, unit_amps=True, seed=5)
    upstream = random_like_image((3, 30, 31), device=device, seed=2)
    runs = [render(backend, *inputs, 30, 31, upstream, composite=composite, deterministic=True) for _ in range(3)]
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0])
        for grad, first in zip(run[2], runs[0][2]):
            assert torch.equal(grad, first)


# --- the contract's invariants ------------------------------------------------------------------------


def fused_backends():
    return [*FUSED_CASES, pytest.param("cpu", "reference", id="cpu-reference")]


@pytest.mark.parametrize("device,backend", fused_backends())
def test_one_vertex_and_coincident_vertices_are_markers(device, backend):
    require(device, backend)
    paths, sigmas, amps = make_strokes((2,), 3, 1, 15, 16, device=device, dtype=torch.float64, seed=3)
    markers = splatkern.splat_render(paths[..., 0, :], sigmas[..., 0], amps[..., 0], height=15, width=16,
                                     backend=backend)
    strokes = splatkern.stroke_render(paths, sigmas, amps, height=15, width=16, backend=backend)
    torch.testing.assert_close(strokes, markers, atol=1e-12, rtol=1e-10)
    repeated = splatkern.stroke_render(paths.expand(2, 3, 4, 2), sigmas.expand(2, 3, 4), amps.expand(2, 3, 4),
                                       height=15, width=16, backend=backend)
    torch.testing.assert_close(repeated, markers, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("device,backend", fused_backends())
def test_a_straight_polyline_is_its_one_segment(device, backend):
    """Collinear, evenly spaced vertices with one sigma and amp draw their end-to-end segment."""
    require(device, backend)
    start, end = torch.tensor([2.3, 3.1], dtype=torch.float64), torch.tensor([17.6, 9.4], dtype=torch.float64)
    steps = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]
    polyline = (start + steps * (end - start))[None, None].to(device)  # [1, 1, 6, 2]
    segment = torch.stack([start, end])[None, None].to(device)
    ones = dict(dtype=torch.float64, device=device)
    for composite in COMPOSITES:
        kwargs = dict(height=14, width=21, backend=backend, composite=composite)
        many = splatkern.stroke_render(polyline, torch.full((1, 1, 6), 1.7, **ones), torch.full((1, 1, 6), 0.8, **ones),
                                       **kwargs)
        one = splatkern.stroke_render(segment, torch.full((1, 1, 2), 1.7, **ones), torch.full((1, 1, 2), 0.8, **ones),
                                      **kwargs)
        torch.testing.assert_close(many, one, atol=1e-12, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vertices=st.integers(1, 7), strokes=st.integers(1, 4),
       composite=st.sampled_from(COMPOSITES))
def test_reversing_a_stroke_changes_no_pixel(seed, vertices, strokes, composite):
    """Reversed, a segment's t becomes 1 - t and its interpolations are the same. Not where consecutive
    vertices coincide with different sigmas or amps: the contract draws such a segment with t = 0,
    its first vertex's, which reversal swaps; so make_strokes's coincident vertex is moved off here."""
    paths, sigmas, amps = make_strokes((2,), strokes, vertices, 13, 17, dtype=torch.float64, seed=seed,
                                       unit_amps=composite in UNIT_AMP_COMPOSITES)
    if vertices > 2:
        paths[..., 2, :] += 0.37
    for backend in ("cpu", "reference"):
        kwargs = dict(height=13, width=17, backend=backend, composite=composite, temperature=0.5)
        forward = splatkern.stroke_render(paths, sigmas, amps, **kwargs)
        backward = splatkern.stroke_render(paths.flip(-2), sigmas.flip(-1), amps.flip(-1), **kwargs)
        torch.testing.assert_close(backward, forward, atol=1e-12, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vertices=st.integers(1, 6), strokes=st.integers(0, 4),
       composite=st.sampled_from(COMPOSITES), width=st.integers(1, 40))
def test_cpu_kernel_matches_the_oracle_on_random_strokes(seed, vertices, strokes, composite, width):
    require("cpu", "cpu")
    assert_matches_reference("cpu", "cpu", torch.float64, ((1,), strokes, vertices, 9, width), composite, seed=seed)


def test_values_of_exactly_one_in_softor_and_over():
    """A vertex on a pixel centre with amp 1 gives v = 1 exactly there (Z = 1; with two such strokes
    Z = 2), where the derivative is the exact product of the other factors."""
    require("cpu", "cpu")
    paths = torch.tensor([[[[3.0, 2.0], [7.5, 4.2]], [[3.0, 2.0], [0.4, 6.1]], [[5.2, 5.3], [1.1, 0.7]]]],
                         dtype=torch.float64)
    sigmas = torch.tensor([[[1.2, 0.9], [1.0, 1.3], [1.1, 1.4]]], dtype=torch.float64)
    amps = torch.tensor([[[1.0, 0.6], [1.0, 0.3], [0.7, 0.9]]], dtype=torch.float64)
    for composite in UNIT_AMP_COMPOSITES:
        for chosen in ([0, 2], [0, 1, 2]):  # one stroke at 1 on pixel (2, 3), then two
            strokes = [t[:, chosen] for t in (paths, sigmas, amps)]
            upstream = random_like_image((1, 8, 9), seed=4)
            image, _, grads = render("cpu", *strokes, 8, 9, upstream, composite=composite)
            ref_image, _, ref_grads = render("reference", *strokes, 8, 9, upstream, composite=composite)
            assert image[0, 2, 3] == 1.0
            torch.testing.assert_close(image, ref_image, atol=1e-12, rtol=1e-10)
            for grad, ref in zip(grads, ref_grads):
                torch.testing.assert_close(grad, ref, atol=1e-10, rtol=1e-9)


# --- errors ------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_errors_naming_them():
    paths, sigmas, amps = make_strokes((2,), 2, 3, 5, 6)
    call = lambda *args, **kwargs: splatkern.stroke_render(*args, **{"height": 5, "width": 6, **kwargs})  # noqa: E731
    cases = [
        (ValueError, "stroke_render: paths must have shape [..., S, P, 2]", (paths[..., 0], sigmas, amps), {}),
        (ValueError, "stroke_render: paths must have P >= 1 vertices", (paths[..., :0, :], sigmas[..., :0],
                                                                       amps[..., :0]), {}),
        (ValueError, "stroke_render: sigmas must have shape [..., S, P] to match paths", (paths, sigmas[..., :2], amps),
         {}),
        (ValueError, "stroke_render: amps must have shape [..., S, P] to match paths", (paths, sigmas, amps[:1]), {}),
        (TypeError, "stroke_render: paths, sigmas and amps must share one dtype", (paths.double(), sigmas, amps), {}),
        (TypeError, "stroke_render: sigmas must be a torch.Tensor", (paths, 1.0, amps), {}),
        (TypeError, "stroke_render: paths must be a floating-point tensor", (paths.int(), sigmas, amps), {}),
        (ValueError, "stroke_render: height must be >= 1", (paths, sigmas, amps), {"height": 0}),
        (TypeError, "stroke_render: width must be an int", (paths, sigmas, amps), {"width": 6.0}),
        (ValueError, f"stroke_render: {UNKNOWN_COMPOSITE}, got 'sum'", (paths, sigmas, amps), {"composite": "sum"}),
        (ValueError, f"stroke_render: {BAD_TEMPERATURE}", (paths, sigmas, amps), {"temperature": 0.0}),
        (ValueError, f"stroke_render: {INDEX_NEEDS_MAX}", (paths, sigmas, amps),
         {"composite": "over", "return_index": True}),
        (ValueError, "stroke_render: unknown backend 'gpu'", (paths, sigmas, amps), {"backend": "gpu"}),
    ]
    for error, text, args, kwargs in cases:
        with pytest.raises(error, match=re.escape(text)):
            call(*args, **kwargs)


@pytest.mark.parametrize("backend", ["reference", *(case.values[1] for case in FUSED_CASES if case.values[0] == "cpu")])
@pytest.mark.parametrize("flaw", list(FLAW_BIT))
def test_bad_values_raise_stroke_renders_errors(backend, flaw):
    require("cpu", backend)
    paths, sigmas, amps = make_strokes((2,), 2, 3, 5, 6, unit_amps=True)
    tensor, value, composite = {
        "means_nonfinite": (paths, math.nan, "max"),
        "sigmas_nonfinite": (sigmas, math.inf, "max"),
        "sigmas_nonpositive": (sigmas, 0.0, "max"),
        "amps_nonfinite": (amps, -math.inf, "max"),
        "amps_outside_unit": (amps, 1.5, "softor"),
    }[flaw]
    tensor[1, 1, 2] = value
    bit = list(FLAW_BIT).index(flaw)
    with pytest.raises(ValueError, match=re.escape(STROKE_FLAW_MESSAGES[bit])):
        splatkern.stroke_render(paths, sigmas, amps, height=5, width=6, backend=backend, composite=composite)


def test_a_corrupted_winner_map_is_refused():
    require("cpu", "cpu")
    paths, sigmas, amps = make_strokes((1,), 2, 3, 5, 6)
    image, index = torch.ops.splatkern.stroke_forward(paths, sigmas, amps, 5, 6, False)
    index[0, 2, 2] = 4  # S max(P - 1, 1) = 4 segments: ids 0..3
    with pytest.raises(ValueError, match=re.escape(f"stroke_backward: {BAD_INDEX.format(n_markers=4)}")):
        torch.ops.splatkern.stroke_backward(torch.ones_like(image), paths, sigmas, amps, index, False)
