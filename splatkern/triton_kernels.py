"""Triton kernels of splat_render (the math: splatkern/reference.py; the op wrapping: splatkern/ops.py).

``forward`` and ``backward`` launch them on CUDA tensors, or on CPU tensors under the Triton
interpreter (``TRITON_INTERPRET=1``, set before triton is imported), which is how they are tested
without a GPU. They take the flattened float32/float64 tensors of the op's schema.

Forward: one program per (batch item, tile of pixels). It walks the markers one at a time; per
marker it computes the tile's column factors ``amp * g(dx)`` and row factors ``g(dy)`` (the
separability of the isotropic Gaussian), forms every pixel-marker value with one multiply, and keeps
a running max and int32 winner per pixel in registers; a strict ``>`` over markers in increasing
order gives ties to the lowest index. Axis factors whose exponent exceeds ``-0.5 * log(smallest
normal)`` (splatkern/facts.py) are flushed to zero, as in the C++ kernels. The tile is a 4-D block ``[ROW_REPEATS,
COL_REPEATS, ROW_SPAN, COL_SPAN]``: Triton's default layout spreads lanes and warps over the last two
dims and leaves the first two in each thread's registers, so a thread holds a 2-D patch of pixels
whose ROW_REPEATS + COL_REPEATS exponentials serve ROW_REPEATS x COL_REPEATS products (a flat 2-D
tile gives each thread a single column, and then more exponentials than pixels). Each thread
computes its own patch's factors: Triton gives no control over sharing them through shared memory, as
the CUDA kernel does, which is why this forward needs more instructions per pair than that one.

Backward: one program per (batch item, run of BLOCK_PIX pixels). The program sorts its pixels by
winner (``tl.sort`` of the key ``winner * BLOCK_PIX + slot``), so each marker's pixels form one
contiguous run; a segmented ``tl.associative_scan`` sums each pixel's four gradient terms within its
run, and the run's last slot, holding the marker's total over the tile, either adds it with one atomic
per won marker per program or, with ``deterministic=True``, writes it to a per-(program, marker) buffer
that a second kernel sums over the runs in a fixed order (bit-identical run to run). The scan's
combine is associative only because equal winners are contiguous after the sort. The work is
O(pixels x log^2 pixels) per program whatever N is. Sums are kept in the inputs' dtype (float32 or
float64).

The kernels above are the ``"max"`` composite's. The soft composites (``"softor"``, ``"over"``,
``"smoothmax"``; the math of their derivatives is csrc/splat_cpu_soft.cpp's, stated there) have two
more, each taking the mode as a constexpr, on the max forward's 4-D tiles and with its values to the
bit (``v = g(dy) * (amp * g(dx))``, flushed the same way):

* Soft forward: one program per (batch item, tile); per-pixel state in registers over a loop over the
  markers, written out beside the image as the state its backward reads (``[B, 2, H, W]``, its planes
  stated in csrc/splat.cpp): softor and over keep ``Q``, the product of the nonzero factors ``1 - v``,
  and ``Z``, the count of zero ones, whose ``T = Q if Z = 0 else 0`` is the running ``prod (1 - v)``
  to the bit; softor draws ``1 - T``, over ``acc += v * T`` before each factor, as the contract writes
  it. smoothmax takes two loops, the max ``M`` of all N values (a flushed value is 0 and counts), then
  ``sum w`` and ``sum w v`` with ``w = exp((v - M) / t)``, flushed to 0 where that exponent exceeds the
  flush exponent (as the C++ kernels do), so every temperature stays finite; it saves
  ``L = M + t log sum w`` and the image. ``1 / t`` is read from a one-element tensor of the markers'
  dtype: Triton passes a Python float as float32.
* Soft backward: one program per (batch item, tile). It reads the tile's state (one pass over the
  markers, not the forward's one or two more), then, marker by marker, each pixel's
  ``h = g * (d out / d v) * e`` (``e`` the bare Gaussian; ``d out / d v`` from ``Q`` and ``Z``, or
  smoothmax's ``w = exp((v - L) / t)`` and the image) and the four
  sums ``sum h``, ``sum h dx``, ``sum h dy``, ``sum h (dx^2 + dy^2)`` over the tile (``tl.sum``),
  scaled by the marker's ``amp / s^2`` (``amp / s^3``) and added with four atomics per marker per
  program, or, with ``deterministic=True``, written to a ``[B, tiles, 4, N]`` buffer (every entry
  written) that ``_sum_partials_kernel`` sums in tile order. No memory beyond that buffer: O(N) per
  tile, never ``[B, N, H, W]``. The work is O(pixels x N) per program for both (every marker touches
  every pixel; there is no support skipping).

Block sizes: a fixed table (``_forward_config`` and the two below it) rather than autotuning, so
launches stay cheap and reproducible and run under the interpreter, where multi-config autotune
fails. The table holds the fastest of bench/triton_sweep.py's candidates at the GPU benchmark's two
sizes (B=1024, N=64, 28x28 and B=256, N=256, 128x128; timings in docs/performance.md): of its
forward tiles, those taking one marker at a time. ``p2(x)`` is the next power of two; every block
fits in the registers ptxas gives it for sm_80 and sm_90, float32 and float64, with no spills
(tests/test_triton_compile.py checks that):

    ============  ==========================================  ========================================
    kernel        block                                       why
    ============  ==========================================  ========================================
    forward       num_warps = 1, its lanes as 4 rows x 8      28 x 28 is one 32 x 32 tile of 8 x 4
                  columns                                     pixels per thread; 128 x 128 tiles of
                  ROW_REPEATS = min(p2(cdiv(H, 4)), 8)        32 x 64, 8 x 8 per thread: 16 exps for
                  COL_REPEATS = min(p2(cdiv(W, 8)), 8)        64 products (8 x 8 doubles spill)
                  (float64: at most 4)
    backward      BLOCK_PIX = min(p2(H * W), 256)             8 pixels per thread: the sort's stages
                  num_warps = 1                               stay in a warp (more warps or more
                                                              pixels per program are slower)
    sum partials  BLOCK_N = min(p2(N), 256), num_warps = 4    coalesced rows of the partials buffer
    soft forward  num_warps = 1, lanes 4 rows x 8 columns     the largest patches whose state (Q, Z;
                  ROW_REPEATS = min(p2(cdiv(H, 4)), R)        acc, Q, Z; M, sum w, sum w v, then the
                  COL_REPEATS = min(p2(cdiv(W, 8)), C)        inlined log of L) leaves ptxas room: at
                  R x C: softor 8 x 4 (float64 4 x 4),        most ~170 registers (the next larger
                  over 4 x 4 (4 x 4), smoothmax 4 x 4 (4 x 2) reach 200-255 or spill)
    soft          as the soft forward, R x C: 4 x 4           g and the saved state (Q, Z; L, out)
    backward      (float64 4 x 2) in every mode               per pixel, and per marker e, v,
                                                              d out / d v, h: at most ~165 registers
    ============  ==========================================  ========================================

The soft blocks are chosen by register use alone (no GPU timing yet: bench/triton_sweep.py
``--composite`` times their candidates).

Value checks ride along: the first tile of each image ORs its markers' flaw bits (non-finite means,
sigmas or amps, sigmas <= 0, and for softor and over amps outside [0, 1]; splatkern/facts.py
``FLAW_BIT``) into a one-word buffer, and the max backward flags winner-map values outside [0, N) (and
skips them; the soft backward trusts the state its forward made and checks nothing); the launchers read the word back, one host
sync per call, and raise (splatkern/checks.py) - except while a CUDA graph is being captured, where a
sync is illegal and the check is skipped.

Offsets that span the batch (``b * H * W``, ``b * N``, the soft state, the partials buffer) are int64; offsets
within one image are int32, so an image may have at most 2^31 - 1 pixels (checked).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from splatkern.checks import (
    check_backward_layout,
    check_canvas,
    check_composite,
    check_markers,
    raise_bad_index,
    raise_marker_flaws,
)
from splatkern.facts import COMPOSITES, FLAW_BIT, FLUSH_EXPONENT, SOFT_STATE_PLANES

# Kinds of per-marker partial sums: d/d amp, d/d mx, d/d my, d/d sigma.
_PARTIALS = tl.constexpr(4)
# Markers whose values the forward's value check reads at once.
_FLAW_BLOCK = tl.constexpr(128)
_MEANS_NONFINITE = tl.constexpr(FLAW_BIT["means_nonfinite"])
_SIGMAS_NONFINITE = tl.constexpr(FLAW_BIT["sigmas_nonfinite"])
_SIGMAS_NONPOSITIVE = tl.constexpr(FLAW_BIT["sigmas_nonpositive"])
_AMPS_NONFINITE = tl.constexpr(FLAW_BIT["amps_nonfinite"])
_AMPS_OUTSIDE_UNIT = tl.constexpr(FLAW_BIT["amps_outside_unit"])
# The soft composites' indices in facts.COMPOSITES, as the soft kernels' COMPOSITE takes them.
_SOFTOR = tl.constexpr(COMPOSITES.index("softor"))
_OVER = tl.constexpr(COMPOSITES.index("over"))
_SMOOTHMAX = tl.constexpr(COMPOSITES.index("smoothmax"))
_STATE_PLANES = tl.constexpr(SOFT_STATE_PLANES)


def _flush_exponent(dtype: torch.dtype) -> float:
    """The per-axis exponent above which a factor is flushed to zero (splatkern/facts.py)."""
    return FLUSH_EXPONENT[str(dtype).removeprefix("torch.")]


@triton.jit
def _finite(x):
    return tl.abs(x) < float("inf")  # False for NaN and +-inf


@triton.jit
def _report_flaws(mx, my, sigma, amp, live, flaws_ptr):
    """ORs into *flaws_ptr the flaw bits (splatkern/facts.py) of a block of markers' values."""
    means_bad = tl.max((live & ~(_finite(mx) & _finite(my))).to(tl.int32))
    sigmas_nonfinite = tl.max((live & ~_finite(sigma)).to(tl.int32))
    sigmas_nonpositive = tl.max((live & ~(sigma > 0)).to(tl.int32))
    amps_bad = tl.max((live & ~_finite(amp)).to(tl.int32))
    found = (
        means_bad * _MEANS_NONFINITE
        | sigmas_nonfinite * _SIGMAS_NONFINITE
        | sigmas_nonpositive * _SIGMAS_NONPOSITIVE
        | amps_bad * _AMPS_NONFINITE
    )
    tl.atomic_or(flaws_ptr, found, mask=found != 0)


@triton.jit
def _check_values(points_ptr, sigmas_ptr, amps_ptr, base, count, UNIT_AMPS: tl.constexpr, flaws_ptr):
    """ORs into *flaws_ptr the flaw bits of primitives [base, base + count): points (x, y), sigmas and
    amps, one per primitive (a marker, or a stroke's vertex); with UNIT_AMPS (the coverages of softor
    and over) amps outside [0, 1] too."""
    for n0 in range(0, count, _FLAW_BLOCK):
        n = base + n0 + tl.arange(0, _FLAW_BLOCK)
        live = n0 + tl.arange(0, _FLAW_BLOCK) < count
        amp = tl.load(amps_ptr + n, mask=live, other=0.0)
        _report_flaws(
            tl.load(points_ptr + 2 * n, mask=live, other=0.0),
            tl.load(points_ptr + 2 * n + 1, mask=live, other=0.0),
            tl.load(sigmas_ptr + n, mask=live, other=1.0),
            amp, live, flaws_ptr,
        )  # fmt: skip
        if UNIT_AMPS:  # NaN is amps_nonfinite's
            outside = tl.max((live & ((amp < 0) | (amp > 1))).to(tl.int32))
            tl.atomic_or(flaws_ptr, outside * _AMPS_OUTSIDE_UNIT, mask=outside != 0)


@triton.jit
def _exp_neg(x):
    """exp(-x) for a kept (unflushed) exponent x, whose result is a normal number.

    float32: as exp2 of x * -log2(e), the multiply and MUFU.EX2 that tl.exp lowers to, without the
    instructions tl.exp adds for results below the smallest normal, which a kept exponent never
    gives: the same bits in fewer instructions per factor. float64: tl.exp, because rounding
    x * log2(e) would cost up to about x ulps.
    """
    if x.dtype == tl.float32:
        return tl.exp2(x * -1.4426950408889634)
    return tl.exp(-x)


@triton.jit
def _axis_factor(offset, inv_2s2, flush):
    exponent = offset * offset * inv_2s2
    return tl.where(exponent > flush, 0.0, _exp_neg(exponent))


@triton.jit
def _forward_kernel(
    means_ptr,
    sigmas_ptr,
    amps_ptr,
    image_ptr,
    index_ptr,
    flaws_ptr,
    n_markers,
    height,
    width,
    tiles_across,
    tiles_per_image,
    FLUSH: tl.constexpr,
    ROW_REPEATS: tl.constexpr,
    COL_REPEATS: tl.constexpr,
    ROW_SPAN: tl.constexpr,
    COL_SPAN: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // tiles_per_image).to(tl.int64)
    tile = pid % tiles_per_image
    # The tile is a [ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN] block: lanes and warps cover
    # ROW_SPAN x COL_SPAN pixels, and each thread holds ROW_REPEATS rows x COL_REPEATS columns, so
    # its factors cost rows + columns exponentials for rows x columns pixels.
    rows = (
        (tile // tiles_across) * (ROW_REPEATS * ROW_SPAN)
        + tl.arange(0, ROW_REPEATS)[:, None, None, None] * ROW_SPAN
        + tl.arange(0, ROW_SPAN)[None, None, :, None]
    )  # [R, 1, RS, 1]
    cols = (
        (tile % tiles_across) * (COL_REPEATS * COL_SPAN)
        + tl.arange(0, COL_REPEATS)[None, :, None, None] * COL_SPAN
        + tl.arange(0, COL_SPAN)[None, None, None, :]
    )  # [1, C, 1, CS]
    dtype = means_ptr.dtype.element_ty
    flush = tl.full([], FLUSH, dtype)
    marker_base = b * n_markers

    if tile == 0:  # every tile reads every marker of its image: one per image checks them
        _check_values(means_ptr, sigmas_ptr, amps_ptr, marker_base, n_markers, False, flaws_ptr)

    y, x = rows.to(dtype), cols.to(dtype)
    best = tl.full([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], float("-inf"), dtype)
    winner = tl.zeros([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], tl.int32)
    for n in range(0, n_markers):
        mx = tl.load(means_ptr + 2 * (marker_base + n))
        my = tl.load(means_ptr + 2 * (marker_base + n) + 1)
        sigma = tl.load(sigmas_ptr + marker_base + n)
        amp = tl.load(amps_ptr + marker_base + n)
        inv_2s2 = 0.5 / (sigma * sigma)
        col_factors = amp * _axis_factor(x - mx, inv_2s2, flush)  # [1, C, 1, CS]
        values = _axis_factor(y - my, inv_2s2, flush) * col_factors  # [R, C, RS, CS]: one multiply per pixel
        take = values > best  # strict, over markers in increasing order: the lowest index wins ties
        best = tl.where(take, values, best)
        winner = tl.where(take, n, winner)

    offsets = b * height * width + rows * width + cols
    inside = (rows < height) & (cols < width)
    tl.store(image_ptr + offsets, best, mask=inside)
    tl.store(index_ptr + offsets, winner, mask=inside)


@triton.jit
def _add_if_same_marker(marker_a, amp_a, mx_a, my_a, sigma_a, marker_b, amp_b, mx_b, my_b, sigma_b):
    """Segmented sum: b's terms plus a's where both belong to one marker. Associative over a sequence
    sorted by marker, where equal markers are contiguous."""
    same = marker_a == marker_b
    return (
        marker_b,
        amp_b + tl.where(same, amp_a, 0.0),
        mx_b + tl.where(same, mx_a, 0.0),
        my_b + tl.where(same, my_a, 0.0),
        sigma_b + tl.where(same, sigma_a, 0.0),
    )


@triton.jit
def _backward_kernel(
    grad_image_ptr,
    means_ptr,
    sigmas_ptr,
    amps_ptr,
    index_ptr,
    grad_means_ptr,
    grad_sigmas_ptr,
    grad_amps_ptr,
    partials_ptr,
    bad_index_ptr,
    n_markers,
    height,
    width,
    tiles_per_image,
    FLUSH: tl.constexpr,
    BLOCK_PIX: tl.constexpr,
    WIDE_KEYS: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // tiles_per_image).to(tl.int64)
    tile = pid % tiles_per_image
    slot = tl.arange(0, BLOCK_PIX)
    pixel = tile * BLOCK_PIX + slot
    inside = pixel < height * width
    pixel_base = b * height * width
    marker_base = b * n_markers
    dtype = means_ptr.dtype.element_ty

    n = tl.load(index_ptr + pixel_base + pixel, mask=inside, other=-1)
    # Markers are gathered by the winner map: a value outside [0, N) is flagged (the launcher
    # raises) and skipped rather than read out of bounds.
    bad = inside & ((n < 0) | (n >= n_markers))
    any_bad = tl.max(bad.to(tl.int32))
    tl.atomic_or(bad_index_ptr, any_bad, mask=any_bad != 0)
    # The tile's pixels sorted by winner (skipped ones last, as marker N), so that each marker's
    # pixels are one contiguous run. The key is (winner, slot) packed in an int32 where
    # (N + 1) * BLOCK_PIX fits, else in an int64 (a slower sort).
    n = tl.where(inside & ~bad, n, n_markers)
    if WIDE_KEYS:
        keys = n.to(tl.int64) * BLOCK_PIX + slot
    else:
        keys = n * BLOCK_PIX + slot
    order = tl.sort(keys)
    n = (order // BLOCK_PIX).to(tl.int32)
    pixel = tile * BLOCK_PIX + (order % BLOCK_PIX).to(tl.int32)
    live = n < n_markers

    g = tl.load(grad_image_ptr + pixel_base + pixel, mask=live, other=0.0)
    mx = tl.load(means_ptr + 2 * (marker_base + n), mask=live, other=0.0)
    my = tl.load(means_ptr + 2 * (marker_base + n) + 1, mask=live, other=0.0)
    sigma = tl.load(sigmas_ptr + marker_base + n, mask=live, other=1.0)
    amp = tl.load(amps_ptr + marker_base + n, mask=live, other=0.0)

    dx = (pixel % width).to(dtype) - mx
    dy = (pixel // width).to(dtype) - my
    inv_2s2 = 0.5 / (sigma * sigma)  # as the forward has it; the one division per pixel
    inv_s2 = 2 * inv_2s2
    ex = dx * dx * inv_2s2
    ey = dy * dy * inv_2s2
    # The forward's product of axis factors, flushed the same way.
    e = tl.where(tl.maximum(ex, ey) > tl.full([], FLUSH, dtype), 0.0, _exp_neg(ex + ey))
    g_e = g * e
    g_v_s2 = g_e * amp * inv_s2

    # Running sums within each marker's run; a run's last slot holds the marker's total over the
    # tile, and only it is written: one atomic (or one partials store) per marker per program.
    _, sum_amp, sum_mx, sum_my, sum_sigma = tl.associative_scan(
        (n, g_e, g_v_s2 * dx, g_v_s2 * dy, g_v_s2 * (dx * dx + dy * dy) * inv_s2 * sigma), 0, _add_if_same_marker
    )
    next_n = tl.gather(n, tl.minimum(slot + 1, BLOCK_PIX - 1), 0)
    last = live & ((next_n != n) | (slot == BLOCK_PIX - 1))
    marker = marker_base + n
    if DETERMINISTIC:
        # Per-(tile, marker) totals (the buffer starts at zero), summed in tile order afterwards.
        tile_partials = ((b * tiles_per_image + tile) * _PARTIALS) * n_markers
        tl.store(partials_ptr + tile_partials + n, sum_amp, mask=last)
        tl.store(partials_ptr + tile_partials + n_markers + n, sum_mx, mask=last)
        tl.store(partials_ptr + tile_partials + 2 * n_markers + n, sum_my, mask=last)
        tl.store(partials_ptr + tile_partials + 3 * n_markers + n, sum_sigma, mask=last)
    else:
        # Plain sums, read only after the kernel: no ordering needed.
        tl.atomic_add(grad_amps_ptr + marker, sum_amp, mask=last, sem="relaxed")
        tl.atomic_add(grad_means_ptr + 2 * marker, sum_mx, mask=last, sem="relaxed")
        tl.atomic_add(grad_means_ptr + 2 * marker + 1, sum_my, mask=last, sem="relaxed")
        tl.atomic_add(grad_sigmas_ptr + marker, sum_sigma, mask=last, sem="relaxed")


@triton.jit
def _sum_partials_kernel(
    partials_ptr,
    grad_means_ptr,
    grad_sigmas_ptr,
    grad_amps_ptr,
    n_markers,
    tiles_per_image,
    blocks_per_image,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // blocks_per_image).to(tl.int64)
    marker = (pid % blocks_per_image) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = marker < n_markers
    dtype = partials_ptr.dtype.element_ty
    sum_amp = tl.zeros([BLOCK_N], dtype)
    sum_mx = tl.zeros([BLOCK_N], dtype)
    sum_my = tl.zeros([BLOCK_N], dtype)
    sum_sigma = tl.zeros([BLOCK_N], dtype)
    for tile in range(tiles_per_image):  # a fixed order: the same bits every run
        tile_partials = ((b * tiles_per_image + tile) * _PARTIALS) * n_markers
        sum_amp += tl.load(partials_ptr + tile_partials + marker, mask=live, other=0.0)
        sum_mx += tl.load(partials_ptr + tile_partials + n_markers + marker, mask=live, other=0.0)
        sum_my += tl.load(partials_ptr + tile_partials + 2 * n_markers + marker, mask=live, other=0.0)
        sum_sigma += tl.load(partials_ptr + tile_partials + 3 * n_markers + marker, mask=live, other=0.0)
    marker_base = b * n_markers
    tl.store(grad_amps_ptr + marker_base + marker, sum_amp, mask=live)
    tl.store(grad_means_ptr + 2 * (marker_base + marker), sum_mx, mask=live)
    tl.store(grad_means_ptr + 2 * (marker_base + marker) + 1, sum_my, mask=live)
    tl.store(grad_sigmas_ptr + marker_base + marker, sum_sigma, mask=live)


# --- the soft composites (softor, over, smoothmax) ---------------------------------------------------


@triton.jit
def _tile_pixels(tile, tiles_across, ROW_REPEATS: tl.constexpr, COL_REPEATS: tl.constexpr, ROW_SPAN: tl.constexpr,
                 COL_SPAN: tl.constexpr):
    """The rows [R, 1, RS, 1] and columns [1, C, 1, CS] of a 4-D tile, laid out as the max forward's."""
    rows = (
        (tile // tiles_across) * (ROW_REPEATS * ROW_SPAN)
        + tl.arange(0, ROW_REPEATS)[:, None, None, None] * ROW_SPAN
        + tl.arange(0, ROW_SPAN)[None, None, :, None]
    )
    cols = (
        (tile % tiles_across) * (COL_REPEATS * COL_SPAN)
        + tl.arange(0, COL_REPEATS)[None, :, None, None] * COL_SPAN
        + tl.arange(0, COL_SPAN)[None, None, None, :]
    )
    return rows, cols


@triton.jit
def _load_marker(means_ptr, sigmas_ptr, amps_ptr, marker):
    mx = tl.load(means_ptr + 2 * marker)
    my = tl.load(means_ptr + 2 * marker + 1)
    sigma = tl.load(sigmas_ptr + marker)
    amp = tl.load(amps_ptr + marker)
    return mx, my, sigma, amp


@triton.jit
def _marker_factors(x, y, mx, my, sigma, amp, flush):
    """A marker's flushed row factors g(dy) [R, 1, RS, 1] and amp-scaled column factors amp * g(dx)
    [1, C, 1, CS]: their product is its value v at every pixel of the tile, to the bit the max
    forward's."""
    inv_2s2 = 0.5 / (sigma * sigma)
    return _axis_factor(y - my, inv_2s2, flush), amp * _axis_factor(x - mx, inv_2s2, flush)


@triton.jit
def _smoothmax_weight(top, value, inv_t, flush):
    """exp((v - top) / t) for v <= top: the forward's weights against the max M (M's own is 1), the
    backward's normalised ones against L. Flushed to 0 where the exponent exceeds the flush exponent
    (a weight below sqrt(smallest normal)), as the C++ kernels do."""
    exponent = (top - value) * inv_t
    return tl.where(exponent > flush, 0.0, _exp_neg(exponent))


@triton.jit
def _soft_forward_kernel(
    means_ptr,
    sigmas_ptr,
    amps_ptr,
    inv_t_ptr,
    image_ptr,
    state_ptr,
    flaws_ptr,
    n_markers,
    height,
    width,
    tiles_across,
    tiles_per_image,
    FLUSH: tl.constexpr,
    COMPOSITE: tl.constexpr,
    ROW_REPEATS: tl.constexpr,
    COL_REPEATS: tl.constexpr,
    ROW_SPAN: tl.constexpr,
    COL_SPAN: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // tiles_per_image).to(tl.int64)
    tile = pid % tiles_per_image
    rows, cols = _tile_pixels(tile, tiles_across, ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN)
    dtype = means_ptr.dtype.element_ty
    flush = tl.full([], FLUSH, dtype)
    marker_base = b * n_markers

    if tile == 0:  # as the max forward: one tile per image checks its markers
        _check_values(means_ptr, sigmas_ptr, amps_ptr, marker_base, n_markers, COMPOSITE != _SMOOTHMAX, flaws_ptr)

    y, x = rows.to(dtype), cols.to(dtype)
    if COMPOSITE == _SMOOTHMAX:
        # Two loops: the max M of all N values (a flushed value is 0 and counts), then sum w and
        # sum w v with w = exp((v - M) / t).
        inv_t = tl.load(inv_t_ptr)
        max_value = tl.full([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], float("-inf"), dtype)
        for n in range(0, n_markers):
            mx, my, sigma, amp = _load_marker(means_ptr, sigmas_ptr, amps_ptr, marker_base + n)
            row_factors, col_factors = _marker_factors(x, y, mx, my, sigma, amp, flush)
            max_value = tl.maximum(max_value, row_factors * col_factors)
        weights = tl.zeros([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], dtype)
        weighted = tl.zeros([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], dtype)
        for n in range(0, n_markers):
            mx, my, sigma, amp = _load_marker(means_ptr, sigmas_ptr, amps_ptr, marker_base + n)
            row_factors, col_factors = _marker_factors(x, y, mx, my, sigma, amp, flush)
            values = row_factors * col_factors
            w = _smoothmax_weight(max_value, values, inv_t, flush)
            weights += w
            weighted += w * values
        out = weighted / weights
        # L = M + t log sum w: sum w >= 1 (M's own weight), so L >= M >= every v, as the backward's
        # weights exp((v - L) / t) need.
        plane_0, plane_1 = max_value + tl.log(weights) / inv_t, out
    else:  # softor and over: Q, the product of the nonzero factors 1 - v, and Z, the count of zero ones
        product = tl.full([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], 1.0, dtype)
        zeros = tl.zeros([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], tl.int32)
        if COMPOSITE == _OVER:
            out = tl.zeros([ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN], dtype)
        for n in range(0, n_markers):
            mx, my, sigma, amp = _load_marker(means_ptr, sigmas_ptr, amps_ptr, marker_base + n)
            row_factors, col_factors = _marker_factors(x, y, mx, my, sigma, amp, flush)
            values = row_factors * col_factors
            factor = 1.0 - values
            # The transmittance T = prod (1 - v) so far is Q while Z = 0 and 0 after: the bits of a
            # running product, with no register of its own.
            if COMPOSITE == _OVER:  # front to back, as the contract writes it: acc += v T; T *= 1 - v
                out += values * tl.where(zeros == 0, product, 0.0)
            product *= tl.where(factor == 0.0, 1.0, factor)
            zeros += (factor == 0.0).to(tl.int32)
        if COMPOSITE == _SOFTOR:  # 1 - prod (1 - v)
            out = 1.0 - tl.where(zeros == 0, product, 0.0)
        plane_0, plane_1 = product, zeros.to(dtype)

    pixels = height * width
    offsets = rows * width + cols
    inside = (rows < height) & (cols < width)
    tl.store(image_ptr + b * pixels + offsets, out, mask=inside)
    state_offsets = b * (_STATE_PLANES * pixels) + offsets
    tl.store(state_ptr + state_offsets, plane_0, mask=inside)
    tl.store(state_ptr + state_offsets + pixels, plane_1, mask=inside)


@triton.jit
def _soft_backward_kernel(
    grad_image_ptr,
    means_ptr,
    sigmas_ptr,
    amps_ptr,
    state_ptr,
    inv_t_ptr,
    grad_means_ptr,
    grad_sigmas_ptr,
    grad_amps_ptr,
    partials_ptr,
    n_markers,
    height,
    width,
    tiles_across,
    tiles_per_image,
    FLUSH: tl.constexpr,
    COMPOSITE: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    ROW_REPEATS: tl.constexpr,
    COL_REPEATS: tl.constexpr,
    ROW_SPAN: tl.constexpr,
    COL_SPAN: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // tiles_per_image).to(tl.int64)
    tile = pid % tiles_per_image
    rows, cols = _tile_pixels(tile, tiles_across, ROW_REPEATS, COL_REPEATS, ROW_SPAN, COL_SPAN)
    dtype = means_ptr.dtype.element_ty
    flush = tl.full([], FLUSH, dtype)
    marker_base = b * n_markers
    pixels = height * width
    offsets = rows * width + cols
    inside = (rows < height) & (cols < width)
    g = tl.load(grad_image_ptr + b * pixels + offsets, mask=inside, other=0.0)
    y, x = rows.to(dtype), cols.to(dtype)

    # The forward's per-pixel state. Outside the image, where g is 0, its stand-ins keep d out / d v
    # finite, so that h = 0 there: Q = 0 (softor, over), and L = +inf (smoothmax: every weight 0).
    state_offsets = b * (_STATE_PLANES * pixels) + offsets
    if COMPOSITE == _SMOOTHMAX:  # L and out
        inv_t = tl.load(inv_t_ptr)
        log_sum = tl.load(state_ptr + state_offsets, mask=inside, other=float("inf"))
        out = tl.load(state_ptr + state_offsets + pixels, mask=inside, other=0.0)
    else:  # softor and over: Q and Z
        product = tl.load(state_ptr + state_offsets, mask=inside, other=0.0)
        zeros = tl.load(state_ptr + state_offsets + pixels, mask=inside, other=0.0)

    # Each marker's h = g (d out / d v) e summed over the tile, four sums per marker.
    partials_base = ((b * tiles_per_image + tile) * _PARTIALS) * n_markers
    for n in range(0, n_markers):
        mx, my, sigma, amp = _load_marker(means_ptr, sigmas_ptr, amps_ptr, marker_base + n)
        inv_2s2 = 0.5 / (sigma * sigma)
        dx = x - mx
        dy = y - my
        row_factors = _axis_factor(dy, inv_2s2, flush)
        col_factors = _axis_factor(dx, inv_2s2, flush)
        bare = row_factors * col_factors  # e, the bare Gaussian
        values = row_factors * (amp * col_factors)  # v, to the bit the forward's
        if COMPOSITE == _SMOOTHMAX:
            w = _smoothmax_weight(log_sum, values, inv_t, flush)
            d_out = w * (1.0 + (values - out) * inv_t)
        else:
            # prod_{m != n} (1 - v_m): Q / (1 - v_n) with no zero factor; Q for the one marker whose
            # factor is 0; else 0. The division is by a nonzero factor, so nothing blows up at v = 1.
            factor = 1.0 - values
            zero = factor == 0.0
            d_out = tl.where(zeros == 0.0, product / tl.where(zero, 1.0, factor),
                             tl.where((zeros == 1.0) & zero, product, 0.0))  # fmt: skip
        h = g * d_out * bare  # 0 outside the image, where g is 0
        sum_h = tl.sum(h)
        sum_dx = tl.sum(h * dx)
        sum_dy = tl.sum(h * dy)
        sum_sq = tl.sum(h * (dx * dx + dy * dy))
        scale = amp * (2 * inv_2s2)  # amp / s^2
        d_mx = scale * sum_dx
        d_my = scale * sum_dy
        d_sigma = scale / sigma * sum_sq  # amp / s^3
        if DETERMINISTIC:  # this tile's (amp, mx, my, sigma) terms, summed in tile order afterwards
            tl.store(partials_ptr + partials_base + n, sum_h)
            tl.store(partials_ptr + partials_base + n_markers + n, d_mx)
            tl.store(partials_ptr + partials_base + 2 * n_markers + n, d_my)
            tl.store(partials_ptr + partials_base + 3 * n_markers + n, d_sigma)
        else:
            marker = marker_base + n
            tl.atomic_add(grad_amps_ptr + marker, sum_h, sem="relaxed")
            tl.atomic_add(grad_means_ptr + 2 * marker, d_mx, sem="relaxed")
            tl.atomic_add(grad_means_ptr + 2 * marker + 1, d_my, sem="relaxed")
            tl.atomic_add(grad_sigmas_ptr + marker, d_sigma, sem="relaxed")


# Host-side block arithmetic in plain Python: triton.cdiv and triton.next_power_of_2 are
# constexpr_function objects, whose calls cost more host time than the launches around them.
def _p2(value: int) -> int:
    """The next power of two >= value (value >= 1)."""
    return 1 << (value - 1).bit_length()


def _cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _forward_config(height: int, width: int, dtype: torch.dtype) -> dict:
    """The forward's block (the table in the module docstring)."""
    return dict(
        ROW_REPEATS=min(_p2(_cdiv(height, 4)), 8),
        COL_REPEATS=min(_p2(_cdiv(width, 8)), 8 if dtype == torch.float32 else 4),  # 8 x 8 doubles spill
        ROW_SPAN=4,  # one warp, its lanes as 4 rows x 8 columns
        COL_SPAN=8,
        num_warps=1,
    )


def _backward_config(height: int, width: int) -> dict:
    return dict(BLOCK_PIX=min(_p2(height * width), 256), num_warps=1)


def _wide_keys(n_markers: int, block_pix: int) -> bool:
    """Whether the sort's (winner, slot) keys, up to (N + 1) * BLOCK_PIX - 1, need int64."""
    return (n_markers + 1) * block_pix > 2**31


def _sum_partials_config(n_markers: int) -> dict:
    return dict(BLOCK_N=min(_p2(n_markers), 256), num_warps=4)


# The soft kernels' per-thread patch caps (ROW_REPEATS, COL_REPEATS) by (composite, dtype): the
# largest patches whose per-pixel state fits the registers with no spills (the table in the module
# docstring; tests/test_triton_compile.py checks them).
_SOFT_FORWARD_REPEATS = {
    ("softor", torch.float32): (8, 4), ("softor", torch.float64): (4, 4),
    ("over", torch.float32): (4, 4), ("over", torch.float64): (4, 4),
    ("smoothmax", torch.float32): (4, 4), ("smoothmax", torch.float64): (4, 2),
}  # fmt: skip
_SOFT_BACKWARD_REPEATS = {
    ("softor", torch.float32): (4, 4), ("softor", torch.float64): (4, 2),
    ("over", torch.float32): (4, 4), ("over", torch.float64): (4, 2),
    ("smoothmax", torch.float32): (4, 4), ("smoothmax", torch.float64): (4, 2),
}  # fmt: skip


def _soft_config(height: int, width: int, repeats: tuple[int, int]) -> dict:
    """A soft kernel's 4-D tile: one warp, its lanes as 4 rows x 8 columns, each thread a patch of at
    most `repeats` rows x columns, no larger than the image needs."""
    max_rows, max_cols = repeats
    return dict(
        ROW_REPEATS=min(_p2(_cdiv(height, 4)), max_rows),
        COL_REPEATS=min(_p2(_cdiv(width, 8)), max_cols),
        ROW_SPAN=4,
        COL_SPAN=8,
        num_warps=1,
    )


def _soft_forward_config(height: int, width: int, dtype: torch.dtype, composite: str) -> dict:
    return _soft_config(height, width, _SOFT_FORWARD_REPEATS[composite, dtype])


def _soft_backward_config(height: int, width: int, dtype: torch.dtype, composite: str) -> dict:
    return _soft_config(height, width, _SOFT_BACKWARD_REPEATS[composite, dtype])


def _inverse_temperature(means: torch.Tensor, composite: str, temperature: float) -> torch.Tensor | None:
    """1 / temperature in the markers' dtype on their device, for smoothmax (None otherwise): a
    tensor, since Triton passes a Python float argument as float32."""
    return means.new_full((1,), 1.0 / temperature) if composite == "smoothmax" else None


def _on_device(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _capturing(tensor: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured on the current stream: then no host sync is allowed,
    and the value checks are skipped."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _flag_word(device: torch.device, capturing: bool) -> torch.Tensor:
    """The int32 word a kernel ORs its value-check flags into. Read only outside a CUDA-graph
    capture, so a captured call leaves it uninitialised: one fill kernel fewer per replay."""
    allocate = torch.empty if capturing else torch.zeros
    return allocate(1, dtype=torch.int32, device=device)


def _check_pixel_count(height: int, width: int, op: str = "splat_render") -> None:
    if height * width >= 2**31:
        raise ValueError(f"{op}: the Triton kernels take images of < 2^31 pixels, got {height} x {width}")


def _tile_grid(height: int, width: int, config: dict) -> tuple[int, int]:
    """(tiles across, tiles per image) of the 4-D tiles of a forward-style `config`."""
    tiles_across = _cdiv(width, config["COL_REPEATS"] * config["COL_SPAN"])
    return tiles_across, _cdiv(height, config["ROW_REPEATS"] * config["ROW_SPAN"]) * tiles_across


def _gradient_buffers(means, sigmas, amps, deterministic: bool) -> list[torch.Tensor]:
    """The three gradients' tensors: zeroed where the kernel adds into them with atomics; left
    uninitialised where the deterministic sums write every element."""
    grads = [torch.empty_like(means), torch.empty_like(sigmas), torch.empty_like(amps)]
    if not deterministic:
        torch._foreach_zero_(grads)  # one launch for the three
    return grads


def _sum_partials(partials: torch.Tensor, grad_means, grad_sigmas, grad_amps) -> None:
    """The deterministic backwards' second kernel: partials [B, tiles, 4, N] summed in tile order."""
    batch, tiles_per_image, _, n_markers = partials.shape
    sum_config = _sum_partials_config(n_markers)
    blocks_per_image = _cdiv(n_markers, sum_config["BLOCK_N"])
    _sum_partials_kernel[(batch * blocks_per_image,)](
        partials, grad_means, grad_sigmas, grad_amps, n_markers, tiles_per_image, blocks_per_image, **sum_config
    )


def forward(
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    config: dict | None = None,
    *,
    composite: str = "max",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [B, H, W] (dtype of means) and int32 winner map [B, H, W] of markers [B, N, ...] for
    ``composite="max"``; for the soft composites the image and the per-pixel state their backward
    reads, [B, SOFT_STATE_PLANES, H, W] in the dtype of means (csrc/splat.cpp states its planes).
    ValueError if a marker's values are not finite, a sigma is <= 0 or, for softor and over, an amp
    lies outside [0, 1]. `config`: block sizes other than ``_forward_config``'s (or, for the soft
    composites, ``_soft_forward_config``'s; bench/triton_sweep.py times them)."""
    check_markers(means, sigmas, amps, flat=True)
    check_canvas(height, width)
    check_composite(composite, temperature)
    _check_pixel_count(height, width)
    if composite != "max":
        return _soft_forward(means, sigmas, amps, height, width, config, composite, temperature)
    batch, n_markers = sigmas.shape
    if n_markers == 0:
        return (
            means.new_zeros(batch, height, width),
            torch.full((batch, height, width), -1, dtype=torch.int32, device=means.device),
        )
    image = means.new_empty(batch, height, width)
    index = torch.empty(batch, height, width, dtype=torch.int32, device=means.device)
    if batch == 0:
        return image, index
    config = config or _forward_config(height, width, means.dtype)
    tiles_across, tiles_per_image = _tile_grid(height, width, config)
    capturing = _capturing(means)
    flaws = _flag_word(means.device, capturing)
    with _on_device(means):
        _forward_kernel[(batch * tiles_per_image,)](
            means.contiguous(), sigmas.contiguous(), amps.contiguous(), image, index, flaws,
            n_markers, height, width, tiles_across, tiles_per_image,
            FLUSH=_flush_exponent(means.dtype), **config,
        )  # fmt: skip
    if not capturing:
        raise_marker_flaws(int(flaws.item()))  # the call's one host sync
    return image, index


def backward(
    grad_image: torch.Tensor,
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    saved: torch.Tensor,
    deterministic: bool,
    config: dict | None = None,
    *,
    composite: str = "max",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the image w.r.t. means, sigmas and amps, given what the forward `saved`: with
    ``"max"`` each pixel's going to its winner in the winner map; with the soft composites to every
    marker, by the per-pixel state. `config`: block sizes other than ``_backward_config``'s (soft
    composites: ``_soft_backward_config``'s; bench/triton_sweep.py times them)."""
    check_composite(composite, temperature)
    check_backward_layout(grad_image, means, sigmas, amps, saved, composite)
    height, width = grad_image.shape[1:]
    _check_pixel_count(height, width)
    if composite != "max":
        return _soft_backward(grad_image, means, sigmas, amps, saved, deterministic, config, composite, temperature)
    batch, n_markers = sigmas.shape
    grad_means, grad_sigmas, grad_amps = _gradient_buffers(means, sigmas, amps, deterministic)
    if n_markers == 0 or batch == 0:
        return grad_means, grad_sigmas, grad_amps
    capturing = _capturing(means)
    bad_index = _flag_word(means.device, capturing)

    config = config or _backward_config(height, width)
    tiles_per_image = _cdiv(height * width, config["BLOCK_PIX"])
    partials = means.new_zeros(batch, tiles_per_image, _PARTIALS.value, n_markers) if deterministic else None
    with _on_device(means):
        _backward_kernel[(batch * tiles_per_image,)](
            grad_image.contiguous(), means.contiguous(), sigmas.contiguous(), amps.contiguous(), saved.contiguous(),
            grad_means, grad_sigmas, grad_amps, partials, bad_index,
            n_markers, height, width, tiles_per_image,
            FLUSH=_flush_exponent(means.dtype), DETERMINISTIC=deterministic,
            **{"WIDE_KEYS": _wide_keys(n_markers, config["BLOCK_PIX"]), **config},  # a config may force int64 keys
        )  # fmt: skip
        if deterministic:
            _sum_partials(partials, grad_means, grad_sigmas, grad_amps)
    if not capturing:
        raise_bad_index(bool(bad_index.item()), n_markers)  # the call's one host sync
    return grad_means, grad_sigmas, grad_amps


def _soft_forward(means, sigmas, amps, height, width, config, composite, temperature):
    """forward() of softor, over and smoothmax: the image and the per-pixel state."""
    batch, n_markers = sigmas.shape
    if n_markers == 0:
        return means.new_zeros(batch, height, width), means.new_zeros(batch, SOFT_STATE_PLANES, height, width)
    image = means.new_empty(batch, height, width)
    state = means.new_empty(batch, SOFT_STATE_PLANES, height, width)
    if batch == 0:
        return image, state
    config = config or _soft_forward_config(height, width, means.dtype, composite)
    tiles_across, tiles_per_image = _tile_grid(height, width, config)
    capturing = _capturing(means)
    flaws = _flag_word(means.device, capturing)
    with _on_device(means):
        _soft_forward_kernel[(batch * tiles_per_image,)](
            means.contiguous(), sigmas.contiguous(), amps.contiguous(),
            _inverse_temperature(means, composite, temperature), image, state, flaws,
            n_markers, height, width, tiles_across, tiles_per_image,
            FLUSH=_flush_exponent(means.dtype), COMPOSITE=COMPOSITES.index(composite), **config,
        )  # fmt: skip
    if not capturing:
        raise_marker_flaws(int(flaws.item()))  # the call's one host sync
    return image, state


def _soft_backward(grad_image, means, sigmas, amps, state, deterministic, config, composite, temperature):
    """backward() of softor, over and smoothmax: every marker's gradient from every pixel, by the
    forward's per-pixel state. No host sync: the forward checked the values and made the state."""
    height, width = grad_image.shape[1:]
    batch, n_markers = sigmas.shape
    grad_means, grad_sigmas, grad_amps = _gradient_buffers(means, sigmas, amps, deterministic)
    if n_markers == 0 or batch == 0:
        return grad_means, grad_sigmas, grad_amps
    config = config or _soft_backward_config(height, width, means.dtype, composite)
    tiles_across, tiles_per_image = _tile_grid(height, width, config)
    # Every program writes its tile's four sums of every marker: no zero fill needed.
    partials = means.new_empty(batch, tiles_per_image, _PARTIALS.value, n_markers) if deterministic else None
    with _on_device(means):
        _soft_backward_kernel[(batch * tiles_per_image,)](
            grad_image.contiguous(), means.contiguous(), sigmas.contiguous(), amps.contiguous(), state.contiguous(),
            _inverse_temperature(means, composite, temperature), grad_means, grad_sigmas, grad_amps, partials,
            n_markers, height, width, tiles_across, tiles_per_image,
            FLUSH=_flush_exponent(means.dtype), COMPOSITE=COMPOSITES.index(composite), DETERMINISTIC=deterministic,
            **config,
        )  # fmt: skip
        if deterministic:
            _sum_partials(partials, grad_means, grad_sigmas, grad_amps)
    return grad_means, grad_sigmas, grad_amps
