"""stroke_render's CUDA kernels (csrc/stroke_cuda_kernels.cuh), run on the CPU by tests/cuda_emulator.cpp
(built by test_cuda_emulated.py's fixture), against the float64 oracle splatkern/stroke_reference.py: the
image, the max winner map and the soft composites' saved state on every pixel, the gradients of both
backward modes, value and index checks, and a deterministic backward whose bits do not depend on the
order threads run in. The host code (S = 0, layout checks, the raised errors) runs on a GPU only, in
the tests marked gpu at the end.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from splatkern.facts import COMPOSITES, FLAW_BIT, SOFT_STATE_PLANES, STROKE_FLAW_MESSAGES, UNIT_AMP_COMPOSITES
from splatkern.stroke_reference import stroke_render_reference
from splatkern.testing import NEAR_TIE, measure_close
from support import TOLERANCES, measure_grads, random_like_image
from test_cuda_emulated import DTYPE_NAMES, SCHEDULE_SEED, build_emulator, guarded_call
from test_strokes_triton import segment_values, state_reference

MODES = [("max", 1.0), ("softor", 1.0), ("over", 1.0), ("smoothmax", 0.3)]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return build_emulator(tmp_path_factory)


def make_strokes(batch, n_strokes, n_vertices, height, width, *, seed=0, unit_amps=True):
    """Random float64 strokes over the canvas (a margin off it), with each shape's special cases: a
    repeated vertex (a segment with a = b) and a stroke far off the image where there are enough."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([width + 4, height + 4], dtype=torch.float64)
    paths = torch.rand(batch, n_strokes, n_vertices, 2, generator=gen, dtype=torch.float64) * scale - 2
    sigmas = 0.4 + 2 * torch.rand(batch, n_strokes, n_vertices, generator=gen, dtype=torch.float64)
    amps = torch.rand(batch, n_strokes, n_vertices, generator=gen, dtype=torch.float64)
    if not unit_amps:
        amps = 1.4 * amps - 0.2
    if n_vertices >= 3:
        paths[:, 0, 1] = paths[:, 0, 2]  # segment 1 of stroke 0 has a = b
    if n_strokes >= 2:
        paths[:, 1] += torch.tensor([1e6, -3e5], dtype=torch.float64)  # stroke 1 far off
    return paths, sigmas, amps


def stroke_forward(emulator, paths, sigmas, amps, height, width, composite, temperature):
    """The forward kernel on [B, S, P, ...] strokes: (image, index or None, soft state or None, flags)."""
    batch, n_strokes, n_vertices = sigmas.shape
    image = paths.new_empty(batch, height, width)
    index = torch.full((batch, height, width), -7, dtype=torch.int32)
    state = paths.new_zeros(batch, SOFT_STATE_PLANES, height, width)
    flaws = torch.zeros(1, dtype=torch.int32)
    guarded_call(getattr(emulator, f"stroke_forward_{DTYPE_NAMES[paths.dtype]}"), COMPOSITES.index(composite),
                 float(temperature), paths, sigmas, amps, batch, n_strokes, n_vertices, height, width, image, index,
                 state, flaws)
    if composite == "max":
        return image, index, None, flaws
    assert (index == -7).all(), "a soft forward wrote the winner map"
    return image, None, state, flaws


def raise_stroke_flaws(flaws: torch.Tensor) -> None:
    """As raise_marker_flaws(flaws, Primitive::kStrokes): the ValueError of the lowest flaw bit set."""
    if flaws.item():
        raise ValueError(STROKE_FLAW_MESSAGES[(flaws.item() & -flaws.item()).bit_length() - 1])


class _StrokeRender(torch.autograd.Function):
    """The CUDA op pair as stroke_render runs it: the forward kernel, then the backward's two."""

    @staticmethod
    def forward(ctx, emulator, paths, sigmas, amps, height, width, composite, temperature, deterministic,
                partials_bytes):
        image, index, state, flaws = stroke_forward(emulator, paths, sigmas, amps, height, width, composite,
                                                    temperature)
        raise_stroke_flaws(flaws)
        saved = index if composite == "max" else state
        ctx.save_for_backward(paths, sigmas, amps, saved)
        ctx.emulator, ctx.composite, ctx.temperature = emulator, composite, temperature
        ctx.deterministic, ctx.partials_bytes = deterministic, partials_bytes
        return image

    @staticmethod
    def backward(ctx, grad_image):
        paths, sigmas, amps, saved = ctx.saved_tensors
        batch, n_strokes, n_vertices = sigmas.shape
        height, width = grad_image.shape[1:]
        index = saved if ctx.composite == "max" else torch.zeros(1, dtype=torch.int32)
        state = saved if ctx.composite != "max" else paths.new_zeros(1)
        # NaN-filled: the kernels must write every element
        grads = [torch.full_like(t, math.nan) for t in (paths, sigmas, amps)]
        bad_index = torch.zeros(1, dtype=torch.int32)
        guarded_call(getattr(ctx.emulator, f"stroke_backward_{DTYPE_NAMES[paths.dtype]}"), int(ctx.deterministic),
                     ctx.partials_bytes, COMPOSITES.index(ctx.composite), float(ctx.temperature),
                     grad_image.contiguous(), paths, sigmas, amps, index, state, batch, n_strokes, n_vertices, height,
                     width, *grads, bad_index)
        assert bad_index.item() == 0, "the backward kernel flagged a winner map its forward produced"
        return None, *grads, None, None, None, None, None, None


def render(emulator, paths, sigmas, amps, height, width, composite, temperature, deterministic, partials_bytes=0):
    """The image; partials_bytes bounds the deterministic backward's partials (0: the op's bound)."""
    return _StrokeRender.apply(emulator, paths, sigmas, amps, height, width, composite, temperature, deterministic,
                               partials_bytes)


def winner_values(index, paths, sigmas, amps, height, width):
    """[B, H, W] the oracle's value, differentiable, of the segment the winner map names at each pixel."""
    values = segment_values(paths, sigmas, amps, height, width)  # [B, S K, H, W]
    return values.gather(1, index.long()[:, None]).squeeze(1)


def assert_winners_match(index, paths, sigmas, amps, height, width, image, dtype):
    """The winner map equals the oracle's except where the kernel's winner ties the oracle's up to the
    kernels' rounding (dtype): two segments meeting at a shared vertex, or values within NEAR_TIE."""
    _, ref_index = stroke_render_reference(paths, sigmas, amps, height, width)
    differ = index != ref_index
    chosen = winner_values(index, paths, sigmas, amps, height, width)
    torch.testing.assert_close(chosen[differ], image[differ], rtol=NEAR_TIE[dtype], atol=NEAR_TIE[dtype])


# (B, S, P, height, width), each cutting the kernels' blocks somewhere: tiles are 8 rows of 32
# columns; the forward stages 256 segments at a time, the backward sums 32 segments per chunk.
SHAPES = [
    (1, 3, 4, 19, 45),  # 2 x 3 tiles, the last ones cut; degenerate segment, a stroke far off
    (2, 4, 1, 9, 20),  # P = 1: markers
    (2, 1, 2, 8, 32),  # one stroke of one segment, exactly one tile
    (1, 30, 4, 17, 33),  # 90 segments: strokes across the backward's chunks of 32
    (1, 100, 4, 12, 40),  # 300 segments: two forward chunks, a stroke across them
    (3, 5, 6, 1, 7),  # a single row
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-S{}-P{}-{}x{}".format(*s))
@pytest.mark.parametrize("composite, temperature", MODES, ids=lambda m: str(m))
def test_matches_reference(emulator, composite, temperature, shape, dtype, deterministic):
    """Image, winner map or saved state, and the gradients of sum(image * upstream) on every pixel, against
    the float64 oracle on the same (dtype-rounded) inputs, within the dtype's tolerances. Where two
    segments tie up to rounding (a shared vertex) either may win "max": its gradients are then the
    oracle's through the kernel's winner, which must be one of the tied."""
    batch, n_strokes, n_vertices, height, width = shape
    inputs = [t.to(dtype) for t in make_strokes(batch, n_strokes, n_vertices, height, width, seed=n_strokes,
                                                unit_amps=composite in UNIT_AMP_COMPOSITES)]
    upstream = random_like_image((batch, height, width), seed=n_vertices).to(dtype)
    leaves = [t.clone().requires_grad_() for t in inputs]
    image = render(emulator, *leaves, height, width, composite, temperature, deterministic)
    grads = torch.autograd.grad(image, leaves, upstream)
    _, index, state, flaws = stroke_forward(emulator, *inputs, height, width, composite, temperature)
    assert flaws.item() == 0
    ref_leaves = [t.double().requires_grad_() for t in inputs]
    ref_image, _ = stroke_render_reference(*ref_leaves, height, width, composite, temperature)
    ref_drawn = winner_values(index, *ref_leaves, height, width) if composite == "max" else ref_image
    ref_grads = torch.autograd.grad(ref_drawn, ref_leaves, upstream.double())
    measures = [measure_close("image", image, ref_image, *TOLERANCES[dtype][0]),
                *measure_grads(grads, ref_grads, dtype)]
    failed = [m.describe() for m in measures if not m.ok]
    assert not failed, "; ".join(failed)
    assert (ref_image.abs() > 0.1).any() and any((g != 0).any() for g in ref_grads), "nothing drawn"

    rounded = [t.double() for t in inputs]
    if composite == "max":
        assert index.min() >= 0 and index.max() < n_strokes * max(n_vertices - 1, 1)
        assert_winners_match(index, *rounded, height, width, ref_image.detach(), dtype)
    else:
        expected = state_reference(*rounded, height, width, composite, temperature)
        tolerance = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(state.double(), expected, rtol=tolerance, atol=tolerance)


# The deterministic partials of one block per image in the test below: 2 images x S K = 48 segments x
# 11 float32 sums (kStrokeTerms, csrc/stroke_cuda_kernels.cuh).
PARTIALS_ROW_BYTES = 2 * 12 * 4 * 11 * 4


# blocks per image: one per tile (6 tiles, within the op's bound) in every mode; partials bounded to fewer
# rows, each block then taking several tiles in turn (4 blocks: two take 2 tiles, two take 1; or 1 block),
# in two modes (the loop over tiles is the same code in all four).
@pytest.mark.parametrize("composite, temperature, blocks",
                         [(*mode, 6) for mode in MODES] + [("max", 1.0, 4), ("smoothmax", 0.3, 1)],
                         ids=lambda m: str(m))
def test_deterministic_backward_keeps_its_bits_in_any_thread_order(emulator, composite, temperature, blocks):
    """Several tiles and backward chunks per image: the deterministic backward gives the same bits under
    every schedule of the emulator's threads, however many tiles a block takes, and the atomic backward
    agrees with it up to rounding."""
    inputs = [t.float() for t in make_strokes(2, 12, 5, 20, 40, seed=4, unit_amps=composite in UNIT_AMP_COMPOSITES)]
    upstream = random_like_image((2, 20, 40), seed=2).float()
    partials_bytes = 0 if blocks == 6 else blocks * PARTIALS_ROW_BYTES
    grads = {False: [], True: []}
    try:
        for seed in (0, 1):
            emulator.set_schedule_seed(seed)
            for deterministic in (False, True):
                leaves = [t.clone().requires_grad_() for t in inputs]
                image = render(emulator, *leaves, 20, 40, composite, temperature, deterministic, partials_bytes)
                grads[deterministic].append(torch.cat([g.flatten() for g in torch.autograd.grad(image, leaves,
                                                                                                 upstream)]))
    finally:
        emulator.set_schedule_seed(SCHEDULE_SEED)
    assert grads[True][0].abs().max() > 0.1
    assert all(torch.equal(grads[True][0], other) for other in grads[True][1:])
    torch.testing.assert_close(grads[False][0], grads[True][0], rtol=1e-5, atol=1e-5)


def test_ties_go_to_the_lowest_stroke_and_segment(emulator):
    """Exact copies of stroke 0 (one tile, and across the forward's chunk of 256 segments) never win:
    the winner map names stroke 0 wherever it draws; repeated vertices make every segment of a stroke
    tie, and the lowest, k = 0, wins."""
    paths, sigmas, amps = make_strokes(1, 130, 3, 10, 30, seed=9)
    paths[0, 129], sigmas[0, 129], amps[0, 129] = paths[0, 0], sigmas[0, 0], amps[0, 0]  # segments 258, 259
    paths[0, 2], sigmas[0, 2], amps[0, 2] = paths[0, 0], sigmas[0, 0], amps[0, 0]
    paths[0, 0, :] = torch.tensor([12.0, 5.0], dtype=torch.float64)  # every vertex of stroke 0 and its copies
    paths[0, 2], paths[0, 129] = paths[0, 0], paths[0, 0]
    amps[0, 0], amps[0, 2], amps[0, 129] = 1.5, 1.5, 1.5  # the brightest at its centre
    for dtype in (torch.float32, torch.float64):
        image, index, _, _ = stroke_forward(emulator, *(t.to(dtype) for t in (paths, sigmas, amps)), 10, 30, "max", 1.0)
        assert index[0, 5, 12] == 0 and image[0, 5, 12] == 1.5
        assert not ((index == 4) | (index == 5) | (index == 258) | (index == 259)).any()


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("tensor, where, value", [
    ("paths", (2, 100, 3, 1), math.inf), ("paths", (0, 5, 0, 0), math.nan), ("sigmas", (1, 99, 3), 0.0),
    ("sigmas", (2, 0, 0), -1.0), ("sigmas", (0, 130, 2), math.nan), ("amps", (1, 64, 3), math.inf),
    ("amps", (2, 120, 3), 1.5), ("amps", (0, 3, 1), -0.25), ("amps", (1, 7, 2), 1.0),
])
def test_value_checks_see_every_image_vertex_and_chunk(emulator, composite, tensor, where, value):
    """The forward flags a bad value of any image, at any vertex (the last of a stroke too, which only
    its last segment reads), in any chunk of segments; amps outside [0, 1] only for softor and over; 1 is
    inside."""
    inputs = dict(zip(("paths", "sigmas", "amps"), make_strokes(3, 131, 4, 12, 20, seed=5)))
    inputs[tensor][where] = value
    _, _, _, flaws = stroke_forward(emulator, *(t.float() for t in inputs.values()), 12, 20, composite, 0.5)
    if tensor == "paths":
        expected = FLAW_BIT["means_nonfinite"]
    elif tensor == "sigmas":
        # NaN > 0 is false: NaN is both flaws
        expected = FLAW_BIT["sigmas_nonpositive"] | (FLAW_BIT["sigmas_nonfinite"] if math.isnan(value) else 0)
    elif not math.isfinite(value):
        expected = FLAW_BIT["amps_nonfinite"] | (FLAW_BIT["amps_outside_unit"] if composite in UNIT_AMP_COMPOSITES
                                                 else 0)
    else:
        expected = FLAW_BIT["amps_outside_unit"] if not 0 <= value <= 1 and composite in UNIT_AMP_COMPOSITES else 0
    assert flaws.item() == expected
    if expected:
        with pytest.raises(ValueError, match=re.escape(STROKE_FLAW_MESSAGES[(expected & -expected).bit_length() - 1])):
            render(emulator, *(t.float() for t in inputs.values()), 12, 20, composite, 0.5, False)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_backward_flags_a_winner_map_out_of_range(emulator, deterministic):
    paths, sigmas, amps = (t.float() for t in make_strokes(2, 3, 4, 9, 41))
    for bad, flagged in ((-1, 1), (9, 1), (8, 0)):  # S K = 9 segments
        index = torch.zeros(2, 9, 41, dtype=torch.int32)
        index[1, 8, 40] = bad
        grads = [torch.zeros_like(t) for t in (paths, sigmas, amps)]
        flag = torch.zeros(1, dtype=torch.int32)
        guarded_call(emulator.stroke_backward_float, int(deterministic), 0, 0, 1.0, torch.ones(2, 9, 41), paths, sigmas,
                     amps, index, torch.zeros(1), 2, 3, 4, 9, 41, *grads, flag)
        assert flag.item() == flagged
        assert all(torch.isfinite(g).all() for g in grads)


# --- the built op on a GPU -------------------------------------------------------------------------


def cuda_op():
    from splatkern import _extension

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if "CUDA" not in _extension.KERNEL_KEYS:
        pytest.skip("the extension was built without CUDA kernels")
    return torch.ops.splatkern


@pytest.mark.gpu
@pytest.mark.parametrize("composite, temperature", MODES, ids=lambda m: str(m))
def test_gpu_op_matches_reference_and_repeats_its_bits(composite, temperature):
    ops = cuda_op()
    inputs = [t.float() for t in make_strokes(2, 40, 5, 50, 70, seed=3, unit_amps=composite in UNIT_AMP_COMPOSITES)]
    device = [t.cuda() for t in inputs]
    image, saved = ops.stroke_forward(*device, 50, 70, True, composite, temperature)
    ref_image, _ = stroke_render_reference(*(t.double() for t in inputs), 50, 70, composite, temperature)
    atol, rtol = TOLERANCES[torch.float32][0]
    torch.testing.assert_close(image.cpu().double(), ref_image, atol=atol, rtol=rtol)
    upstream = random_like_image((2, 50, 70), device="cuda").float()
    first = ops.stroke_backward(upstream, *device, saved, True, composite, temperature)
    again = ops.stroke_backward(upstream, *device, saved, True, composite, temperature)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    atomic = ops.stroke_backward(upstream, *device, saved, False, composite, temperature)
    for a, b in zip(first, atomic):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("composite", COMPOSITES)
def test_gpu_no_strokes_draw_zeros(composite):
    ops = cuda_op()
    paths, sigmas = torch.zeros(2, 0, 3, 2, device="cuda"), torch.ones(2, 0, 3, device="cuda")
    image, saved = ops.stroke_forward(paths, sigmas, sigmas, 5, 6, False, composite, 1.0)
    assert image.shape == (2, 5, 6) and (image == 0).all()
    if composite == "max":
        assert saved.dtype == torch.int32 and (saved == -1).all()
    else:
        assert saved.shape == (2, SOFT_STATE_PLANES, 5, 6) and (saved == 0).all()
    grads = ops.stroke_backward(torch.ones(2, 5, 6, device="cuda"), paths, sigmas, sigmas, saved, True, composite, 1.0)
    assert [g.shape for g in grads] == [paths.shape, sigmas.shape, sigmas.shape]


@pytest.mark.gpu
def test_gpu_checks_raise_stroke_render_errors():
    ops = cuda_op()
    paths, sigmas, amps = (t.float().cuda() for t in make_strokes(1, 3, 4, 9, 11))
    sigmas[0, 2, 3] = 0
    with pytest.raises(ValueError, match=re.escape(STROKE_FLAW_MESSAGES[2])):
        ops.stroke_forward(paths, sigmas, amps, 9, 11, False, "max", 1.0)
    index = torch.full((1, 9, 11), 9, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=r"outside \[0, 9\)"):
        ops.stroke_backward(torch.ones(1, 9, 11, device="cuda"), paths, sigmas.abs() + 1, amps, index, False, "max",
                            1.0)
