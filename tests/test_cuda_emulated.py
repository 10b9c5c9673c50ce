"""The CUDA kernels themselves (csrc/splat_cuda_kernels.cuh), run on the CPU by tests/cuda_emulator.cpp,
against the contract: values, winners and gradients of both backward modes, the tie rule, the flush
cut-off, the in-kernel value and index checks, and a deterministic backward whose bits do not depend
on the order threads run in; and the same for the soft composites' kernels (softor, over, smoothmax),
whose values, saved per-pixel state and gradients are compared on every pixel with the float64 oracle
(the gradients with its autograd). The emulator runs each block's threads as fibers that meet at every
__syncthreads and warp shuffle, resumed in a seeded random order, so these tests prove the kernels'
indexing, tiling, shared memory, shuffles and atomics where there is no GPU. What they cannot prove
(fast-math exponentials and logarithms, the PTX of keep_greater<float>, timing) the GPU tests and
test_cuda_sass.py cover. The host code around the kernels (allocation, N = 0, layout checks) is tested
on a GPU only.
"""
from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from splatkern.facts import COMPOSITES, FLAW_BIT, FLAW_MESSAGES, SOFT_STATE_PLANES, UNIT_AMP_COMPOSITES
from splatkern.reference import splat_render_reference
from splatkern.testing import SOFT_COMPOSITES, gradcheck, measure_close
from support import (
    TOLERANCES,
    assert_matches_reference,
    check_axis_factors_flush_at_the_contract_exponent,
    check_exact_ties_go_to_the_lowest_index,
    make_markers,
    measure_grads,
    random_like_image,
    soft_markers,
    soft_state_reference,
)

ROOT = Path(__file__).resolve().parents[1]
DTYPE_NAMES = {torch.float32: "float", torch.float64: "double"}
# Threads resume in a seeded random order between barriers, rather than in index order: any order
# is one a GPU may run, and a missing barrier shows in more of them.
SCHEDULE_SEED = 1


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> ctypes.CDLL:
    return build_emulator(tmp_path_factory)


def build_emulator(tmp_path_factory) -> ctypes.CDLL:
    """tests/cuda_emulator.cpp with the kernels' headers, built by the host compiler (a few seconds)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler (c++ or g++ on PATH) to build the CUDA emulator")
    library = tmp_path_factory.mktemp("cuda_emulator") / "cuda_emulator.so"
    build = subprocess.run([compiler, "-std=c++20", "-O2", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
                            "-I", str(ROOT / "csrc"), str(ROOT / "tests" / "cuda_emulator.cpp"), "-o", str(library)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    emulator = ctypes.CDLL(str(library))
    emulator.set_schedule_seed(SCHEDULE_SEED)
    return emulator


def call(function, *args) -> None:
    """Calls an entry point of the emulator: tensors pass as pointers, ints as int64, floats as double."""
    message = ctypes.create_string_buffer(2000)
    converted = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else
                 ctypes.c_double(a) if isinstance(a, float) else ctypes.c_int64(a) for a in args]
    if function(*converted, message, ctypes.c_int(len(message))) != 0:
        raise RuntimeError(f"CUDA emulator: {message.value.decode()}")


# Elements of guard before and after every tensor the kernels see (a multiple of 16 bytes, so the
# kernels' vector loads see the alignment they would on a GPU).
GUARD = 64


class Guarded:
    """A tensor's copy with GUARD elements of `fill` on either side: reading past the tensor then picks
    up `fill` (NaN for floating inputs, so it shows in the results), and writing past it is caught by
    check_untouched."""

    def __init__(self, tensor: torch.Tensor, fill: float):
        self.fill = fill
        self.buffer = torch.full((tensor.numel() + 2 * GUARD,), fill, dtype=tensor.dtype)
        self.tensor = self.buffer[GUARD:GUARD + tensor.numel()].view(tensor.shape)
        self.tensor.copy_(tensor)

    def check_untouched(self) -> None:
        for name, guard in (("before", self.buffer[:GUARD]), ("after", self.buffer[-GUARD:])):
            expected = torch.full_like(guard, self.fill)
            assert torch.equal(guard, expected) or (guard.isnan().all() and expected.isnan().all()), \
                f"a kernel wrote {name} a tensor"


def guarded_call(function, *args) -> None:
    """call() with every tensor argument guarded; tensors come back with what the kernels wrote."""
    guards = [Guarded(a, math.nan if a.is_floating_point() else 0) if isinstance(a, torch.Tensor) else None
              for a in args]
    call(function, *(g.tensor if g else a for g, a in zip(guards, args)))
    for guard, arg in zip(guards, args):
        if guard:
            guard.check_untouched()
            # Only what changed: a copy into an input would bump its version, and autograd refuses
            # a saved input whose version changed (gradcheck runs one graph's backward many times).
            if not torch.equal(arg, guard.tensor):
                arg.copy_(guard.tensor)


class _Render(torch.autograd.Function):
    """The CUDA op pair as splat_render runs it: forward kernel, then the backward kernels."""

    @staticmethod
    def forward(ctx, emulator, means, sigmas, amps, height, width, deterministic):
        batch, n_markers = sigmas.shape
        image = means.new_empty(batch, height, width)
        index = torch.empty(batch, height, width, dtype=torch.int32)
        flaws = torch.zeros(1, dtype=torch.int32)
        name = DTYPE_NAMES[means.dtype]
        guarded_call(getattr(emulator, f"forward_{name}"), means, sigmas, amps, batch, n_markers, height, width, image,
                     index, flaws)
        if flaws.item():
            bit = (flaws.item() & -flaws.item()).bit_length() - 1  # the lowest bit set, as raise_marker_flaws reads it
            raise ValueError(FLAW_MESSAGES[bit])
        ctx.mark_non_differentiable(index)
        ctx.save_for_backward(means, sigmas, amps, index)
        ctx.emulator, ctx.deterministic = emulator, deterministic
        return image, index

    @staticmethod
    def backward(ctx, grad_image, _grad_index):
        means, sigmas, amps, index = ctx.saved_tensors
        grads = [torch.zeros_like(t) for t in (means, sigmas, amps)]
        bad_index = torch.zeros(1, dtype=torch.int32)
        batch, n_markers = sigmas.shape
        height, width = index.shape[1:]
        guarded_call(getattr(ctx.emulator, f"backward_{DTYPE_NAMES[means.dtype]}"), int(ctx.deterministic),
                     grad_image.contiguous(), means, sigmas, amps, index, batch, n_markers, height, width, *grads,
                     bad_index)
        assert bad_index.item() == 0, "the backward kernel flagged a winner map it produced itself"
        return None, *grads, None, None, None


def emulated_cuda(emulator):
    """The emulated CUDA kernels with splat_render's signature (any leading dims, N >= 1 for "max"):
    the soft composites go to emulated_soft's kernels, and have no winner map (None)."""

    def render(means, sigmas, amps, *, height, width, return_index=False, deterministic=False, composite="max",
               temperature=1.0):
        if composite != "max":
            image = emulated_soft(emulator, composite, temperature)(means, sigmas, amps, height=height, width=width,
                                                                    deterministic=deterministic)
            return (image, None) if return_index else image
        batch_shape, n_markers = sigmas.shape[:-1], sigmas.shape[-1]
        flat = (means.reshape(-1, n_markers, 2).contiguous(), sigmas.reshape(-1, n_markers).contiguous(),
                amps.reshape(-1, n_markers).contiguous())
        image, index = _Render.apply(emulator, *flat, height, width, deterministic)
        image, index = image.reshape(*batch_shape, height, width), index.reshape(*batch_shape, height, width)
        return (image, index) if return_index else image

    return render


# (leading dims, N, height, width), each cutting the kernels' blocks somewhere: forward tiles are
# 32 x 32 pixels with 64 markers staged at a time; a backward block takes up to 2048 pixels (8 per
# thread, as many warps as the image needs) and 512 markers per pass, 256 (float) or 128 (double)
# when deterministic.
SHAPES = [
    ((), 7, 9, 41),  # no leading dims; two forward tiles wide, one high; scalar loads (369 pixels)
    ((2, 3), 1, 9, 20),  # one marker
    ((2,), 64, 13, 7),  # exactly one forward marker block
    ((1,), 21, 40, 36),  # 2 x 2 forward tiles
    ((3,), 9, 1, 33),  # a single row, two tiles wide
    ((1,), 150, 9, 41),  # three forward marker blocks, the last one cut; two deterministic passes (double)
    ((1,), 12, 70, 90),  # 3 x 3 forward tiles; 4 backward blocks, the last one cut
    ((1,), 600, 5, 7),  # two atomic marker passes, 3 or 5 deterministic ones
    ((3,), 5, 6, 6),  # 36 pixels: whole 16-byte vectors, the last thread of each image gets 4 of its 8
    ((16,), 64, 28, 28),  # the MNIST size: one forward tile and one backward block of 4 warps per image
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-N{s[1]}-{s[2]}x{s[3]}")
def test_matches_reference(emulator, shape, dtype, deterministic):
    batch_shape, n_markers, height, width = shape
    means, sigmas, amps = make_markers(batch_shape, n_markers, height, width, dtype=dtype, seed=n_markers)
    assert_matches_reference(emulated_cuda(emulator), means, sigmas, amps, height, width, deterministic=deterministic)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_exact_ties_go_to_the_lowest_index(emulator, dtype):
    check_exact_ties_go_to_the_lowest_index(emulated_cuda(emulator), "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_axis_factors_flush_at_the_contract_exponent(emulator, dtype):
    check_axis_factors_flush_at_the_contract_exponent(emulated_cuda(emulator), "cpu", dtype)


@pytest.mark.parametrize("tensor, where, value, bit", [
    ("sigmas", (1, 70), 0.0, 2), ("sigmas", (2, 3), -1.0, 2), ("sigmas", (0, 130), math.nan, 1),
    ("means", (2, 69, 1), math.inf, 0), ("amps", (1, 1), math.nan, 3),
])
def test_value_checks_see_every_image_and_marker_block(emulator, tensor, where, value, bit):
    """The forward kernel flags a bad value of any image, in any block of 64 markers."""
    inputs = dict(zip(("means", "sigmas", "amps"), make_markers((3,), 140, 40, 40, seed=5)))
    inputs[tensor][where] = value
    with pytest.raises(ValueError, match=FLAW_MESSAGES[bit].replace("(", r"\(").replace(")", r"\)")):
        emulated_cuda(emulator)(*inputs.values(), height=40, width=40)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_backward_flags_a_winner_map_out_of_range(emulator, deterministic):
    means, sigmas, amps = make_markers((2,), 5, 9, 41)
    grads = [torch.zeros_like(t) for t in (means, sigmas, amps)]
    for bad in (-1, 5):
        index = torch.zeros(2, 9, 41, dtype=torch.int32)
        index[1, 8, 40] = bad
        flag = torch.zeros(1, dtype=torch.int32)
        guarded_call(emulator.backward_float, int(deterministic), torch.ones(2, 9, 41), means, sigmas, amps, index, 2, 5,
                     9, 41, *grads, flag)
        assert flag.item() == 1


def gradients_per_schedule(emulator, render, markers, upstream) -> dict[bool, list[torch.Tensor]]:
    """For each backward mode (deterministic or not), the flattened gradients of sum(image * upstream)
    under the emulator's schedule seeds 0 (index order), 1 and 2."""
    height, width = upstream.shape[-2:]
    grads = {False: [], True: []}
    try:
        for seed in (0, 1, 2):
            emulator.set_schedule_seed(seed)
            for deterministic in (False, True):
                leaves = [t.clone().requires_grad_() for t in markers]
                image = render(*leaves, height=height, width=width, deterministic=deterministic)
                (image * upstream).sum().backward()
                grads[deterministic].append(torch.cat([leaf.grad.flatten() for leaf in leaves]))
    finally:
        emulator.set_schedule_seed(SCHEDULE_SEED)
    return grads


def test_deterministic_backward_keeps_its_bits_in_any_thread_order(emulator):
    """The emulator can resume threads in a different order per seed, as a GPU may run them: the
    atomic backward's float sums then round differently (which shows the orders differ), the
    deterministic backward's never."""
    grads = gradients_per_schedule(emulator, emulated_cuda(emulator), make_markers((2,), 12, 70, 90, seed=4),
                                   random_like_image((2, 70, 90)).float())
    assert all(torch.equal(grads[True][0], other) for other in grads[True][1:])
    assert not all(torch.equal(grads[False][0], other) for other in grads[False][1:]), \
        "the atomic backward kept its bits too: this case no longer shows that the thread orders differ"
    torch.testing.assert_close(grads[False][0], grads[True][0], rtol=1e-5, atol=1e-5)


# --- the soft composites: softor, over, smoothmax ---------------------------------------------------


def raise_flaws(flaws: torch.Tensor) -> None:
    """As raise_marker_flaws: the ValueError of the lowest flaw bit set."""
    if flaws.item():
        bit = (flaws.item() & -flaws.item()).bit_length() - 1
        raise ValueError(FLAW_MESSAGES[bit])


def soft_forward(emulator, means, sigmas, amps, height, width, composite, temperature):
    """The soft forward kernel on [B, N, ...] markers: (image, the state its backward reads
    [B, SOFT_STATE_PLANES, H, W], flag word)."""
    batch, n_markers = sigmas.shape
    image = means.new_empty(batch, height, width)
    state = means.new_empty(batch, SOFT_STATE_PLANES, height, width)
    flaws = torch.zeros(1, dtype=torch.int32)
    guarded_call(getattr(emulator, f"soft_forward_{DTYPE_NAMES[means.dtype]}"), COMPOSITES.index(composite),
                 float(temperature), means, sigmas, amps, batch, n_markers, height, width, image, state, flaws)
    return image, state, flaws


class _SoftRender(torch.autograd.Function):
    """The CUDA op pair of a soft composite as splat_render runs it: forward kernel, then the backward's,
    which reads the state the forward saved."""

    @staticmethod
    def forward(ctx, emulator, means, sigmas, amps, height, width, composite, temperature, deterministic):
        image, state, flaws = soft_forward(emulator, means, sigmas, amps, height, width, composite, temperature)
        raise_flaws(flaws)
        ctx.mark_non_differentiable(state)
        ctx.save_for_backward(means, sigmas, amps, state)
        ctx.emulator, ctx.composite, ctx.temperature, ctx.deterministic = emulator, composite, temperature, deterministic
        return image, state

    @staticmethod
    def backward(ctx, grad_image, _grad_state):
        means, sigmas, amps, state = ctx.saved_tensors
        grads = [torch.zeros_like(t) for t in (means, sigmas, amps)]
        batch, n_markers = sigmas.shape
        height, width = grad_image.shape[1:]
        guarded_call(getattr(ctx.emulator, f"soft_backward_{DTYPE_NAMES[means.dtype]}"), int(ctx.deterministic),
                     COMPOSITES.index(ctx.composite), float(ctx.temperature), grad_image.contiguous(), means, sigmas,
                     amps, state, batch, n_markers, height, width, *grads)
        return None, *grads, None, None, None, None, None


def emulated_soft(emulator, composite, temperature=1.0):
    """The emulated CUDA kernels of a soft composite with splat_render's signature (any leading dims;
    N = 0 runs the kernels too, which the host code does not)."""

    def render(means, sigmas, amps, *, height, width, deterministic=False):
        batch_shape, n_markers = sigmas.shape[:-1], sigmas.shape[-1]
        batch = math.prod(batch_shape)  # not -1: N may be 0
        flat = (means.reshape(batch, n_markers, 2).contiguous(), sigmas.reshape(batch, n_markers).contiguous(),
                amps.reshape(batch, n_markers).contiguous())
        image, _ = _SoftRender.apply(emulator, *flat, height, width, composite, temperature, deterministic)
        return image.reshape(*batch_shape, height, width)

    return render


def assert_soft_matches_reference(render, composite, temperature, means, sigmas, amps, height, width, *,
                                  deterministic, seed=0):
    """The image and the gradients of sum(image * upstream), every pixel, against autograd of the float64
    oracle on the same (dtype-rounded) inputs, within the dtype's TOLERANCES. Returns image and gradients."""
    dtype = means.dtype
    upstream = random_like_image((*means.shape[:-2], height, width), seed=seed + 1).to(dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (means, sigmas, amps)]
    image = render(*leaves, height=height, width=width, deterministic=deterministic)
    grads = torch.autograd.grad(image, leaves, upstream)
    ref_leaves = [t.detach().double().requires_grad_() for t in (means, sigmas, amps)]
    ref_image, ref_index = splat_render_reference(*ref_leaves, height, width, composite, temperature)
    assert ref_index is None
    ref_grads = (torch.autograd.grad(ref_image, ref_leaves, upstream.double()) if ref_image.requires_grad
                 else [torch.zeros_like(t) for t in ref_leaves])
    assert image.dtype == dtype and all(g.dtype == dtype for g in grads)
    measures = [measure_close("image", image, ref_image, *TOLERANCES[dtype][0]), *measure_grads(grads, ref_grads, dtype)]
    failed = [m.describe() for m in measures if not m.ok]
    assert not failed, "; ".join(failed)
    assert all(torch.isfinite(g).all() for g in grads)
    return image.detach(), grads


# (composite, temperature): smoothmax at a moderate temperature and at the smallest the contract names.
SOFT_MODES = [("softor", 1.0), ("over", 1.0), ("smoothmax", 0.2), ("smoothmax", 1e-3)]
# (leading dims, N, height, width). Soft tiles are the max forward's: 32 rows by 32 columns (64 for
# float wider than 32), 64 markers staged at a time; the backward takes the same tiles.
SOFT_SHAPES = [
    ((), 7, 9, 41),  # no leading dims; one float tile, two double tiles wide
    ((2, 3), 1, 9, 20),  # one marker
    ((2,), 64, 13, 7),  # exactly one marker block; H > W
    ((3,), 0, 9, 41),  # no markers: zeros (the kernels run all the same here)
    ((1,), 300, 9, 41),  # five marker blocks, the last one cut
    ((3,), 9, 1, 33),  # a single row, 33 columns: one column past a 32-wide tile
    ((1,), 21, 40, 36),  # two tiles high, two (double) or one (float) wide
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SOFT_SHAPES, ids=lambda s: f"{s[0]}-N{s[1]}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("composite, temperature", SOFT_MODES, ids=lambda m: str(m))
def test_soft_matches_reference(emulator, composite, temperature, shape, dtype, deterministic):
    batch_shape, n_markers, height, width = shape
    inputs = soft_markers(composite, batch_shape, n_markers, height, width, dtype=dtype, seed=n_markers)
    image, _ = assert_soft_matches_reference(emulated_soft(emulator, composite, temperature), composite, temperature,
                                             *inputs, height, width, deterministic=deterministic)
    if n_markers == 0:
        assert (image == 0).all()


# (N, height, width, (x, y) of the pixel where two markers are 1 exactly, of the one where one is).
STATE_CASES = [
    pytest.param(23, 13, 30, (4, 5), (9, 2), id="one-tile"),  # test_composites.py's case
    pytest.param(70, 40, 70, (66, 35), (40, 20), id="many-tiles"),  # two marker blocks; 2 x 2 float tiles, 2 x 3 double
]


@pytest.mark.parametrize("n_markers, height, width, twice, once", STATE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
def test_soft_forward_saves_the_state_its_backward_reads(emulator, composite, dtype, n_markers, height, width, twice,
                                                          once):
    """The soft forward kernel's second output, the per-pixel state of csrc/splat.cpp, against the float64
    oracle on the same (dtype-rounded) inputs, as test_composites.py compares the built ops': with pixels
    where two and where one marker are 1 exactly (Z = 2, 1) and a marker that reaches one pixel at most."""
    means, sigmas, amps = soft_markers(composite, (2,), n_markers, height, width, dtype=torch.float64, seed=8)
    means[:, :3] = torch.tensor([twice, twice, once], dtype=torch.float64)  # on pixel centres
    amps[:, :3] = 1
    sigmas[:, 3] = 0.05
    inputs = [t.to(dtype) for t in (means, sigmas, amps)]
    expected = soft_state_reference(*(t.double() for t in inputs), height, width, composite, 0.3)
    image, state, flaws = soft_forward(emulator, *inputs, height, width, composite, 0.3)
    assert flaws.item() == 0
    assert state.shape == (2, SOFT_STATE_PLANES, height, width) and state.dtype == dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(state.double(), expected, rtol=tolerance, atol=tolerance)
    if composite == "smoothmax":
        assert torch.equal(state[:, 1], image)
    else:
        (x2, y2), (x1, y1) = twice, once
        assert state[:, 1, y2, x2].tolist() == [2, 2] and state[:, 1, y1, x1].tolist() == [1, 1]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("composite", ["softor", "over"])
def test_soft_value_one_gives_the_exact_finite_gradient(emulator, composite, dtype, deterministic):
    """Markers centred on pixel centres with amp 1 have v = 1 exactly there (a factor 1 - v of 0): one
    such marker at pixel (3, 2), whose derivative is the product of the others' factors; two at (1, 4),
    where every derivative is 0. Nothing may divide by 1 - v = 0."""
    means = torch.tensor([[[2.0, 3.0], [4.0, 1.0], [4.0, 1.0], [3.3, 2.1], [5.0, 4.0], [1.0, 2.0]]])
    sigmas = torch.tensor([[1.0, 0.7, 1.3, 1.1, 0.9, 0.8]])
    amps = torch.tensor([[1.0, 1.0, 1.0, 0.6, 0.999999, 0.0]])
    inputs = [t.to(dtype) for t in (means, sigmas, amps)]
    image, grads = assert_soft_matches_reference(emulated_soft(emulator, composite), composite, 1.0, *inputs, 6, 7,
                                                 deterministic=deterministic)
    assert image[0, 3, 2] == 1 and image[0, 1, 4] == 1


@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_soft_axis_factors_flush_at_the_contract_exponent(emulator, composite, dtype):
    """With one marker every soft composite is v itself (and d image / d amp is e): the flush rule of
    the max kernels holds in the soft ones, forward and backward."""
    check_axis_factors_flush_at_the_contract_exponent(emulated_soft(emulator, composite, 0.5), "cpu", dtype)


@pytest.mark.parametrize("composite", SOFT_COMPOSITES)
@pytest.mark.parametrize("where, value", [((2, 70), 1.5), ((0, 3), -0.25), ((1, 130), math.nan), ((2, 0), 1.0),
                                          ((1, 64), 0.0)])
def test_soft_value_checks_flag_amps_outside_the_unit_interval(emulator, composite, where, value):
    """The soft forward checks every image's markers in every marker block: amps outside [0, 1] are a
    flaw of softor and over only; NaN is kAmpsNonfinite alone; 0 and 1 are inside."""
    means, sigmas, amps = make_markers((3,), 140, 40, 40, seed=5)
    amps = amps.clamp(0, 1)
    amps[where] = value
    _, _, flaws = soft_forward(emulator, means, sigmas, amps, 40, 40, composite, 0.5)
    if math.isnan(value):
        expected = FLAW_BIT["amps_nonfinite"]
    elif not 0 <= value <= 1 and composite in UNIT_AMP_COMPOSITES:
        expected = FLAW_BIT["amps_outside_unit"]
    else:
        expected = 0
    assert flaws.item() == expected
    if expected:
        with pytest.raises(ValueError, match=re.escape(FLAW_MESSAGES[expected.bit_length() - 1])):
            emulated_soft(emulator, composite, 0.5)(means, sigmas, amps, height=40, width=40)


@pytest.mark.parametrize("composite, temperature", SOFT_MODES[1:3], ids=lambda m: str(m))
def test_soft_deterministic_backward_keeps_its_bits_in_any_thread_order(emulator, composite, temperature):
    """Six tiles per image, more than one marker block: the deterministic backward's bits are the same
    whatever order the threads run in, and the atomic backward agrees with it up to rounding."""
    grads = gradients_per_schedule(emulator, emulated_soft(emulator, composite, temperature),
                                   soft_markers(composite, (2,), 70, 70, 90, dtype=torch.float32, seed=4),
                                   random_like_image((2, 70, 90)).float())
    assert all(torch.equal(grads[True][0], other) for other in grads[True][1:])
    torch.testing.assert_close(grads[False][0], grads[True][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("composite", COMPOSITES)
def test_gradcheck_float64(emulator, composite, deterministic):
    """torch.autograd.gradcheck of the emulated kernels in float64, every mode (splatkern.testing's inputs:
    well-separated markers for max, overlapping ones for the soft modes)."""
    measure = gradcheck(emulated_cuda(emulator), "cpu", deterministic=deterministic, composite=composite)
    assert measure.ok, measure.note
