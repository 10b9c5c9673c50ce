"""Triton kernels of stroke_render (the math: splatkern/stroke_reference.py; the op wrapping:
splatkern/ops.py), the algorithm of the CPU kernel (csrc/stroke_cpu.cpp) on Triton's tiles.

Like splatkern/triton_kernels.py (whose helpers, conventions and launch plumbing these share),
``forward`` and ``backward`` launch on CUDA tensors, or on CPU tensors under the Triton interpreter,
and take the flattened float32/float64 tensors of the op's schema (csrc/splat.cpp): paths
``[B, S, P, 2]``, sigmas and amps ``[B, S, P]``. Segment ``k`` of a stroke joins its vertices ``k``
and ``min(k + 1, P - 1)``; a stroke has ``K = max(P - 1, 1)`` of them (with ``P = 1`` one, of
``a = b``: its vertex as a marker).

A segment's value is not separable, so each pixel-segment pair costs its own projection and
exponential, on a flat 2-D tile ``[BLOCK_H, BLOCK_W]`` of pixels per program. A value is flushed to 0
where its exponent ``|r|^2 / (2 sigma(t)^2)`` exceeds ``FLUSH_EXPONENT`` (splatkern/facts.py), so it
is 0 outside the segment's box grown by ``sqrt(2 FLUSH_EXPONENT) max(sigma_a, sigma_b)`` and a pixel
more (for rounding): a program skips every segment whose box misses its tile, and takes its value as
0 there, which is exact under the flush rule, ties included.

* Forward: one program per (batch item, tile). Stroke by stroke, each pixel's stroke value is the max
  over the stroke's segments (strict ``>`` over increasing ``k``: ties to the lowest), folded into the
  composite's running state in registers: the max and winner ``s K + k``; softor and over's ``Q`` (the
  product of the nonzero factors ``1 - v``) and ``Z`` (the count of zero ones), over's output beside
  them; smoothmax's online softmax (the running max ``M``, ``sum w`` and ``sum w v`` rescaled when ``M``
  grows). It writes the image and what the backward reads (csrc/splat.cpp: the int32 winner map, or
  the state ``[B, 2, H, W]``: ``Q, Z``, or ``L = M + t log sum w`` and the image). The first tile of
  each image checks the strokes' values (``_check_values``) into a flag word, read back with one host
  sync.
* Backward: one program per (batch item, tile), or with ``deterministic=True`` per (batch item, block
  of tiles), few enough blocks that their partial sums stay within
  ``facts.DETERMINISTIC_PARTIALS_BYTES``. A pixel's gradient reaches one segment per stroke,
  the one that won the stroke's max there, as ``h = g d out / d v_s``: for ``"max"`` the winner map
  names it (and ``h = g``); for the soft composites the program recomputes each stroke's value and
  winning segment, and takes ``d out / d v_s`` from the saved state. Per segment meeting the tile and
  winning a pixel of it, the tile's sums of the closed-form derivatives (stroke_reference.py) give
  eight gradients (``d/d a``, ``d/d b``, ``d/d sigma_{a,b}``, ``d/d amp_{a,b}``), which go to the
  segment's two vertices with atomics, or, with ``deterministic=True``, to its block's row of a zeroed
  per-(block, segment) buffer, the block's tiles added in order, which ``_sum_partials_kernel`` adds
  in block order, then segment order, into each vertex (bit-identical run to run). Winner-map values outside ``[0, S K)`` are flagged (the launcher
  raises) and match no segment.

Sums are kept in the inputs' dtype. ``1 / t`` is read from a one-element tensor of the paths' dtype:
Triton passes a Python float as float32.

Blocks: ``_config`` (``BLOCK_H x BLOCK_W`` at most 16 x 16, four warps) has not been timed on a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from splatkern.checks import (
    check_backward_layout,
    check_canvas,
    check_composite,
    check_strokes,
    raise_bad_index,
    raise_marker_flaws,
)
from splatkern.facts import (
    COMPOSITES,
    DETERMINISTIC_PARTIALS_BYTES,
    SOFT_STATE_PLANES,
    STROKE_FLAW_MESSAGES,
    UNIT_AMP_COMPOSITES,
)
from splatkern.triton_kernels import (
    _OVER,
    _SMOOTHMAX,
    _SOFTOR,
    _STATE_PLANES,
    _capturing,
    _cdiv,
    _check_pixel_count,
    _check_values,
    _exp_neg,
    _flag_word,
    _flush_exponent,
    _gradient_buffers,
    _inverse_temperature,
    _on_device,
    _p2,
    _smoothmax_weight,
)

_OP = "stroke_render"
_MAX = tl.constexpr(COMPOSITES.index("max"))
# The gradients of one segment a tile sends its vertices: d/d a (x, y), d/d b (x, y), d/d sigma_a,
# d/d sigma_b, d/d amp_a, d/d amp_b; the deterministic buffer's planes, in this order.
_SEGMENT_GRADS = tl.constexpr(8)


@triton.jit
def _segment(paths_ptr, sigmas_ptr, amps_ptr, stroke_base, n_vertices, k, x0, x1, y0, y1, REACH: tl.constexpr):
    """Segment k of the stroke whose vertex 0 is `stroke_base`: a, d = b - a, 1 / |d|^2 (0 where a = b,
    so t = 0), sigma_a and sigma_b - sigma_a, amp_a and amp_b - amp_a, and whether its box meets
    columns [x0, x1] x rows [y0, y1] (compared as floats: a box far off the image cannot overflow)."""
    va = stroke_base + k
    vb = stroke_base + tl.minimum(k + 1, n_vertices - 1)
    ax = tl.load(paths_ptr + 2 * va)
    ay = tl.load(paths_ptr + 2 * va + 1)
    bx = tl.load(paths_ptr + 2 * vb)
    by = tl.load(paths_ptr + 2 * vb + 1)
    sigma_a = tl.load(sigmas_ptr + va)
    sigma_b = tl.load(sigmas_ptr + vb)
    amp_a = tl.load(amps_ptr + va)
    dx = bx - ax
    dy = by - ay
    length2 = dx * dx + dy * dy
    inv_length2 = tl.where(length2 > 0, 1.0 / tl.where(length2 > 0, length2, 1.0), 0.0)
    reach = REACH * tl.maximum(sigma_a, sigma_b) + 1.0  # a pixel more: no rounding keeps a value outside
    meets = ((tl.minimum(ax, bx) - reach <= x1) & (tl.maximum(ax, bx) + reach >= x0)
             & (tl.minimum(ay, by) - reach <= y1) & (tl.maximum(ay, by) + reach >= y0))  # fmt: skip
    return ax, ay, dx, dy, inv_length2, sigma_a, sigma_b - sigma_a, amp_a, tl.load(amps_ptr + vb) - amp_a, meets


@triton.jit
def _segment_at(x, y, ax, ay, dx, dy, inv_length2, sigma, dsigma, amp, damp, flush):
    """A segment at the pixels (x [1, W], y [H, 1]): t, r = p - q, u = p - a, 1 / sigma(t), amp(t), the
    bare exp(-|r|^2 / (2 sigma(t)^2)) flushed, and whether 0 < t0 < 1 (t then depends on p), each
    [H, W] but u's, computed as the CPU kernel computes them."""
    ux = x - ax
    uy = y - ay
    t0 = (ux * dx + uy * dy) * inv_length2
    t = tl.where(t0 > 0, tl.where(t0 < 1, t0, 1.0), 0.0)
    rx = ux - t * dx
    ry = uy - t * dy
    inv_sigma = 1.0 / (sigma + t * dsigma)
    exponent = 0.5 * (rx * rx + ry * ry) * (inv_sigma * inv_sigma)
    e = tl.where(exponent <= flush, _exp_neg(exponent), 0.0)
    return t, rx, ry, ux, uy, inv_sigma, amp + t * damp, e, (t0 > 0) & (t0 < 1)


@triton.jit
def _stroke_value(paths_ptr, sigmas_ptr, amps_ptr, stroke_base, n_vertices, n_segments, x, y, x0, x1, y0, y1, flush,
                  REACH: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """A stroke's value at the tile's pixels, the max over its segments (a culled one's value is 0),
    and the segment k attaining it (ties: the lowest)."""
    dtype = paths_ptr.dtype.element_ty
    value = tl.full([BLOCK_H, BLOCK_W], float("-inf"), dtype)
    segment = tl.zeros([BLOCK_H, BLOCK_W], tl.int32)
    for k in range(0, n_segments):
        ax, ay, dx, dy, inv_length2, sigma, dsigma, amp, damp, meets = _segment(
            paths_ptr, sigmas_ptr, amps_ptr, stroke_base, n_vertices, k, x0, x1, y0, y1, REACH)
        v = tl.zeros([BLOCK_H, BLOCK_W], dtype)
        if meets:
            _t, _rx, _ry, _ux, _uy, _inv_sigma, amp_t, e, _inside = _segment_at(
                x, y, ax, ay, dx, dy, inv_length2, sigma, dsigma, amp, damp, flush)
            v = amp_t * e
        takes = v > value
        value = tl.where(takes, v, value)
        segment = tl.where(takes, k, segment)
    return value, segment


@triton.jit
def _tile(tile, tiles_across, dtype, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The tile's rows [H, 1] and columns [1, W], and its bounds x0, x1, y0, y1 in the dtype."""
    row0 = (tile // tiles_across) * BLOCK_H
    col0 = (tile % tiles_across) * BLOCK_W
    rows = row0 + tl.arange(0, BLOCK_H)[:, None]
    cols = col0 + tl.arange(0, BLOCK_W)[None, :]
    x0 = col0.to(dtype)
    y0 = row0.to(dtype)
    return rows, cols, x0, x0 + (BLOCK_W - 1), y0, y0 + (BLOCK_H - 1)


@triton.jit
def _forward_kernel(
    paths_ptr,
    sigmas_ptr,
    amps_ptr,
    inv_t_ptr,
    image_ptr,
    saved_ptr,
    flaws_ptr,
    n_strokes,
    n_vertices,
    n_segments,
    height,
    width,
    tiles_across,
    tiles_per_image,
    FLUSH: tl.constexpr,
    REACH: tl.constexpr,
    COMPOSITE: tl.constexpr,
    UNIT_AMPS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // tiles_per_image).to(tl.int64)
    tile = pid % tiles_per_image
    dtype = paths_ptr.dtype.element_ty
    rows, cols, x0, x1, y0, y1 = _tile(tile, tiles_across, dtype, BLOCK_H, BLOCK_W)
    flush = tl.full([], FLUSH, dtype)
    vertex_base = b * n_strokes * n_vertices
    if tile == 0:  # every tile reads every stroke of its image: one per image checks them
        _check_values(paths_ptr, sigmas_ptr, amps_ptr, vertex_base, n_strokes * n_vertices, UNIT_AMPS, flaws_ptr)

    y, x = rows.to(dtype), cols.to(dtype)
    if COMPOSITE == _MAX:
        best = tl.full([BLOCK_H, BLOCK_W], float("-inf"), dtype)
        winner = tl.zeros([BLOCK_H, BLOCK_W], tl.int32)
    elif COMPOSITE == _SMOOTHMAX:  # an online softmax: M, sum w and sum w v with w = exp((v - M) / t)
        inv_t = tl.load(inv_t_ptr)
        top = tl.full([BLOCK_H, BLOCK_W], float("-inf"), dtype)
        weights = tl.zeros([BLOCK_H, BLOCK_W], dtype)
        weighted = tl.zeros([BLOCK_H, BLOCK_W], dtype)
    else:  # softor and over: Q and Z, whose T = Q if Z = 0 else 0 is the running prod (1 - v) to the bit
        product = tl.full([BLOCK_H, BLOCK_W], 1.0, dtype)
        zeros = tl.zeros([BLOCK_H, BLOCK_W], tl.int32)
        if COMPOSITE == _OVER:
            out = tl.zeros([BLOCK_H, BLOCK_W], dtype)
    for s in range(0, n_strokes):
        v, segment = _stroke_value(paths_ptr, sigmas_ptr, amps_ptr, vertex_base + s * n_vertices, n_vertices,
                                   n_segments, x, y, x0, x1, y0, y1, flush, REACH, BLOCK_H, BLOCK_W)
        if COMPOSITE == _MAX:
            takes = v > best  # strict, over strokes in increasing order: the lowest s wins ties
            best = tl.where(takes, v, best)
            winner = tl.where(takes, s * n_segments + segment, winner)
        elif COMPOSITE == _SMOOTHMAX:
            new_top = tl.maximum(top, v)
            rescale = _smoothmax_weight(new_top, top, inv_t, flush)  # 0 at the first stroke (M = -inf)
            w = _smoothmax_weight(new_top, v, inv_t, flush)
            weights = weights * rescale + w
            weighted = weighted * rescale + w * v
            top = new_top
        else:
            factor = 1.0 - v
            if COMPOSITE == _OVER:  # front to back: acc += v T; T *= 1 - v
                out += v * tl.where(zeros == 0, product, 0.0)
            product *= tl.where(factor == 0.0, 1.0, factor)
            zeros += (factor == 0.0).to(tl.int32)

    pixels = height * width
    offsets = rows * width + cols
    inside = (rows < height) & (cols < width)
    if COMPOSITE == _MAX:
        tl.store(image_ptr + b * pixels + offsets, best, mask=inside)
        tl.store(saved_ptr + b * pixels + offsets, winner, mask=inside)
    else:
        if COMPOSITE == _SMOOTHMAX:
            out = weighted / weights  # sum w >= 1: the max's own weight
            plane_0, plane_1 = top + tl.log(weights) / inv_t, out
        else:
            if COMPOSITE == _SOFTOR:
                out = 1.0 - tl.where(zeros == 0, product, 0.0)
            plane_0, plane_1 = product, zeros.to(dtype)
        tl.store(image_ptr + b * pixels + offsets, out, mask=inside)
        state_offsets = b * (_STATE_PLANES * pixels) + offsets
        tl.store(saved_ptr + state_offsets, plane_0, mask=inside)
        tl.store(saved_ptr + state_offsets + pixels, plane_1, mask=inside)


@triton.jit
def _backward_kernel(
    grad_image_ptr,
    paths_ptr,
    sigmas_ptr,
    amps_ptr,
    saved_ptr,
    inv_t_ptr,
    grad_paths_ptr,
    grad_sigmas_ptr,
    grad_amps_ptr,
    partials_ptr,
    bad_index_ptr,
    n_strokes,
    n_vertices,
    n_segments,
    height,
    width,
    tiles_across,
    tiles_per_image,
    blocks_per_image,
    FLUSH: tl.constexpr,
    REACH: tl.constexpr,
    COMPOSITE: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // blocks_per_image).to(tl.int64)
    block = pid % blocks_per_image
    dtype = paths_ptr.dtype.element_ty
    flush = tl.full([], FLUSH, dtype)
    vertex_base = b * n_strokes * n_vertices
    all_segments = n_strokes * n_segments
    pixels = height * width
    block_partials = (b * blocks_per_image + block) * _SEGMENT_GRADS * all_segments
    for tile in range(block, tiles_per_image, blocks_per_image):  # every blocks_per_image-th tile, in order
        rows, cols, x0, x1, y0, y1 = _tile(tile, tiles_across, dtype, BLOCK_H, BLOCK_W)
        offsets = rows * width + cols
        inside = (rows < height) & (cols < width)
        # 0 outside the image: every h there is 0, whatever stands in for the state
        g = tl.load(grad_image_ptr + b * pixels + offsets, mask=inside, other=0.0)
        y, x = rows.to(dtype), cols.to(dtype)
        if COMPOSITE == _MAX:
            index = tl.load(saved_ptr + b * pixels + offsets, mask=inside, other=-1)
            bad = inside & ((index < 0) | (index >= all_segments))
            any_bad = tl.max(tl.max(bad.to(tl.int32), 1), 0)
            tl.atomic_or(bad_index_ptr, any_bad, mask=any_bad != 0)
        else:
            state_offsets = b * (_STATE_PLANES * pixels) + offsets
            plane_0 = tl.load(saved_ptr + state_offsets, mask=inside, other=0.0)
            plane_1 = tl.load(saved_ptr + state_offsets + pixels, mask=inside, other=0.0)
            if COMPOSITE == _SMOOTHMAX:
                inv_t = tl.load(inv_t_ptr)

        for s in range(0, n_strokes):
            stroke_base = vertex_base + s * n_vertices
            if COMPOSITE == _MAX:
                h = g
                won_by = index - s * n_segments  # in [0, K) where a segment of this stroke won the pixel
            else:
                v, won_by = _stroke_value(paths_ptr, sigmas_ptr, amps_ptr, stroke_base, n_vertices, n_segments, x, y,
                                          x0, x1, y0, y1, flush, REACH, BLOCK_H, BLOCK_W)
                if COMPOSITE == _SMOOTHMAX:  # plane 0 = L, plane 1 = out; L >= v up to rounding: clamped
                    h = g * _smoothmax_weight(tl.maximum(plane_0, v), v, inv_t, flush) * (1.0 + (v - plane_1) * inv_t)
                else:  # plane 0 = Q, plane 1 = Z
                    factor = 1.0 - v
                    zero = factor == 0.0
                    h = g * tl.where(plane_1 == 0.0, plane_0 / tl.where(zero, 1.0, factor),
                                     tl.where((plane_1 == 1.0) & zero, plane_0, 0.0))  # fmt: skip
            for k in range(0, n_segments):
                ax, ay, dx, dy, inv_length2, sigma, dsigma, amp, damp, meets = _segment(
                    paths_ptr, sigmas_ptr, amps_ptr, stroke_base, n_vertices, k, x0, x1, y0, y1, REACH)
                if meets:
                    won = won_by == k
                    if tl.max(tl.max(won.to(tl.int32), 1), 0) != 0:
                        t, rx, ry, ux, uy, inv_sigma, amp_t, e, moving = _segment_at(
                            x, y, ax, ay, dx, dy, inv_length2, sigma, dsigma, amp, damp, flush)
                        he = tl.where(won, h, 0.0) * e
                        inv_s2 = inv_sigma * inv_sigma
                        big_g = he * amp_t * (rx * rx + ry * ry) * inv_s2 * inv_sigma  # d value / d sigma(t)
                        big_c = he * amp_t * inv_s2
                        dv_dt = tl.where(moving, he * damp + big_g * dsigma, 0.0)  # V
                        one_minus_t = 1.0 - t
                        sum_v = tl.sum(tl.sum(dv_dt, 1), 0)
                        sum_vwx = tl.sum(tl.sum(dv_dt * (ux - 2.0 * t * dx), 1), 0)
                        sum_vwy = tl.sum(tl.sum(dv_dt * (uy - 2.0 * t * dy), 1), 0)
                        grads = (
                            tl.sum(tl.sum(one_minus_t * big_c * rx, 1), 0) + (-dx * sum_v - sum_vwx) * inv_length2,
                            tl.sum(tl.sum(one_minus_t * big_c * ry, 1), 0) + (-dy * sum_v - sum_vwy) * inv_length2,
                            tl.sum(tl.sum(t * big_c * rx, 1), 0) + sum_vwx * inv_length2,
                            tl.sum(tl.sum(t * big_c * ry, 1), 0) + sum_vwy * inv_length2,
                            tl.sum(tl.sum(one_minus_t * big_g, 1), 0),
                            tl.sum(tl.sum(t * big_g, 1), 0),
                            tl.sum(tl.sum(one_minus_t * he, 1), 0),
                            tl.sum(tl.sum(t * he, 1), 0),
                        )
                        if DETERMINISTIC:  # this block's row, its tiles added in order
                            at = partials_ptr + block_partials + s * n_segments + k
                            for term in tl.static_range(_SEGMENT_GRADS):
                                where = at + term * all_segments
                                tl.store(where, tl.load(where) + grads[term])
                        else:
                            va = stroke_base + k
                            vb = stroke_base + tl.minimum(k + 1, n_vertices - 1)
                            tl.atomic_add(grad_paths_ptr + 2 * va, grads[0], sem="relaxed")
                            tl.atomic_add(grad_paths_ptr + 2 * va + 1, grads[1], sem="relaxed")
                            tl.atomic_add(grad_paths_ptr + 2 * vb, grads[2], sem="relaxed")
                            tl.atomic_add(grad_paths_ptr + 2 * vb + 1, grads[3], sem="relaxed")
                            tl.atomic_add(grad_sigmas_ptr + va, grads[4], sem="relaxed")
                            tl.atomic_add(grad_sigmas_ptr + vb, grads[5], sem="relaxed")
                            tl.atomic_add(grad_amps_ptr + va, grads[6], sem="relaxed")
                            tl.atomic_add(grad_amps_ptr + vb, grads[7], sem="relaxed")


@triton.jit
def _sum_partials_kernel(
    partials_ptr,
    grad_paths_ptr,
    grad_sigmas_ptr,
    grad_amps_ptr,
    n_strokes,
    n_vertices,
    n_segments,
    rows_per_image,
    blocks_per_image,
    BLOCK_V: tl.constexpr,
):
    """The deterministic backward's second kernel: each vertex's gradients, from partials
    [B, rows, 8, S K] (a row per block of tiles) summed in row order per segment, then its segment as
    a plus its segment as b. A program takes BLOCK_V vertices of one image."""
    pid = tl.program_id(0)
    b = (pid // blocks_per_image).to(tl.int64)
    vertex = (pid % blocks_per_image) * BLOCK_V + tl.arange(0, BLOCK_V)  # s P + j within the image
    live = vertex < n_strokes * n_vertices
    stroke = vertex // n_vertices
    j = vertex % n_vertices
    # vertex j is a of segment j and b of segment j - 1; with P = 1 both of segment 0
    k_b = tl.where(n_vertices > 1, j - 1, j)
    as_a = live & (j < n_segments)
    as_b = live & (k_b >= 0) & (k_b < n_segments)
    segment_a = stroke * n_segments + j
    segment_b = stroke * n_segments + k_b
    all_segments = n_strokes * n_segments
    dtype = partials_ptr.dtype.element_ty
    x_a = tl.zeros([BLOCK_V], dtype)
    y_a = tl.zeros([BLOCK_V], dtype)
    x_b = tl.zeros([BLOCK_V], dtype)
    y_b = tl.zeros([BLOCK_V], dtype)
    sigma_a = tl.zeros([BLOCK_V], dtype)
    sigma_b = tl.zeros([BLOCK_V], dtype)
    amp_a = tl.zeros([BLOCK_V], dtype)
    amp_b = tl.zeros([BLOCK_V], dtype)
    for row in range(rows_per_image):  # a fixed order: the same bits every run
        base = partials_ptr + (b * rows_per_image + row) * _SEGMENT_GRADS * all_segments
        x_a += tl.load(base + segment_a, mask=as_a, other=0.0)
        y_a += tl.load(base + all_segments + segment_a, mask=as_a, other=0.0)
        x_b += tl.load(base + 2 * all_segments + segment_b, mask=as_b, other=0.0)
        y_b += tl.load(base + 3 * all_segments + segment_b, mask=as_b, other=0.0)
        sigma_a += tl.load(base + 4 * all_segments + segment_a, mask=as_a, other=0.0)
        sigma_b += tl.load(base + 5 * all_segments + segment_b, mask=as_b, other=0.0)
        amp_a += tl.load(base + 6 * all_segments + segment_a, mask=as_a, other=0.0)
        amp_b += tl.load(base + 7 * all_segments + segment_b, mask=as_b, other=0.0)
    at = b * n_strokes * n_vertices + vertex
    tl.store(grad_paths_ptr + 2 * at, x_a + x_b, mask=live)
    tl.store(grad_paths_ptr + 2 * at + 1, y_a + y_b, mask=live)
    tl.store(grad_sigmas_ptr + at, sigma_a + sigma_b, mask=live)
    tl.store(grad_amps_ptr + at, amp_a + amp_b, mask=live)


def _backward_blocks(deterministic: bool, batch: int, tiles: int, segments: int, itemsize: int,
                     partials_bytes: int) -> int:
    """Programs per image of the backward: one per tile, or (deterministic) as many as keep the
    partials, a row of S K x 8 sums per program, within `partials_bytes`, each taking every
    blocks-th tile in turn; at least one. It depends on the shapes and dtype alone, and so do the
    gradients' bits: csrc/stroke_cuda_kernels.cuh plans its blocks alike."""
    if not deterministic:
        return tiles
    return min(max(partials_bytes // (batch * segments * _SEGMENT_GRADS.value * itemsize), 1), tiles)


def _config(height: int, width: int) -> dict:
    """The kernels' tile: at most 16 x 16 pixels, no larger than the image needs."""
    return dict(BLOCK_H=min(_p2(height), 16), BLOCK_W=min(_p2(width), 16), num_warps=4)


def _tile_grid(height: int, width: int, config: dict) -> tuple[int, int]:
    """(tiles across, tiles per image) of `config`'s tiles."""
    tiles_across = _cdiv(width, config["BLOCK_W"])
    return tiles_across, _cdiv(height, config["BLOCK_H"]) * tiles_across


def _reach_per_sigma(dtype: torch.dtype) -> float:
    """How far from a segment, in its larger sigma, a value stays unflushed."""
    return math.sqrt(2 * _flush_exponent(dtype))


def forward(
    paths: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    composite: str = "max",
    temperature: float = 1.0,
    *,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [B, H, W] (dtype of paths) and what the backward reads: for ``"max"`` the int32 winner map
    [B, H, W] of ``s * max(P - 1, 1) + k`` (-1 where S = 0), for the soft composites the per-pixel
    state [B, SOFT_STATE_PLANES, H, W] (csrc/splat.cpp). ValueError if a stroke's values are not
    finite, a sigma is <= 0 or, for softor and over, an amp lies outside [0, 1]. `config`: a tile other
    than ``_config``'s."""
    check_strokes(paths, sigmas, amps, flat=True)
    check_canvas(height, width, _OP)
    check_composite(composite, temperature, op=_OP)
    _check_pixel_count(height, width, _OP)
    batch, n_strokes, n_vertices = sigmas.shape
    if n_strokes == 0:
        saved = (torch.full((batch, height, width), -1, dtype=torch.int32, device=paths.device) if composite == "max"
                 else paths.new_zeros(batch, SOFT_STATE_PLANES, height, width))  # fmt: skip
        return paths.new_zeros(batch, height, width), saved
    image = paths.new_empty(batch, height, width)
    saved = (torch.empty(batch, height, width, dtype=torch.int32, device=paths.device) if composite == "max"
             else paths.new_empty(batch, SOFT_STATE_PLANES, height, width))  # fmt: skip
    if batch == 0:
        return image, saved
    config = config or _config(height, width)
    tiles_across, tiles_per_image = _tile_grid(height, width, config)
    capturing = _capturing(paths)
    flaws = _flag_word(paths.device, capturing)
    with _on_device(paths):
        _forward_kernel[(batch * tiles_per_image,)](
            paths.contiguous(), sigmas.contiguous(), amps.contiguous(),
            _inverse_temperature(paths, composite, temperature), image, saved, flaws, n_strokes, n_vertices, max(n_vertices - 1, 1), height, width, tiles_across,
            tiles_per_image, FLUSH=_flush_exponent(paths.dtype), REACH=_reach_per_sigma(paths.dtype),
            COMPOSITE=COMPOSITES.index(composite), UNIT_AMPS=composite in UNIT_AMP_COMPOSITES, **config,
        )  # fmt: skip
    if not capturing:
        raise_marker_flaws(int(flaws.item()), STROKE_FLAW_MESSAGES)  # the call's one host sync
    return image, saved


def backward(
    grad_image: torch.Tensor,
    paths: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    saved: torch.Tensor,
    deterministic: bool,
    composite: str = "max",
    temperature: float = 1.0,
    *,
    config: dict | None = None,
    partials_bytes: int = DETERMINISTIC_PARTIALS_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the image w.r.t. paths, sigmas and amps, given what the forward `saved`: each
    pixel's reaches, per stroke, the segment that won the stroke's max there; the composite's share by
    the winner map (``"max"``, whose values outside [0, S max(P - 1, 1)) raise) or the per-pixel state.
    `config`: a tile other than ``_config``'s; `partials_bytes`: the deterministic partials' bound."""
    check_composite(composite, temperature, op=_OP)
    check_backward_layout(grad_image, paths, sigmas, amps, saved, composite, strokes=True)
    height, width = grad_image.shape[1:]
    _check_pixel_count(height, width, _OP)
    batch, n_strokes, n_vertices = sigmas.shape
    n_segments = max(n_vertices - 1, 1)
    grad_paths, grad_sigmas, grad_amps = _gradient_buffers(paths, sigmas, amps, deterministic)
    if n_strokes == 0 or batch == 0:
        return grad_paths, grad_sigmas, grad_amps
    config = config or _config(height, width)
    tiles_across, tiles_per_image = _tile_grid(height, width, config)
    capturing = _capturing(paths)
    bad_index = _flag_word(paths.device, capturing) if composite == "max" else None
    blocks_per_image = _backward_blocks(deterministic, batch, tiles_per_image, n_strokes * n_segments,
                                        paths.element_size(), partials_bytes)
    # Zeroed: a block adds to its row only the segments that meet its tiles and win a pixel there.
    partials = (paths.new_zeros(batch, blocks_per_image, _SEGMENT_GRADS.value, n_strokes * n_segments)
                if deterministic else None)  # fmt: skip
    with _on_device(paths):
        _backward_kernel[(batch * blocks_per_image,)](
            grad_image.contiguous(), paths.contiguous(), sigmas.contiguous(), amps.contiguous(), saved.contiguous(),
            _inverse_temperature(paths, composite, temperature), grad_paths, grad_sigmas, grad_amps, partials,
            bad_index, n_strokes, n_vertices, n_segments, height, width, tiles_across, tiles_per_image,
            blocks_per_image, FLUSH=_flush_exponent(paths.dtype), REACH=_reach_per_sigma(paths.dtype),
            COMPOSITE=COMPOSITES.index(composite), DETERMINISTIC=deterministic, **config,
        )  # fmt: skip
        if deterministic:
            block_v = min(_p2(n_strokes * n_vertices), 256)
            vertex_blocks = _cdiv(n_strokes * n_vertices, block_v)
            _sum_partials_kernel[(batch * vertex_blocks,)](
                partials, grad_paths, grad_sigmas, grad_amps, n_strokes, n_vertices, n_segments, blocks_per_image,
                vertex_blocks, BLOCK_V=block_v, num_warps=4,
            )  # fmt: skip
    if bad_index is not None and not capturing:
        raise_bad_index(bool(bad_index.item()), n_strokes * n_segments, "stroke_backward")  # the call's one host sync
    return grad_paths, grad_sigmas, grad_amps
