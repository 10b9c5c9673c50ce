"""stroke_render's Triton kernels (splatkern/triton_strokes.py) and their custom ops against the float64
oracle stroke_render_reference: image, winner map or soft state, and gradients in every composite,
float32 and float64, both backward modes; one-vertex strokes, coincident vertices, strokes off the
image, no strokes, several tiles (segments culled per tile); the value checks, opcheck, and the
public op (eager, torch.func, torch.compile). Under the interpreter on CPU (conftest.py sets it where
there is no GPU), and on CUDA where there is one; shapes stay small for the interpreter."""

from __future__ import annotations

import math
import re

import pytest
import torch
from support import TOLERANCES, assert_grads_close, require, state_of_values

import splatkern
from splatkern.facts import (
    BAD_INDEX,
    COMPOSITES,
    FLAW_BIT,
    FLUSH_EXPONENT,
    SOFT_STATE_PLANES,
    STROKE_FLAW_MESSAGES,
    UNIT_AMP_COMPOSITES,
)
from splatkern.stroke_reference import stroke_render_reference, stroke_values

DEVICES = [pytest.param("cpu", id="cpu-interpreter"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
HEIGHT, WIDTH = 9, 13
TEMPERATURE = 0.3  # read by smoothmax only
# Where two segments' values are closer than this, either may win: such pixels are left out of the
# winner map's comparison, and of the "max" gradients' (the kernels and the oracle round differently).
CLEAR_MARGIN = 1e-4


def kernels(device):
    require(device, "triton")
    from splatkern import triton_strokes  # noqa: PLC0415 - imports triton only where required

    return triton_strokes


def random_strokes(batch, n_strokes, n_vertices, *, composite="max", dtype=torch.float64, device="cpu", seed=0,
                   height=HEIGHT, width=WIDTH):
    """Vertices over the image and a pixel or two past it; amps in [0, 1] for softor and over, else in
    [-0.2, 1.2] (a negative value loses to a culled segment's 0)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([width + 2, height + 2], dtype=torch.float64)
    paths = torch.rand(batch, n_strokes, n_vertices, 2, generator=gen, dtype=torch.float64) * scale - 1
    sigmas = 0.6 + 1.5 * torch.rand(batch, n_strokes, n_vertices, generator=gen, dtype=torch.float64)
    amps = torch.rand(batch, n_strokes, n_vertices, generator=gen, dtype=torch.float64)
    if composite not in UNIT_AMP_COMPOSITES:
        amps = 1.4 * amps - 0.2
    return tuple(t.to(device, dtype) for t in (paths, sigmas, amps))


def upstream_like(image, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(image.shape, generator=gen, dtype=torch.float64).to(image.device, image.dtype)


def segment_values(paths, sigmas, amps, height, width):
    """[B, S K, H, W] every segment's value by the oracle's math, in the winner map's order s K + k."""
    if paths.shape[-2] > 1:  # each segment as a two-vertex stroke
        batch = sigmas.shape[0]
        paths = torch.stack([paths[..., :-1, :], paths[..., 1:, :]], dim=-2).reshape(batch, -1, 2, 2)
        sigmas, amps = (torch.stack([t[..., :-1], t[..., 1:]], dim=-1).reshape(batch, -1, 2) for t in (sigmas, amps))
    return stroke_values(paths, sigmas, amps, height, width)[0]


def clear_winners(paths, sigmas, amps, height, width):
    """The pixels whose "max" winner (stroke and segment) is certain: the best segment value above the
    next by CLEAR_MARGIN, and away from 0, which segments flushed by the kernels take."""
    values = segment_values(*(t.double() for t in (paths, sigmas, amps)), height, width)
    if values.shape[1] == 1:
        return values[:, 0].abs() > CLEAR_MARGIN
    top = values.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1] > CLEAR_MARGIN) & (top[:, 0].abs() > CLEAR_MARGIN)


def state_reference(paths, sigmas, amps, height, width, composite, temperature):
    """The soft state a forward saves (csrc/splat.cpp) from the oracle's stroke values."""
    return state_of_values(stroke_values(paths, sigmas, amps, height, width)[0], composite, temperature)


def reference(paths, sigmas, amps, height, width, composite, upstream):
    """The oracle's image, winner map and gradients (of sum(image * upstream)), in float64."""
    leaves = [t.detach().double().requires_grad_() for t in (paths, sigmas, amps)]
    image, index = stroke_render_reference(*leaves, height, width, composite, TEMPERATURE)
    grads = torch.autograd.grad(image, leaves, upstream.double())
    return image.detach(), index, grads


def check_against_reference(triton_strokes, paths, sigmas, amps, composite, *, height=HEIGHT, width=WIDTH,
                            config=None, seed=1):
    """Forward and both backwards of the kernels against the oracle; deterministic=True twice, bit for
    bit. Returns the forward's image and saved tensor and the deterministic gradients."""
    dtype = paths.dtype
    mode = dict(composite=composite, temperature=TEMPERATURE, config=config)
    image, saved = triton_strokes.forward(paths, sigmas, amps, height, width, **mode)
    upstream = upstream_like(image, seed)
    clear = None
    if composite == "max":
        clear = clear_winners(paths, sigmas, amps, height, width)
        assert clear.float().mean() > 0.5  # the comparison covers most of the image
        upstream = upstream * clear
    ref_image, ref_index, ref_grads = reference(paths, sigmas, amps, height, width, composite, upstream)

    atol, rtol = TOLERANCES[dtype][0]
    assert image.dtype == dtype and image.shape == ref_image.shape
    torch.testing.assert_close(image.double(), ref_image, atol=atol, rtol=rtol)
    if composite == "max":
        assert saved.dtype == torch.int32 and saved.shape == image.shape
        assert torch.equal(saved[clear], ref_index.to(saved.device)[clear])
    else:
        assert saved.dtype == dtype and saved.shape == (image.shape[0], SOFT_STATE_PLANES, height, width)
        ref_state = state_reference(*(t.double() for t in (paths, sigmas, amps)), height, width, composite,
                                    TEMPERATURE)
        torch.testing.assert_close(saved.double(), ref_state, atol=atol, rtol=rtol)

    grads = triton_strokes.backward(upstream, paths, sigmas, amps, saved, True, **mode)
    again = triton_strokes.backward(upstream, paths, sigmas, amps, saved, True, **mode)
    assert all(torch.equal(g, h) for g, h in zip(grads, again, strict=True))
    assert_grads_close(grads, ref_grads, dtype)
    atomic = triton_strokes.backward(upstream, paths, sigmas, amps, saved, False, **mode)
    assert_grads_close(atomic, ref_grads, dtype)
    return image, saved, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_polylines_match_reference(device, dtype, composite):
    triton_strokes = kernels(device)
    paths, sigmas, amps = random_strokes(2, 3, 3, composite=composite, dtype=dtype, device=device, seed=3)
    _, _, grads = check_against_reference(triton_strokes, paths, sigmas, amps, composite)
    assert all(bool((g != 0).any()) for g in grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_one_vertex_strokes_match_reference(device, composite):
    """P = 1: each stroke is one segment of a = b, its vertex drawn as a marker; its gradients from
    the segment as a and as b land on the one vertex."""
    triton_strokes = kernels(device)
    paths, sigmas, amps = random_strokes(2, 4, 1, composite=composite, device=device, seed=4)
    _, saved, _ = check_against_reference(triton_strokes, paths, sigmas, amps, composite)
    if composite == "max":
        assert bool(((saved >= 0) & (saved < 4)).all())  # s * max(P - 1, 1) + 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("composite", ["max", "over"])
def test_several_tiles_match_reference(device, composite):
    """8 x 8 tiles over 13 x 21 pixels, short strokes: most segments miss most tiles and are skipped
    there; the deterministic sums run over six tiles."""
    triton_strokes = kernels(device)
    height, width = 13, 21
    paths, sigmas, amps = random_strokes(1, 4, 4, composite=composite, device=device, seed=5, height=height,
                                         width=width)
    paths = paths[..., :1, :] + 0.3 * (paths - paths[..., :1, :])  # each stroke within a few pixels
    check_against_reference(triton_strokes, paths.contiguous(), sigmas, amps, composite, height=height, width=width,
                            config=dict(BLOCK_H=8, BLOCK_W=8, num_warps=1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("composite", ["max", "smoothmax"])
def test_bounded_deterministic_partials(device, composite):
    """A budget of two rows of partials per image: two programs per image each add three of its six
    tiles in turn. Bit-identical run to run, and the gradients of one row per tile, of the atomic sums
    and of the oracle up to rounding."""
    triton_strokes = kernels(device)
    height, width = 13, 21
    paths, sigmas, amps = random_strokes(2, 4, 4, composite=composite, device=device, seed=6, height=height,
                                         width=width)
    mode = dict(composite=composite, temperature=TEMPERATURE, config=dict(BLOCK_H=8, BLOCK_W=8, num_warps=1))
    image, saved = triton_strokes.forward(paths, sigmas, amps, height, width, **mode)
    upstream = upstream_like(image, 7)
    row_bytes = 4 * 3 * 8 * paths.element_size()  # S K sums of 8 gradients
    assert triton_strokes._backward_blocks(True, 2, 6, 4 * 3, paths.element_size(), 2 * 2 * row_bytes) == 2
    bounded = [triton_strokes.backward(upstream, paths, sigmas, amps, saved, True, **mode,
                                       partials_bytes=2 * 2 * row_bytes) for _ in range(2)]
    assert all(torch.equal(g, h) for g, h in zip(*bounded, strict=True))
    per_tile = triton_strokes.backward(upstream, paths, sigmas, amps, saved, True, **mode)
    atomic = triton_strokes.backward(upstream, paths, sigmas, amps, saved, False, **mode)
    _, _, ref_grads = reference(paths, sigmas, amps, height, width, composite, upstream)
    for grads in (per_tile, atomic):
        for bounded_grad, grad in zip(bounded[0], grads, strict=True):
            torch.testing.assert_close(bounded_grad, grad, rtol=1e-10, atol=1e-12)
    assert_grads_close(bounded[0], ref_grads, paths.dtype)
    assert all(bool((g != 0).any()) for g in bounded[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_coincident_vertices_and_strokes_off_the_image(device, composite):
    """Segments with a = b (a whole stroke on one point, and a repeated vertex inside a stroke), a
    stroke far off the image, one beside it, and strokes through pixel centres at amp 1 (v = 1 exactly:
    the soft state's zero factors)."""
    triton_strokes = kernels(device)
    paths = torch.tensor([[
        [[4.3, 3.6], [4.3, 3.6], [4.3, 3.6]],  # one point
        [[1.0, 2.0], [1.0, 2.0], [9.5, 6.0]],  # a repeated vertex, then a segment
        [[-900.0, 40.0], [1e6, -3e5], [-1e6, 7.0]],  # far off the image
        [[-1.5, 5.0], [-2.0, 12.0], [-1.8, 8.0]],  # beside it: a pixel or two reach in
        [[2.0, 4.0], [11.0, 4.0], [11.0, 4.0]],  # through pixel centres
        [[6.0, 0.0], [6.0, 8.0], [6.0, 8.0]],  # crossing the last at (6, 4)
    ]], dtype=torch.float64, device=device)  # fmt: skip
    sigmas = torch.tensor([[[1.2, 1.2, 1.2], [0.8, 1.5, 1.1], [2.0, 1.0, 1.5], [1.0, 0.9, 1.3], [0.7, 0.9, 0.9],
                            [1.1, 0.6, 0.6]]], dtype=torch.float64, device=device)  # fmt: skip
    amps = torch.tensor([[[0.9, 0.9, 0.9], [0.3, 0.6, 0.8], [1.0, 1.0, 1.0], [0.5, 0.7, 0.4], [1.0, 1.0, 1.0],
                          [1.0, 1.0, 1.0]]], dtype=torch.float64, device=device)  # fmt: skip
    _, saved, grads = check_against_reference(triton_strokes, paths, sigmas, amps, composite)
    for grad in grads:
        assert (grad[:, 2] == 0).all()  # the stroke off the image draws nothing and learns nothing
        assert (grad[:, 3] != 0).any()
    if composite in UNIT_AMP_COMPOSITES:
        assert saved[:, 1].max() == 2  # two v = 1 at the crossing


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_flush_at_the_contract_exponent(device, dtype):
    """A segment's value exp(-e) is kept up to e = FLUSH_EXPONENT and 0 past it, whether the pixel
    projects inside the segment or past its end (the box culling loses no kept value), in the forward
    and in the backward's e (d image / d amp)."""
    triton_strokes = kernels(device)
    threshold = FLUSH_EXPONENT[str(dtype).removeprefix("torch.")]
    below, above = (math.sqrt(2 * e) for e in (threshold * (1 - 1e-3), threshold * (1 + 1e-3)))
    # one-pixel images, one segment each (sigma 1, amp 1): beside it at distance sqrt(2 e), then past its end
    paths = torch.tensor([[[[-3.0, below], [3.0, below]]], [[[-3.0, above], [3.0, above]]],
                          [[[-9.0 - below, 0.0], [-below, 0.0]]], [[[-9.0 - above, 0.0], [-above, 0.0]]]],
                         dtype=dtype, device=device)  # fmt: skip
    sigmas = torch.ones(4, 1, 2, dtype=dtype, device=device)
    amps = torch.ones(4, 1, 2, dtype=dtype, device=device)
    image, index = triton_strokes.forward(paths, sigmas, amps, 1, 1)
    _, _, grad_amps = triton_strokes.backward(torch.ones_like(image), paths, sigmas, amps, index, True)
    kept = math.exp(-threshold * (1 - 1e-3))
    assert image.flatten().tolist() == [pytest.approx(kept, rel=1e-3, abs=0), 0.0] * 2
    assert grad_amps.sum(dim=(1, 2)).tolist() == [pytest.approx(kept, rel=1e-3, abs=0), 0.0] * 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_no_strokes(device, composite):
    triton_strokes = kernels(device)
    paths, sigmas, amps = random_strokes(2, 0, 3, device=device)
    image, saved = triton_strokes.forward(paths, sigmas, amps, HEIGHT, WIDTH, composite, TEMPERATURE)
    assert image.shape == (2, HEIGHT, WIDTH) and (image == 0).all()
    if composite == "max":
        assert saved.dtype == torch.int32 and saved.shape == image.shape and (saved == -1).all()
    else:
        assert saved.shape == (2, SOFT_STATE_PLANES, HEIGHT, WIDTH) and (saved == 0).all()
    for deterministic in (False, True):
        grads = triton_strokes.backward(torch.ones_like(image), paths, sigmas, amps, saved, deterministic, composite,
                                        TEMPERATURE)
        assert [g.shape for g in grads] == [paths.shape, sigmas.shape, amps.shape]


FLAWS = {  # id: (tensor, stroke, vertex, bad value, composite, the flaw)
    "paths-nan": (0, 1, 2, math.nan, "max", "means_nonfinite"),
    "sigmas-inf": (1, 0, 0, math.inf, "smoothmax", "sigmas_nonfinite"),
    "sigmas-zero": (1, 2, 1, 0.0, "over", "sigmas_nonpositive"),
    "amps-nan": (2, 1, 1, math.nan, "max", "amps_nonfinite"),
    "amps-above-one": (2, 2, 2, 1.5, "softor", "amps_outside_unit"),
    "amps-negative": (2, 0, 1, -0.1, "over", "amps_outside_unit"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flaw", FLAWS, ids=list(FLAWS))
def test_value_checks_raise_stroke_render_errors(device, flaw):
    """A bad value in the second image is found and raised with stroke_render's message, word for word."""
    triton_strokes = kernels(device)
    which, stroke, vertex, value, composite, name = FLAWS[flaw]
    tensors = list(random_strokes(2, 3, 3, composite=composite, device=device, seed=6))
    tensors[which][1, stroke, vertex] = value
    message = STROKE_FLAW_MESSAGES[FLAW_BIT[name].bit_length() - 1]
    assert message.startswith("stroke_render: ")
    with pytest.raises(ValueError, match=re.escape(message)):
        triton_strokes.forward(*tensors, HEIGHT, WIDTH, composite, TEMPERATURE)


@pytest.mark.parametrize("device", DEVICES)
def test_amps_outside_unit_pass_where_the_composite_allows(device):
    triton_strokes = kernels(device)
    paths, sigmas, amps = random_strokes(1, 2, 2, device=device, seed=7)
    amps[0, 0, 0] = 1.5
    for composite in ("max", "smoothmax"):
        image, _ = triton_strokes.forward(paths, sigmas, amps, HEIGHT, WIDTH, composite, TEMPERATURE)
        assert torch.isfinite(image).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [-1, 6], ids=["negative", "past-the-last-segment"])
def test_backward_rejects_a_bad_winner_map(device, bad):
    triton_strokes = kernels(device)
    paths, sigmas, amps = random_strokes(1, 3, 3, device=device, seed=8)  # S K = 6 segments
    image, index = triton_strokes.forward(paths, sigmas, amps, HEIGHT, WIDTH)
    index[0, 4, 7] = bad
    for deterministic in (False, True):
        with pytest.raises(ValueError, match=re.escape(f"stroke_backward: {BAD_INDEX.format(n_markers=6)}")):
            triton_strokes.backward(torch.ones_like(image), paths, sigmas, amps, index, deterministic)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_checks_the_layout(device):
    triton_strokes = kernels(device)
    paths, sigmas, amps = random_strokes(1, 2, 2, composite="softor", device=device, seed=9)
    image, state = triton_strokes.forward(paths, sigmas, amps, HEIGHT, WIDTH, "softor")
    with pytest.raises(TypeError, match="stroke_backward: the soft state must have the dtype"):
        triton_strokes.backward(image, paths, sigmas, amps, state.float(), False, "softor")
    with pytest.raises(ValueError, match=re.escape("stroke_backward: index must have the shape of grad_image")):
        triton_strokes.backward(image, paths, sigmas, amps, state[:, 0].int().contiguous()[:, :-1], False, "max")
    with pytest.raises(ValueError, match="stroke_render: composite must be one of"):
        triton_strokes.forward(paths, sigmas, amps, HEIGHT, WIDTH, "add")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("composite", ["max", "softor", "smoothmax"])
def test_custom_ops_pass_opcheck(device, composite):
    """splatkern::stroke_forward_triton / stroke_backward_triton: schema, fake tensors, autograd
    registration, AOT dispatch."""
    require(device, "triton")
    forward = torch.ops.splatkern.stroke_forward_triton.default
    backward = torch.ops.splatkern.stroke_backward_triton.default
    paths, sigmas, amps = random_strokes(2, 2, 2, composite=composite, device=device, seed=10, height=5, width=6)
    torch.library.opcheck(forward, (*(t.clone().requires_grad_() for t in (paths, sigmas, amps)), 5, 6, False,
                                    composite, TEMPERATURE))
    image, saved = forward(paths, sigmas, amps, 5, 6, False, composite, TEMPERATURE)
    for deterministic in (False, True):
        torch.library.opcheck(backward, (upstream_like(image, 11), paths, sigmas, amps, saved, deterministic,
                                         composite, TEMPERATURE))


@pytest.mark.parametrize("device", DEVICES)
def test_stroke_render_draws_with_triton(device):
    """The public op on backend "triton": any batch shape, against the reference backend, through
    autograd (eager) and torch.func."""
    require(device, "triton")
    paths, sigmas, amps = random_strokes(3, 2, 3, device=device, seed=12)
    paths, sigmas, amps = (t.reshape(3, 1, *t.shape[1:]) for t in (paths, sigmas, amps))

    def render(p, s, a, backend):
        return splatkern.stroke_render(p, s, a, height=HEIGHT, width=WIDTH, composite="smoothmax",
                                       temperature=TEMPERATURE, backend=backend)

    leaves = [t.clone().requires_grad_() for t in (paths, sigmas, amps)]
    image = render(*leaves, "triton")
    expected = render(*leaves, "reference")
    assert image.shape == (3, 1, HEIGHT, WIDTH)
    torch.testing.assert_close(image, expected, atol=1e-12, rtol=1e-10)
    upstream = upstream_like(image, 13)
    grads = torch.autograd.grad(image, leaves, upstream)
    ref_grads = torch.autograd.grad(expected, leaves, upstream)
    assert_grads_close(grads, ref_grads, torch.float64)

    func_grads = torch.func.grad(lambda p, s, a: (render(p, s, a, "triton") * upstream).sum(), argnums=(0, 1, 2))(
        paths, sigmas, amps)
    assert_grads_close(func_grads, ref_grads, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    """Compiled with fullgraph=True, the public op calls the custom ops: the same image, winners and
    gradients as eager, bit for bit, and the value checks still raise."""
    require(device, "triton")
    paths, sigmas, amps = random_strokes(2, 2, 3, dtype=torch.float32, device=device, seed=14)

    def render(p, s, a):
        return splatkern.stroke_render(p, s, a, height=HEIGHT, width=WIDTH, backend="triton", return_index=True,
                                       deterministic=True)

    leaves = [t.clone().requires_grad_() for t in (paths, sigmas, amps)]
    eager_image, eager_index = render(*leaves)
    upstream = upstream_like(eager_image, 15)
    eager_grads = torch.autograd.grad(eager_image, leaves, upstream)
    compiled_render = torch.compile(render, fullgraph=True)
    image, index = compiled_render(*leaves)
    assert torch.equal(image, eager_image) and torch.equal(index, eager_index)
    grads = torch.autograd.grad(image, leaves, upstream)
    assert all(torch.equal(g, e) for g, e in zip(grads, eager_grads, strict=True))
    message = STROKE_FLAW_MESSAGES[FLAW_BIT["sigmas_nonpositive"].bit_length() - 1]
    with pytest.raises(ValueError, match=re.escape(message)):
        compiled_render(leaves[0], -leaves[1], leaves[2])
