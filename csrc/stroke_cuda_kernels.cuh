// CUDA kernels of stroke_forward / stroke_backward and how they are launched (the math and its
// derivatives: splatkern/stroke_reference.py; the same algorithm on CPU: stroke_cpu.cpp, whose
// culling, flush, tie and winner rules these follow). stroke_cuda.cu launches them on the current
// stream; tests/cuda_emulator.cpp runs this very file on the CPU, where there is no GPU. The device
// helpers the marker kernels have too (flushed exponential, soft composite state and derivatives,
// value checks) come from splat_cuda_kernels.cuh.
//
// A block takes a tile of kStrokeTileHeight rows of 32 pixels of one image, one pixel per thread
// (a warp is a row). A segment's value is 0 where its exponent exceeds kFlushExponent, which holds
// everywhere outside its box grown by reach = sqrt(2 flush) max(sigma_k, sigma_k+1) + 1 pixel: a
// segment whose box misses the tile takes the value 0 there without being computed, exactly as if
// it had been (up to the sign of a zero).
//
// Forward: per chunk of kStrokeThreads segments (in stroke order), the block stages their
// parameters and whether their box meets the tile in shared memory (the first tile of each image
// also checks their vertices' values into *flaws); then each thread folds them in order: the running
// max of the current stroke (ties to the lowest k), and at each stroke's last segment that value
// into the composite's state (max: best and winner s K + k; soft: splat_cuda_kernels.cuh's states).
//
// Backward: a pixel's gradient reaches one segment per stroke, the one that won the stroke's max
// there (for "max" only the composite's winner, read from the index map), with h = g d out / d v_s.
// Each thread forms its segment's kStrokeTerms terms (stroke_cpu.cpp's sums), and each warp sums
// them per distinct segment its lanes hold, with shuffles in a fixed order, into a slot per
// (warp, segment) of a chunk of kStrokeChunk segments in shared memory; each slot is written at most
// once per chunk. The block then adds its warps' slots in warp order: deterministic=false adds that
// sum to the image's per-segment sums with one atomic per term; deterministic=true adds it to the
// block's own row partials[block][segment], which stroke_finish_kernel adds in block order. A
// deterministic block takes one tile, or several in turn where a row per tile would pass
// kDeterministicPartialsBytes. stroke_finish_kernel then turns each stroke's segment sums into its
// vertices' gradients, in segment order.
#pragma once

#include "splat_cuda_kernels.cuh"

#include <cmath>

namespace splatkern::kernels {

constexpr int kStrokeTileHeight = 8;
constexpr int kStrokeThreads = kWarpSize * kStrokeTileHeight;
// The kernels' launch bounds ask for one resident block per SM only: with the default, ptxas
// (nvcc 13.0) keeps fewer registers than the backward's terms and the double kernels need, and spills.
constexpr int kStrokeMinBlocks = 1;
// Segments whose per-warp sums a backward block holds at once: 8 warps x 32 x 11 terms, 22 KB for
// double.
constexpr int kStrokeChunk = 32;
// A segment's sums over the pixels it won (stroke_cpu.cpp's kStrokePartials, h = g d out / d v_s):
//   0, 1: (1 - t) h e and t h e                          (d/d amp_k, d/d amp_k+1)
//   2, 3: (1 - t) G and t G, G = h amp e |r|^2 / s^3       (d/d sigma_k, d/d sigma_k+1)
//   4-7:  (1 - t) C r and t C r, C = h amp e / s^2         (the r parts of d/d a and d/d b)
//   8-10: V, V w (w = u - 2 t d), V = h dvalue/dt where 0 < t0 < 1, else 0
// from which d/d a = (1 - t) C r + (-d V - V w) / |d|^2 and d/d b = t C r + V w / |d|^2.
constexpr int kStrokeTerms = 11;

// One segment: a = vertex k, b = vertex min(k + 1, P - 1), d = b - a, inv_length2 = 1 / |d|^2 (0 where
// a = b: t = 0), sigma(t) = sigma + t dsigma, amp(t) = amp + t damp.
template <typename scalar_t>
struct StrokeSegment {
  scalar_t ax, ay, dx, dy, inv_length2, sigma, dsigma, amp, damp;
};

// The image's flat segment s K + k, from its vertices va = s P + k and vb.
template <typename scalar_t>
__device__ __forceinline__ StrokeSegment<scalar_t> segment_of(const scalar_t* paths, const scalar_t* sigmas,
                                                              const scalar_t* amps, int va, int vb) {
  StrokeSegment<scalar_t> g;
  g.ax = paths[2 * va];
  g.ay = paths[2 * va + 1];
  g.dx = paths[2 * vb] - g.ax;
  g.dy = paths[2 * vb + 1] - g.ay;
  const scalar_t length2 = fma(g.dx, g.dx, g.dy * g.dy);
  g.inv_length2 = length2 > scalar_t(0) ? scalar_t(1) / length2 : scalar_t(0);
  g.sigma = sigmas[va];
  g.dsigma = sigmas[vb] - g.sigma;
  g.amp = amps[va];
  g.damp = amps[vb] - g.amp;
  return g;
}

// Whether segment g's box, grown by reach_per_sigma max(sigma_a, sigma_b) + 1, meets the pixels
// [x0, x1] x [y0, y1]. NaN anywhere gives true: the kernel then computes, and the checks raise.
template <typename scalar_t>
__device__ __forceinline__ bool segment_meets(const StrokeSegment<scalar_t>& g, scalar_t reach_per_sigma, int x0,
                                              int x1, int y0, int y1) {
  const scalar_t reach = reach_per_sigma * max(g.sigma, g.sigma + g.dsigma) + scalar_t(1);
  const scalar_t bx = g.ax + g.dx, by = g.ay + g.dy;
  return !(min(g.ax, bx) - reach > scalar_t(x1) || max(g.ax, bx) + reach < scalar_t(x0) ||
           min(g.ay, by) - reach > scalar_t(y1) || max(g.ay, by) + reach < scalar_t(y0));
}

// Segment g at pixel (px, py): the projection t, r = p - q, u = p - a, 1 / sigma(t), amp(t), the bare
// exp(-|r|^2 / (2 sigma(t)^2)) flushed, and whether 0 < t0 < 1 (t then depends on p). Every sum of a
// product is an explicit fma: the compiler cannot contract them differently in the forward and the
// backward, which must form each value to the same bits (the soft modes divide by 1 - v).
template <typename scalar_t>
struct SegmentAt {
  scalar_t t, rx, ry, ux, uy, inv_sigma, amp, e;
  bool inside;
};

template <typename scalar_t>
__device__ __forceinline__ SegmentAt<scalar_t> segment_at(const StrokeSegment<scalar_t>& g, scalar_t px,
                                                          scalar_t py) {
  SegmentAt<scalar_t> at;
  at.ux = px - g.ax;
  at.uy = py - g.ay;
  const scalar_t t0 = fma(at.ux, g.dx, at.uy * g.dy) * g.inv_length2;
  at.inside = t0 > scalar_t(0) && t0 < scalar_t(1);
  at.t = t0 > scalar_t(0) ? (t0 < scalar_t(1) ? t0 : scalar_t(1)) : scalar_t(0);
  at.rx = fma(-at.t, g.dx, at.ux);
  at.ry = fma(-at.t, g.dy, at.uy);
  at.inv_sigma = scalar_t(1) / fma(at.t, g.dsigma, g.sigma);
  at.e = axis_factor(scalar_t(0.5) * fma(at.rx, at.rx, at.ry * at.ry) * (at.inv_sigma * at.inv_sigma));
  at.amp = fma(at.t, g.damp, g.amp);
  return at;
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t value_of(const SegmentAt<scalar_t>& at) {
  return at.amp * at.e;
}

// The flat segment ids of an image: K = max(P - 1, 1) per stroke; vertex a of s K + k is s P + k.
struct StrokeLayout {
  int n_strokes, n_vertices, per_stroke;
  __device__ __forceinline__ int vertex_a(int id) const { return id / per_stroke * n_vertices + id % per_stroke; }
  __device__ __forceinline__ int vertex_b(int id) const {
    return id / per_stroke * n_vertices + min(id % per_stroke + 1, n_vertices - 1);
  }
};

// A tile: its image b and its first column and row.
struct StrokeTile {
  int64_t b;
  int x0, y0;
};
// Tile `tile` of image b, the tiles numbered row by row, tiles_x to a row.
__device__ __forceinline__ StrokeTile stroke_tile(int64_t b, int tile, int tiles_x) {
  return {b, (tile % tiles_x) * kWarpSize, (tile / tiles_x) * kStrokeTileHeight};
}

// --- forward ------------------------------------------------------------------------------------

template <typename scalar_t, Composite kComposite>
__global__ void __launch_bounds__(kStrokeThreads, kStrokeMinBlocks)
    stroke_forward_kernel(const scalar_t* __restrict__ paths, const scalar_t* __restrict__ sigmas,
                          const scalar_t* __restrict__ amps, StrokeLayout layout, int height, int width, int tiles_x,
                          int tiles_per_image, scalar_t reach_per_sigma, scalar_t inv_t,
                          scalar_t* __restrict__ image, int32_t* __restrict__ index, scalar_t* __restrict__ saved,
                          int32_t* __restrict__ flaws) {
  __shared__ StrokeSegment<scalar_t> segments[kStrokeThreads];
  __shared__ bool live[kStrokeThreads];
  const StrokeTile tile = stroke_tile(blockIdx.x / tiles_per_image, int(blockIdx.x % tiles_per_image), tiles_x);
  const int thread = threadIdx.y * kWarpSize + threadIdx.x;
  const int x = tile.x0 + threadIdx.x, y = tile.y0 + threadIdx.y;
  const int n_segments = layout.n_strokes * layout.per_stroke;
  const int64_t per_image = int64_t(layout.n_strokes) * layout.n_vertices;
  paths += tile.b * per_image * 2;
  sigmas += tile.b * per_image;
  amps += tile.b * per_image;
  const bool checks = blockIdx.x % tiles_per_image == 0;
  const scalar_t px = scalar_t(x), py = scalar_t(y);

  scalar_t stroke_value = -std::numeric_limits<scalar_t>::infinity();
  int stroke_segment = 0;
  scalar_t best = -std::numeric_limits<scalar_t>::infinity();  // kMax: the composite's best and winner
  int32_t winner = 0;
  SoftState<scalar_t> state = soft_start<kComposite == kMax ? kSoftor : kComposite, scalar_t>();  // unused by kMax

  // Two barriers per chunk: a thread restages only after everyone's fold of the previous chunk.
  for (int c0 = 0; c0 < n_segments; c0 += kStrokeThreads) {
    const int count = min(kStrokeThreads, n_segments - c0);
    if (thread < count) {
      const int id = c0 + thread, va = layout.vertex_a(id), vb = layout.vertex_b(id);
      if (checks) {  // every vertex is some segment's a, or the last segment's b
        report_flaws(paths[2 * va], paths[2 * va + 1], sigmas[va], amps[va], flaws);
        report_unit_amp<kComposite>(amps[va], flaws);
        if (vb != va && id % layout.per_stroke == layout.per_stroke - 1) {
          report_flaws(paths[2 * vb], paths[2 * vb + 1], sigmas[vb], amps[vb], flaws);
          report_unit_amp<kComposite>(amps[vb], flaws);
        }
      }
      segments[thread] = segment_of(paths, sigmas, amps, va, vb);
      live[thread] = segment_meets(segments[thread], reach_per_sigma, tile.x0, tile.x0 + kWarpSize - 1, tile.y0,
                                   tile.y0 + kStrokeTileHeight - 1);
    }
    __syncthreads();
    int k = c0 % layout.per_stroke;
    for (int m = 0; m < count; ++m) {
      const scalar_t v = live[m] ? value_of(segment_at(segments[m], px, py)) : scalar_t(0);
      if (v > stroke_value) {
        stroke_value = v;
        stroke_segment = k;
      }
      if (++k == layout.per_stroke) {  // the stroke's last segment: composite its value
        if constexpr (kComposite == kMax) {
          keep_greater(stroke_value, c0 + m + 1 - layout.per_stroke + stroke_segment, 0, best, winner);
        } else {
          soft_add<kComposite>(state, stroke_value, scalar_t(1), inv_t);
        }
        stroke_value = -std::numeric_limits<scalar_t>::infinity();
        stroke_segment = 0;
        k = 0;
      }
    }
    __syncthreads();
  }

  if (x < width && y < height) {
    const int64_t pixels = int64_t(height) * width, pixel = int64_t(y) * width + x;
    if constexpr (kComposite == kMax) {
      image[tile.b * pixels + pixel] = best;
      index[tile.b * pixels + pixel] = winner;
    } else {
      const scalar_t out = soft_finish<kComposite>(state, 0, inv_t);
      image[tile.b * pixels + pixel] = out;
      store_soft_state<kComposite>(state, out, inv_t, saved + tile.b * kSoftStatePlanes * pixels + pixel, pixels);
    }
  }
}

// --- backward -----------------------------------------------------------------------------------

// The kStrokeTerms terms of a pixel won by segment g (at it: `at`), with h = g d out / d v_s.
template <typename scalar_t>
__device__ __forceinline__ void segment_terms(const StrokeSegment<scalar_t>& g, const SegmentAt<scalar_t>& at,
                                              scalar_t h, scalar_t (&terms)[kStrokeTerms]) {
  const scalar_t he = h * at.e, one_minus_t = scalar_t(1) - at.t;
  const scalar_t inv_s2 = at.inv_sigma * at.inv_sigma;
  const scalar_t big_g = he * at.amp * (at.rx * at.rx + at.ry * at.ry) * inv_s2 * at.inv_sigma;
  const scalar_t big_c = he * at.amp * inv_s2;
  const scalar_t dv_dt = at.inside ? he * g.damp + big_g * g.dsigma : scalar_t(0);
  terms[0] = one_minus_t * he;
  terms[1] = at.t * he;
  terms[2] = one_minus_t * big_g;
  terms[3] = at.t * big_g;
  terms[4] = one_minus_t * big_c * at.rx;
  terms[5] = one_minus_t * big_c * at.ry;
  terms[6] = at.t * big_c * at.rx;
  terms[7] = at.t * big_c * at.ry;
  terms[8] = dv_dt;
  terms[9] = dv_dt * (at.ux - scalar_t(2) * at.t * g.dx);
  terms[10] = dv_dt * (at.uy - scalar_t(2) * at.t * g.dy);
}

// Per-warp sums of a chunk of segments: slot [warp][segment - c0][term].
template <typename scalar_t>
using StrokeSlots = scalar_t[kStrokeTileHeight][kStrokeChunk][kStrokeTerms];

// Sums each lane's terms over the lanes whose `slot` (in [0, kStrokeChunk), else -1: nothing) is
// equal, into slots[warp][slot], one distinct slot at a time in the order of its lowest lane; all 32
// lanes call it together. Each sum is a butterfly of shuffles, in an order fixed by the lanes.
template <typename scalar_t>
__device__ __forceinline__ void add_to_slots(int slot, const scalar_t (&terms)[kStrokeTerms],
                                             StrokeSlots<scalar_t>& slots) {
  const int lane = threadIdx.x, warp = threadIdx.y;
  for (unsigned pending = __ballot_sync(kFullWarp, slot >= 0); pending != 0;) {
    const int key = __shfl_sync(kFullWarp, slot, __ffs(pending) - 1);
    const bool mine = slot == key;
    scalar_t sum[kStrokeTerms];
#pragma unroll
    for (int j = 0; j < kStrokeTerms; ++j) sum[j] = mine ? terms[j] : scalar_t(0);
#pragma unroll
    for (int d = kWarpSize / 2; d >= 1; d /= 2) {
#pragma unroll
      for (int j = 0; j < kStrokeTerms; ++j) sum[j] += __shfl_xor_sync(kFullWarp, sum[j], d);
    }
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kStrokeTerms; ++j) slots[warp][key][j] = sum[j];
    }
    pending &= ~__ballot_sync(kFullWarp, mine);
  }
}

// After a barrier: adds the chunk's slots over the warps, in warp order, for segments [c0, c0 + count)
// of image b, then zeroes them for the next chunk. kDeterministic: into partials[block][segment],
// the block's own row, to which its tiles add in turn; else atomically into sums[b][segment].
template <bool kDeterministic, typename scalar_t>
__device__ __forceinline__ void flush_slots(StrokeSlots<scalar_t>& slots, int c0, int count, int n_segments,
                                            int64_t b, scalar_t* __restrict__ out) {
  for (int i = threadIdx.y * kWarpSize + threadIdx.x; i < kStrokeChunk * kStrokeTerms; i += kStrokeThreads) {
    const int slot = i / kStrokeTerms, j = i % kStrokeTerms;
    scalar_t sum = scalar_t(0);
#pragma unroll
    for (int w = 0; w < kStrokeTileHeight; ++w) {
      sum += slots[w][slot][j];
      slots[w][slot][j] = scalar_t(0);
    }
    if (slot >= count) continue;
    const int64_t at = (int64_t(kDeterministic ? blockIdx.x : b) * n_segments + c0 + slot) * kStrokeTerms + j;
    if constexpr (kDeterministic) {
      out[at] += sum;
    } else if (sum != scalar_t(0)) {
      atomicAdd(out + at, sum);
    }
  }
}

// The backward of image b's tiles into `out` (flush_slots), for kComposite kMax, kSoftor (softor and
// over, whose derivatives are equal) or kSmoothmax, from the forward's `saved`: the index map for kMax
// (a value outside [0, S K) sets *bad_index and is skipped), else the soft state. A block takes tiles
// blockIdx.x % blocks_per_image, + blocks_per_image, ... of image blockIdx.x / blocks_per_image, in
// that order: one tile where blocks_per_image = tiles_per_image. `out` must be zero where nothing is
// written: the sums of a segment whose box misses a tile, or of a chunk no pixel of it won, are skipped.
template <typename scalar_t, Composite kComposite, bool kDeterministic>
__global__ void __launch_bounds__(kStrokeThreads, kStrokeMinBlocks)
    stroke_backward_kernel(const scalar_t* __restrict__ grad_image, const scalar_t* __restrict__ paths,
                           const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ amps,
                           const int32_t* __restrict__ index, const scalar_t* __restrict__ saved,
                           StrokeLayout layout, int height, int width, int tiles_x, int tiles_per_image,
                           int blocks_per_image, scalar_t reach_per_sigma, scalar_t inv_t,
                           scalar_t* __restrict__ out, int32_t* __restrict__ bad_index) {
  __shared__ StrokeSlots<scalar_t> slots;
  __shared__ int key_range[2][kStrokeTileHeight];
  const int64_t b = blockIdx.x / blocks_per_image;
  const int lane = threadIdx.x, warp = threadIdx.y;
  const int n_segments = layout.n_strokes * layout.per_stroke;
  const int64_t per_image = int64_t(layout.n_strokes) * layout.n_vertices;
  paths += b * per_image * 2;
  sigmas += b * per_image;
  amps += b * per_image;
  const int64_t pixels = int64_t(height) * width;
  // Zeroed once: each tile leaves them zero (flush_slots).
  for (int i = warp * kWarpSize + lane; i < kStrokeTileHeight * kStrokeChunk * kStrokeTerms; i += kStrokeThreads) {
    (&slots[0][0][0])[i] = scalar_t(0);
  }

  for (int t = int(blockIdx.x % blocks_per_image); t < tiles_per_image; t += blocks_per_image) {
    const StrokeTile tile = stroke_tile(b, t, tiles_x);
    const int x = tile.x0 + lane, y = tile.y0 + warp;
    const bool inside = x < width && y < height;
    const int64_t local = inside ? int64_t(y) * width + x : 0;
    const int64_t pixel = b * pixels + local;
    const scalar_t px = scalar_t(x), py = scalar_t(y);
    if constexpr (kComposite == kMax) {
      // One segment per pixel: its terms, once; then the chunks that hold the tile's winners.
      const scalar_t g = inside ? grad_image[pixel] : scalar_t(0);
      int id = inside ? index[pixel] : -1;
      if (inside && (id < 0 || id >= n_segments)) {
        atomicOr(bad_index, 1);
        id = -1;
      }
      if (g == scalar_t(0)) id = -1;
      scalar_t terms[kStrokeTerms] = {};
      if (id >= 0) {
        const StrokeSegment<scalar_t> segment =
            segment_of(paths, sigmas, amps, layout.vertex_a(id), layout.vertex_b(id));
        segment_terms(segment, segment_at(segment, px, py), g, terms);
      }
      int low = id >= 0 ? id : n_segments, high = id;
#pragma unroll
      for (int d = kWarpSize / 2; d >= 1; d /= 2) {
        low = min(low, __shfl_xor_sync(kFullWarp, low, d));
        high = max(high, __shfl_xor_sync(kFullWarp, high, d));
      }
      if (lane == 0) key_range[0][warp] = low, key_range[1][warp] = high;
      __syncthreads();  // also orders the slots' first zeroing before their use
#pragma unroll
      for (int w = 0; w < kStrokeTileHeight; ++w) low = min(low, key_range[0][w]), high = max(high, key_range[1][w]);
      for (int c0 = low / kStrokeChunk * kStrokeChunk; c0 <= high; c0 += kStrokeChunk) {
        const int slot = id >= c0 && id < c0 + kStrokeChunk ? id - c0 : -1;
        add_to_slots(slot, terms, slots);
        __syncthreads();
        flush_slots<kDeterministic>(slots, c0, min(kStrokeChunk, n_segments - c0), n_segments, tile.b, out);
        __syncthreads();
      }
    } else {
      // Per chunk, each stroke with segments in it whose box meets the tile: the pixel's stroke value
      // and winning segment as the forward found them, h, and that segment's terms.
      const SoftState<scalar_t> state =
          soft_backward_state<kComposite == kSmoothmax>(inside, grad_image + pixel,
                                                        saved + tile.b * kSoftStatePlanes * pixels + local, pixels);
      __syncthreads();  // the slots' first zeroing before their use
      const int x1 = tile.x0 + kWarpSize - 1, y1 = tile.y0 + kStrokeTileHeight - 1;
      for (int c0 = 0; c0 < n_segments; c0 += kStrokeChunk) {
        const int count = min(kStrokeChunk, n_segments - c0);
        bool touched = false;  // uniform: the boxes are the same for every thread
        for (int s = c0 / layout.per_stroke; s <= (c0 + count - 1) / layout.per_stroke; ++s) {
          const int first = s * layout.per_stroke;
          scalar_t v = -std::numeric_limits<scalar_t>::infinity();
          int won = 0;
          bool live = false;
          for (int k = 0; k < layout.per_stroke; ++k) {
            const StrokeSegment<scalar_t> segment =
                segment_of(paths, sigmas, amps, layout.vertex_a(first + k), layout.vertex_b(first + k));
            const bool meets = segment_meets(segment, reach_per_sigma, tile.x0, x1, tile.y0, y1);
            live |= meets;
            const scalar_t value = meets ? value_of(segment_at(segment, px, py)) : scalar_t(0);
            if (value > v) v = value, won = k;
          }
          if (!live) continue;  // the stroke's value is 0 on the whole tile, and so are its terms
          touched = true;
          const scalar_t h = soft_gradient<kComposite == kSmoothmax>(state, v, scalar_t(1), inv_t);
          const int slot = first + won - c0;
          const bool adds = h != scalar_t(0) && slot >= 0 && slot < count;
          scalar_t terms[kStrokeTerms] = {};
          if (adds) {
            const StrokeSegment<scalar_t> segment =
                segment_of(paths, sigmas, amps, layout.vertex_a(first + won), layout.vertex_b(first + won));
            segment_terms(segment, segment_at(segment, px, py), h, terms);
          }
          add_to_slots(adds ? slot : -1, terms, slots);
        }
        if (!touched) continue;
        __syncthreads();
        flush_slots<kDeterministic>(slots, c0, count, n_segments, tile.b, out);
        __syncthreads();
      }
    }
    __syncthreads();  // kMax: every warp has read key_range before the next tile writes it
  }
}

// One thread per stroke of the batch: adds its segments' sums over `rows` rows per image (the
// deterministic partials, in block order; 1 for the atomic sums) and turns them into the gradients
// of its vertices, adding the segments in order. Writes every element of the gradients.
template <typename scalar_t>
__global__ void __launch_bounds__(kStrokeThreads, kStrokeMinBlocks)
    stroke_finish_kernel(const scalar_t* __restrict__ sums, const scalar_t* __restrict__ paths,
                         const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ amps, int64_t batch,
                         StrokeLayout layout, int64_t rows, scalar_t* __restrict__ grad_paths,
                         scalar_t* __restrict__ grad_sigmas, scalar_t* __restrict__ grad_amps) {
  const int64_t bs = blockIdx.x * int64_t(kStrokeThreads) + threadIdx.y * kWarpSize + threadIdx.x;
  if (bs >= batch * layout.n_strokes) return;
  const int64_t b = bs / layout.n_strokes;
  const int s = int(bs % layout.n_strokes), n_segments = layout.n_strokes * layout.per_stroke;
  const int64_t per_image = int64_t(layout.n_strokes) * layout.n_vertices;
  paths += b * per_image * 2;
  sigmas += b * per_image;
  amps += b * per_image;
  grad_paths += b * per_image * 2;
  grad_sigmas += b * per_image;
  grad_amps += b * per_image;
  for (int v = s * layout.n_vertices; v < (s + 1) * layout.n_vertices; ++v) {
    grad_paths[2 * v] = grad_paths[2 * v + 1] = grad_sigmas[v] = grad_amps[v] = scalar_t(0);
  }
  for (int id = s * layout.per_stroke; id < (s + 1) * layout.per_stroke; ++id) {
    scalar_t sum[kStrokeTerms] = {};
    for (int64_t row = 0; row < rows; ++row) {
      const scalar_t* from = sums + ((b * rows + row) * n_segments + id) * kStrokeTerms;
#pragma unroll
      for (int j = 0; j < kStrokeTerms; ++j) sum[j] += from[j];
    }
    const int va = layout.vertex_a(id), vb = layout.vertex_b(id);
    const StrokeSegment<scalar_t> g = segment_of(paths, sigmas, amps, va, vb);
    grad_paths[2 * va] += sum[4] + (-g.dx * sum[8] - sum[9]) * g.inv_length2;
    grad_paths[2 * va + 1] += sum[5] + (-g.dy * sum[8] - sum[10]) * g.inv_length2;
    grad_sigmas[va] += sum[2];
    grad_amps[va] += sum[0];
    grad_paths[2 * vb] += sum[6] + sum[9] * g.inv_length2;
    grad_paths[2 * vb + 1] += sum[7] + sum[10] * g.inv_length2;
    grad_sigmas[vb] += sum[3];
    grad_amps[vb] += sum[1];
  }
}

// --- launches -----------------------------------------------------------------------------------
// As splat_cuda_kernels.cuh's: launch(what, kernel, blocks, threads, kernel arguments...).

struct StrokeGrid {
  int64_t tiles_x, tiles_per_image;
};
inline StrokeGrid stroke_grid(int64_t height, int64_t width) {
  const int64_t tiles_x = ceil_div(width, kWarpSize);
  return {tiles_x, tiles_x * ceil_div(height, kStrokeTileHeight)};
}

// sqrt(2 flush): a segment's reach per sigma (less one pixel), as stroke_cpu.cpp culls.
template <typename scalar_t>
scalar_t stroke_reach_per_sigma() {
  return scalar_t(std::sqrt(2.0 * double(kFlushExponent<scalar_t>)));
}

// How the backward's blocks cover an image: blocks_per_image blocks, each taking every
// blocks_per_image-th tile; and its sums, `rows` of S K kStrokeTerms scalars per image: the
// image's per-segment sums (atomic, rows = 1, one block per tile) or each block's (deterministic).
struct StrokeBackwardPlan {
  int64_t blocks_per_image, rows, sums;
};

// A deterministic block adds its tiles in a fixed order, so fewer blocks bound the partials without
// atomics; the plan depends on the shapes and dtype alone, and so do the gradients' bits.
template <typename scalar_t>
StrokeBackwardPlan stroke_backward_plan(bool deterministic, int64_t batch, int64_t height, int64_t width,
                                        int64_t n_segments, int64_t partials_bytes = kDeterministicPartialsBytes) {
  const int64_t tiles = stroke_grid(height, width).tiles_per_image, row = n_segments * kStrokeTerms;
  if (!deterministic) return {tiles, 1, batch * row};
  const int64_t fit = partials_bytes / (batch * row * int64_t(sizeof(scalar_t)));
  const int64_t blocks = std::clamp<int64_t>(fit, 1, tiles);
  return {blocks, blocks, batch * blocks * row};
}

// The image and `index` (kMax) or the soft state `saved` [B, kSoftStatePlanes, H, W] of paths
// [B, S, P, 2] (S >= 1; the host draws S = 0 itself), with the values' flaws ORed into *flaws.
template <typename scalar_t, typename Launch>
void launch_stroke_forward(const Launch& launch, Composite composite, double temperature, const scalar_t* paths,
                           const scalar_t* sigmas, const scalar_t* amps, int64_t batch, int n_strokes, int n_vertices,
                           int height, int width, scalar_t* image, int32_t* index, scalar_t* saved, int32_t* flaws) {
  const StrokeGrid grid = stroke_grid(height, width);
  const StrokeLayout layout{n_strokes, n_vertices, std::max(n_vertices - 1, 1)};
  const auto run = [&](auto kernel) {
    launch("the forward", kernel, batch * grid.tiles_per_image, dim3(kWarpSize, kStrokeTileHeight), paths, sigmas,
           amps, layout, height, width, int(grid.tiles_x), int(grid.tiles_per_image),
           stroke_reach_per_sigma<scalar_t>(), scalar_t(1.0 / temperature), image, index, saved, flaws);
  };
  switch (composite) {
    case kMax:
      return run(stroke_forward_kernel<scalar_t, kMax>);
    case kSoftor:
      return run(stroke_forward_kernel<scalar_t, kSoftor>);
    case kOver:
      return run(stroke_forward_kernel<scalar_t, kOver>);
    default:
      return run(stroke_forward_kernel<scalar_t, kSmoothmax>);
  }
}

// The gradients of paths, sigmas and amps (every element written) from the image's gradient and the
// forward's `index` (kMax) or `saved` (the soft modes), for S >= 1 and at least one pixel. `sums`:
// plan.sums scalars, zeroed; plan: stroke_backward_plan(deterministic, ...).
template <typename scalar_t, typename Launch>
void launch_stroke_backward(const Launch& launch, const StrokeBackwardPlan& plan, Composite composite,
                            double temperature, bool deterministic,
                            const scalar_t* grad_image, const scalar_t* paths, const scalar_t* sigmas,
                            const scalar_t* amps, const int32_t* index, const scalar_t* saved, int64_t batch,
                            int n_strokes, int n_vertices, int height, int width, scalar_t* sums,
                            scalar_t* grad_paths, scalar_t* grad_sigmas, scalar_t* grad_amps, int32_t* bad_index) {
  const StrokeGrid grid = stroke_grid(height, width);
  const StrokeLayout layout{n_strokes, n_vertices, std::max(n_vertices - 1, 1)};
  const char* what = deterministic ? "the deterministic backward" : "the backward";
  const auto run = [&](auto kernel) {
    launch(what, kernel, batch * plan.blocks_per_image, dim3(kWarpSize, kStrokeTileHeight), grad_image, paths,
           sigmas, amps, index, saved, layout, height, width, int(grid.tiles_x), int(grid.tiles_per_image),
           int(plan.blocks_per_image), stroke_reach_per_sigma<scalar_t>(), scalar_t(1.0 / temperature), sums,
           bad_index);
  };
  const auto run_mode = [&](auto deterministic_mode) {
    constexpr bool kDeterministic = decltype(deterministic_mode)::value;
    switch (composite) {
      case kMax:
        return run(stroke_backward_kernel<scalar_t, kMax, kDeterministic>);
      case kSmoothmax:
        return run(stroke_backward_kernel<scalar_t, kSmoothmax, kDeterministic>);
      default:  // softor and over share their derivative
        return run(stroke_backward_kernel<scalar_t, kSoftor, kDeterministic>);
    }
  };
  deterministic ? run_mode(std::true_type()) : run_mode(std::false_type());
  launch(what, stroke_finish_kernel<scalar_t>, ceil_div(batch * n_strokes, kStrokeThreads),
         dim3(kWarpSize, kStrokeTileHeight), static_cast<const scalar_t*>(sums), paths, sigmas, amps, batch, layout,
         plan.rows, grad_paths, grad_sigmas, grad_amps);
}

}  // namespace splatkern::kernels
