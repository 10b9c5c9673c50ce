// CUDA kernels of splat_forward / splat_backward and how they are launched (the math:
// splatkern/reference.py; the same algorithm on CPU: splat_cpu.cpp). splat_cuda.cu launches them
// on the current stream; tests/cuda_emulator.cpp runs this very file on the CPU, where there is no GPU.
//
// Forward: a thread block draws one tile of one image, 32 rows by 32 columns, or 64 for float images
// wider than 32. Per block of markers it writes the tile's column factors amp * g(dx) and row
// factors g(dy) into shared memory (96 exponentials per marker instead of 2048 for a 64-column
// tile), then each of its 4 warps' threads keeps the running max and winner of 8 rows of one or two
// columns with one multiply, one compare and two predicated updates per pixel and marker
// (keep_greater).
//
// Backward: a block takes consecutive pixels of one image, 8 per thread. A thread sums its pixels'
// runs of equal winners in registers, a warp sums the runs that go on across lanes with shuffles,
// and those sums go into per-marker sums in shared memory: O(pixels) work whatever N is.
// deterministic=false: shared atomics, then one global atomic per marker and gradient per block.
// deterministic=true: no atomics. Each warp's lanes add to the warp's own sums one at a time, in lane
// order; the block writes each marker's sum over its warps, in warp order, and a second kernel adds
// those in block order. The result depends on the problem shape only, never on timing.
//
// The soft composites (softor, over, smoothmax) have kernels of their own, in the section of that
// name: the forward's tiles with a per-pixel state instead of a winner, which the forward saves, and
// a backward that reads that state and sums every marker's terms per tile.
#pragma once

#include "splat_facts.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace splatkern::kernels {

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarp = 0xffffffffu;

// exp(-x): the fast hardware exponential for float (what --use_fast_math makes of expf anyway),
// the accurate one for double.
__device__ __forceinline__ float exp_neg(float x) { return __expf(-x); }
__device__ __forceinline__ double exp_neg(double x) { return exp(-x); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t axis_factor(scalar_t exponent) {
  return exponent > kFlushExponent<scalar_t> ? scalar_t(0) : exp_neg(exponent);
}

// --- forward ------------------------------------------------------------------------------------

// 8 rows per thread rather than 4: the factor loads and the loop's bookkeeping are then shared by
// more pairs, a smaller part of the instructions each pair issues.
constexpr int kRowsPerThread = 8;
constexpr int kWarpsPerTile = 4;
constexpr int kTileHeight = kWarpsPerTile * kRowsPerThread;
constexpr int kForwardThreads = kWarpSize * kWarpsPerTile;
// Markers whose factors are staged at once: 16 KB of shared memory for float with one column per
// lane, 24 KB with two, 32 KB for double (one column).
constexpr int kMarkerBlock = 64;
static_assert(kTileHeight == kWarpSize, "each lane computes one row factor per marker");

static_assert(kMarkerBlock <= kForwardThreads, "one thread stages each marker of a block");

// A marker's parameters as the factor computations of the forward and the backward need them.
template <typename scalar_t>
struct Marker {
  scalar_t mx, my, inv_2s2, amp;
};

template <typename scalar_t>
__device__ __forceinline__ Marker<scalar_t> make_marker(scalar_t mx, scalar_t my, scalar_t sigma, scalar_t amp) {
  return {mx, my, scalar_t(0.5) / (sigma * sigma), amp};
}

// A thread's kRowsPerThread row factors, read with one vector load (broadcast across its warp).
template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kRowsPerThread) RowFactors {
  scalar_t of[kRowsPerThread];
};

// ORs into *flaws the MarkerFlaw bits of one marker's values (splat_facts.h).
template <typename scalar_t>
__device__ __forceinline__ void report_flaws(scalar_t mx, scalar_t my, scalar_t sigma, scalar_t amp,
                                             int32_t* flaws) {
  const int32_t found = (isfinite(mx) && isfinite(my) ? 0 : kMeansNonfinite) |
                        (isfinite(sigma) ? 0 : kSigmasNonfinite) | (sigma > scalar_t(0) ? 0 : kSigmasNonpositive) |
                        (isfinite(amp) ? 0 : kAmpsNonfinite);
  if (found) atomicOr(flaws, found);
}

// ORs kAmpsOutsideUnit into *flaws where kComposite needs amps in [0, 1] and `amp` lies outside.
template <Composite kComposite, typename scalar_t>
__device__ __forceinline__ void report_unit_amp(scalar_t amp, int32_t* flaws) {
  if constexpr (kCompositeNeedsUnitAmps[kComposite]) {
    if (amp < scalar_t(0) || amp > scalar_t(1)) atomicOr(flaws, int32_t(kAmpsOutsideUnit));
  }
}

// (best, winner) = (value, n) where value > best: strict, over markers in increasing order, so the
// lowest index wins ties. Generic form: the compiler makes a compare and two selects of it.
template <typename scalar_t>
__device__ __forceinline__ void keep_greater(scalar_t value, int32_t n, int32_t /*opaque_zero*/, scalar_t& best,
                                             int32_t& winner) {
  if (value > best) {
    best = value;
    winner = n;
  }
}

// float: the forward's inner loop, one call per marker-pixel pair. A compare and two selects all
// issue on the ALU pipe, which on sm_90 has half the lanes of the FP32 pipes and would bound the
// kernel (on sm_80 the two have equal lanes and both forms cost the same). Here only the compare issues
// there; the updates are predicated FP32-pipe instructions: value + (-0), exact for every value,
// zeros' signs included, and value_bits * 0 + n as an IMAD. Written in PTX because ptxas turns
// predicated moves into selects; `opaque_zero` is a kernel argument the host sets to 0, so that
// ptxas cannot fold the IMAD into a move either. .ftz matches the build's --use_fast_math (the
// products compared here are already flushed) and keeps ptxas from folding the add.
template <>
__device__ __forceinline__ void keep_greater<float>(float value, int32_t n, int32_t opaque_zero, float& best,
                                                    int32_t& winner) {
#ifdef __CUDA_ARCH__
  asm("{\n\t.reg .pred greater;\n\t"
      "setp.gt.ftz.f32 greater, %2, %0;\n\t"
      "@greater add.ftz.f32 %0, %2, 0f80000000;\n\t"
      "@greater mad.lo.s32 %1, %3, %4, %5;\n\t}"
      : "+f"(best), "+r"(winner)
      : "f"(value), "r"(__float_as_int(value)), "r"(opaque_zero), "r"(n));
#else  // the tests' CPU emulation: the same arithmetic in C++
  if (value > best) {
    best = value + -0.0f;
    winner = __float_as_int(value) * opaque_zero + n;
  }
#endif
}

// A tile is kTileHeight rows x 32 * kColumns columns. blockDim = (32, kWarpsPerTile): lane l owns
// columns l, l + 32, .. of the tile and warp w rows 8w .. 8w + 7, so a thread keeps 8 x kColumns
// pixels. Two columns per lane share each marker's row factors, their loads and the loop's
// bookkeeping over twice the pixels, and halve the factor pass's share (launch_forward uses them
// for float images wider than 32 columns).
// The first tile of each image also checks its markers' values into *flaws: every marker is read
// here anyway, so the checks cost no extra pass over the inputs and no extra launch.
template <typename scalar_t, int kColumns>
__global__ void __launch_bounds__(kForwardThreads)
    forward_kernel(const scalar_t* __restrict__ means, const scalar_t* __restrict__ sigmas,
                   const scalar_t* __restrict__ amps, int n_markers, int height, int width, int tiles_x,
                   int tiles_per_image, int32_t opaque_zero, scalar_t* __restrict__ image,
                   int32_t* __restrict__ index, int32_t* __restrict__ flaws) {
  __shared__ Marker<scalar_t> markers[kMarkerBlock];
  __shared__ scalar_t col_factors[kMarkerBlock][kWarpSize * kColumns];
  __shared__ RowFactors<scalar_t> row_factors[kMarkerBlock][kWarpsPerTile];

  const int64_t b = blockIdx.x / tiles_per_image;
  const int tile = blockIdx.x % tiles_per_image;
  const int x0 = (tile % tiles_x) * kWarpSize * kColumns, y0 = (tile / tiles_x) * kTileHeight;
  const int lane = threadIdx.x, warp = threadIdx.y, thread = warp * kWarpSize + lane;
  means += b * n_markers * 2;
  sigmas += b * n_markers;
  amps += b * n_markers;

  scalar_t best[kRowsPerThread][kColumns];
  int32_t winner[kRowsPerThread][kColumns];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      // With finite values marker 0 always replaces this (other values raise after the kernel).
      best[r][c] = -std::numeric_limits<scalar_t>::infinity();
      winner[r][c] = 0;
    }
  }

  // Two barriers per marker block suffice: a thread rewrites `markers` only after the barrier
  // that ends everyone's factor pass, and the factor tables only after the barrier that follows
  // everyone's composite pass of the previous block.
  for (int m0 = 0; m0 < n_markers; m0 += kMarkerBlock) {
    const int count = min(kMarkerBlock, n_markers - m0);
    if (thread < count) {
      const int n = m0 + thread;
      const scalar_t mx = means[2 * n], my = means[2 * n + 1], sigma = sigmas[n], amp = amps[n];
      if (tile == 0) report_flaws(mx, my, sigma, amp, flaws);
      markers[thread] = make_marker(mx, my, sigma, amp);
    }
    __syncthreads();
    // Warp w fills the factors of markers w, w + 4, ...; its lanes span the tile's columns and 32 rows.
    for (int m = warp; m < count; m += kWarpsPerTile) {
      const Marker<scalar_t> marker = markers[m];
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const scalar_t dx = scalar_t(x0 + lane + kWarpSize * c) - marker.mx;
        col_factors[m][lane + kWarpSize * c] = marker.amp * axis_factor(dx * dx * marker.inv_2s2);
      }
      const scalar_t dy = scalar_t(y0 + lane) - marker.my;
      row_factors[m][lane / kRowsPerThread].of[lane % kRowsPerThread] = axis_factor(dy * dy * marker.inv_2s2);
    }
    __syncthreads();
#pragma unroll 4
    for (int m = 0; m < count; ++m) {
      scalar_t cols[kColumns];
#pragma unroll
      for (int c = 0; c < kColumns; ++c) cols[c] = col_factors[m][lane + kWarpSize * c];
      const RowFactors<scalar_t> rows = row_factors[m][warp];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
#pragma unroll
        for (int c = 0; c < kColumns; ++c) {
          keep_greater(rows.of[r] * cols[c], m0 + m, opaque_zero, best[r][c], winner[r][c]);
        }
      }
    }
  }

  const int64_t image_offset = b * height * width;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int x = x0 + lane + kWarpSize * c;
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const int y = y0 + warp * kRowsPerThread + r;
      if (x < width && y < height) {
        const int64_t pixel = image_offset + int64_t(y) * width + x;
        image[pixel] = best[r][c];
        index[pixel] = winner[r][c];
      }
    }
  }
}

// --- backward -----------------------------------------------------------------------------------

constexpr int kBackwardThreads = 256;
// Per-marker sums over pixels: d/d amp, d/d mx and d/d my before the 1/s^2 factor, d/d sigma
// before the 1/s^3 factor (as in splat_cpu.cpp).
constexpr int kTerms = 4;

template <typename scalar_t>
struct Terms {
  scalar_t of[kTerms];
};

template <typename scalar_t>
__device__ __forceinline__ Marker<scalar_t> marker_at(const scalar_t* means, const scalar_t* sigmas,
                                                      const scalar_t* amps, int n) {
  return make_marker(means[2 * n], means[2 * n + 1], sigmas[n], amps[n]);
}

// The terms of pixel (i, j), won by `marker`, with upstream gradient g. e is the forward's product
// of axis factors, flushed the same way.
template <typename scalar_t>
__device__ __forceinline__ Terms<scalar_t> pixel_terms(scalar_t g, const Marker<scalar_t>& marker, int i, int j) {
  const scalar_t dx = scalar_t(j) - marker.mx, dy = scalar_t(i) - marker.my;
  const scalar_t ex = dx * dx * marker.inv_2s2, ey = dy * dy * marker.inv_2s2;
  const scalar_t e = max(ex, ey) > kFlushExponent<scalar_t> ? scalar_t(0) : exp_neg(ex + ey);
  const scalar_t g_e = g * e, g_v = g_e * marker.amp;
  return {{g_e, g_v * dx, g_v * dy, g_v * (dx * dx + dy * dy)}};
}

template <typename scalar_t>
__device__ __forceinline__ void accumulate(Terms<scalar_t>& sum, const Terms<scalar_t>& terms) {
#pragma unroll
  for (int k = 0; k < kTerms; ++k) sum.of[k] += terms.of[k];
}

// Adds a marker's summed terms to its gradients, applying the 1/s^2 and 1/s^3 factors.
// kAtomic: other blocks add to the same marker.
template <bool kAtomic, typename scalar_t>
__device__ __forceinline__ void add_gradients(const Terms<scalar_t>& sum, scalar_t sigma, scalar_t* grad_mean,
                                              scalar_t* grad_sigma, scalar_t* grad_amp) {
  const scalar_t inv_s2 = scalar_t(1) / (sigma * sigma);
  const scalar_t values[kTerms] = {sum.of[0], sum.of[1] * inv_s2, sum.of[2] * inv_s2, sum.of[3] * inv_s2 / sigma};
  scalar_t* targets[kTerms] = {grad_amp, grad_mean, grad_mean + 1, grad_sigma};
#pragma unroll
  for (int k = 0; k < kTerms; ++k) {
    if constexpr (kAtomic) {
      atomicAdd(targets[k], values[k]);
    } else {
      *targets[k] = values[k];
    }
  }
}

// Sums `terms` over each run of consecutive lanes with equal `key`; returns true on the run's
// first lane, which then holds the run's total. All 32 lanes must call it together. In a
// segmented tree: after the step of width d, lane l holds the sum over lanes [l, min(l + 2d - 1, end)].
template <typename scalar_t>
__device__ __forceinline__ bool sum_runs(int key, Terms<scalar_t>& terms) {
  const int lane = threadIdx.x % kWarpSize;
  const int previous_key = __shfl_up_sync(kFullWarp, key, 1);
  const unsigned heads = __ballot_sync(kFullWarp, lane == 0 || key != previous_key);
  const unsigned later_heads = heads & ~((2u << lane) - 1u);  // lane 31: 2u << 31 == 0, no later heads
  const int run_end = later_heads ? __ffs(later_heads) - 2 : kWarpSize - 1;
#pragma unroll
  for (int d = 1; d < kWarpSize; d *= 2) {
#pragma unroll
    for (int k = 0; k < kTerms; ++k) {
      const scalar_t other = __shfl_down_sync(kFullWarp, terms.of[k], d);
      if (lane + d <= run_end) terms.of[k] += other;
    }
  }
  return (heads >> lane) & 1u;
}

// Consecutive pixels (in raster order) each thread of the backward takes. A winner covers runs of
// neighbouring pixels, so a thread mostly sums one run in registers, and the warp's shuffle sum
// (sum_runs, 21 shuffles) is paid once per 8 pixels instead of once per pixel.
constexpr int kPixelsPerThread = 8;
constexpr int kMaxBackwardWarps = kBackwardThreads / kWarpSize;

// Markers staged in shared memory, and summed there, per pass over a block's pixels (more markers
// take more passes). Atomic: one sum per marker, 16 KB (float) or 32 KB (double) with the staged
// markers. Deterministic: one sum per marker and warp, 36 KB.
template <typename scalar_t, bool kDeterministic>
constexpr int kMarkerChunk = kDeterministic ? 32768 / (kMaxBackwardWarps * int(sizeof(Terms<scalar_t>))) : 512;

// A thread's kPixelsPerThread pixels of a [B, H, W] tensor from `from`: with 16-byte loads (two for
// 4-byte elements) where `vector` (the host checked the alignment: aligned pointers, pixels % 4 == 0)
// and the thread has all 8, else one element at a time, `fill` past the end.
template <typename T>
__device__ __forceinline__ void load_pixels(const T* from, int count, bool vector, T fill,
                                            T (&to)[kPixelsPerThread]) {
  if (vector && count == kPixelsPerThread) {
    constexpr int kPerChunk = sizeof(int4) / sizeof(T);
#pragma unroll
    for (int c = 0; c < kPixelsPerThread / kPerChunk; ++c) {
      const int4 chunk = reinterpret_cast<const int4*>(from)[c];
      memcpy(&to[c * kPerChunk], &chunk, sizeof(int4));
    }
  } else {
#pragma unroll
    for (int k = 0; k < kPixelsPerThread; ++k) to[k] = k < count ? from[k] : fill;
  }
}

// A block of blockDim.x threads takes blockDim.x * kPixelsPerThread consecutive pixels of one image.
// Each thread sums the terms of its pixels' runs of equal winners in registers and adds each
// finished run to per-marker sums in shared memory; the run still open at its last pixel, which may
// go on in the next lanes, goes through sum_runs first. Sets *bad_index when the winner map holds a
// value outside [0, n_markers) (it is then skipped).
//   Atomic: the block's sums take shared atomics, then one global atomic per marker and gradient.
//   Deterministic: each warp has its own sums, to which its lanes add one at a time in lane order,
//   pixel step by pixel step; the block writes each marker's sum over its warps, in warp order, to
//   partials[block][marker], which reduce_partials_kernel adds in block order. Every sum is then
//   taken in an order fixed by the problem's shape: the same bits on every run.
template <typename scalar_t, bool kDeterministic>
__global__ void __launch_bounds__(kBackwardThreads)
    backward_kernel(const scalar_t* __restrict__ grad_image, const scalar_t* __restrict__ means,
                    const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ amps,
                    const int32_t* __restrict__ index, int n_markers, int64_t pixels, int width,
                    int64_t tiles_per_image, bool vector_loads, scalar_t* __restrict__ grad_means,
                    scalar_t* __restrict__ grad_sigmas, scalar_t* __restrict__ grad_amps,
                    Terms<scalar_t>* __restrict__ partials, int32_t* __restrict__ bad_index) {
  constexpr int kChunk = kMarkerChunk<scalar_t, kDeterministic>;
  __shared__ Terms<scalar_t> sums[kDeterministic ? kMaxBackwardWarps * kChunk : kChunk];  // [warp][marker] or [marker]
  __shared__ Marker<scalar_t> markers[kChunk];
  const int threads = blockDim.x, lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int sum_count = kDeterministic ? threads / kWarpSize * kChunk : kChunk;
  Terms<scalar_t>* const own_sums = kDeterministic ? sums + warp * kChunk : sums;

  const int64_t b = blockIdx.x / tiles_per_image;
  const int64_t first = (blockIdx.x % tiles_per_image) * threads * kPixelsPerThread + threadIdx.x * kPixelsPerThread;
  const int count = int(max(int64_t(0), min(int64_t(kPixelsPerThread), pixels - first)));
  means += b * n_markers * 2;
  sigmas += b * n_markers;
  amps += b * n_markers;
  const int64_t bn0 = b * n_markers;

  // The thread's pixels, read once for all marker chunks; -1: nothing to add.
  int32_t winners[kPixelsPerThread];
  scalar_t upstream[kPixelsPerThread];
  const int64_t offset = b * pixels + (count > 0 ? first : 0);  // never past the tensors
  load_pixels(index + offset, count, vector_loads, int32_t(-1), winners);
  load_pixels(grad_image + offset, count, vector_loads, scalar_t(0), upstream);
#pragma unroll
  for (int k = 0; k < kPixelsPerThread; ++k) {
    if (k < count && (winners[k] < 0 || winners[k] >= n_markers)) {
      *bad_index = 1;
      winners[k] = -1;
    }
    if (upstream[k] == scalar_t(0)) winners[k] = -1;
  }
  const int first_row = count > 0 ? int(first / width) : 0;
  const int first_column = count > 0 ? int(first % width) : 0;

  // Adds the runs of the lanes where `finished` to their sums. All 32 lanes call it together.
  const auto add_finished = [&](bool finished, int slot, const Terms<scalar_t>& run) {
    if constexpr (kDeterministic) {
      for (unsigned turns = __ballot_sync(kFullWarp, finished); turns != 0; turns &= turns - 1) {
        if (lane == __ffs(turns) - 1) accumulate(own_sums[slot], run);
        __syncwarp();
      }
    } else if (finished) {
#pragma unroll
      for (int k = 0; k < kTerms; ++k) atomicAdd(&own_sums[slot].of[k], run.of[k]);
    }
  };

  for (int c0 = 0; c0 < n_markers; c0 += kChunk) {
    const int chunk = min(kChunk, n_markers - c0);
    for (int m = threadIdx.x; m < chunk; m += threads) markers[m] = marker_at(means, sigmas, amps, c0 + m);
    for (int s = threadIdx.x; s < sum_count; s += threads) sums[s] = {{scalar_t(0), scalar_t(0), scalar_t(0), scalar_t(0)}};
    __syncthreads();
    int open = -1;  // the marker (within the chunk) of the run being summed
    Terms<scalar_t> run = {{scalar_t(0), scalar_t(0), scalar_t(0), scalar_t(0)}};
    Marker<scalar_t> marker{};
    int i = first_row;
    int j = first_column;
#pragma unroll
    for (int k = 0; k < kPixelsPerThread; ++k) {
      const int slot = winners[k] - c0;
      const bool inside = slot >= 0 && slot < chunk;  // winners[k] == -1 gives a slot < 0
      add_finished(inside && slot != open && open >= 0, open, run);
      if (inside) {
        if (slot != open) {
          open = slot;
          run = {{scalar_t(0), scalar_t(0), scalar_t(0), scalar_t(0)}};
          marker = markers[slot];
        }
        accumulate(run, pixel_terms(upstream[k], marker, i, j));
      }
      if (++j == width) {
        j = 0;
        ++i;
      }
    }
    const bool head = sum_runs(open, run);
    add_finished(head && open >= 0, open, run);
    __syncthreads();
    for (int m = threadIdx.x; m < chunk; m += threads) {
      Terms<scalar_t> sum = sums[m];
      if constexpr (kDeterministic) {
        for (int w = 1; w < threads / kWarpSize; ++w) accumulate(sum, sums[w * kChunk + m]);
        partials[blockIdx.x * int64_t(n_markers) + c0 + m] = sum;
      } else if (sum.of[0] != scalar_t(0) || sum.of[1] != scalar_t(0) || sum.of[2] != scalar_t(0) ||
                 sum.of[3] != scalar_t(0)) {
        const int64_t bn = bn0 + c0 + m;
        add_gradients<true>(sum, sigmas[c0 + m], grad_means + 2 * bn, grad_sigmas + bn, grad_amps + bn);
      }
    }
    __syncthreads();  // before the sums and markers are overwritten for the next chunk
  }
}

// Deterministic pass 2: one thread per marker adds its tile partials in tile order.
template <typename scalar_t>
__global__ void __launch_bounds__(kBackwardThreads)
    reduce_partials_kernel(const Terms<scalar_t>* __restrict__ partials, const scalar_t* __restrict__ sigmas,
                           int64_t batch, int n_markers, int64_t tiles_per_image, scalar_t* __restrict__ grad_means,
                           scalar_t* __restrict__ grad_sigmas, scalar_t* __restrict__ grad_amps) {
  const int64_t bn = blockIdx.x * int64_t(kBackwardThreads) + threadIdx.x;
  if (bn >= batch * n_markers) return;
  const int64_t b = bn / n_markers, n = bn % n_markers;
  Terms<scalar_t> sum = {{scalar_t(0), scalar_t(0), scalar_t(0), scalar_t(0)}};
  for (int64_t t = 0; t < tiles_per_image; ++t) {
    accumulate(sum, partials[(b * tiles_per_image + t) * n_markers + n]);
  }
  add_gradients<false>(sum, sigmas[bn], grad_means + 2 * bn, grad_sigmas + bn, grad_amps + bn);
}

// --- soft composites: softor, over, smoothmax ---------------------------------------------------
// The math: splatkern/reference.py (composite_reference); the same algorithm on CPU, with its
// derivation: splat_cpu_soft.cpp. Every marker adds to every pixel, so there is no winner map.
//
// Forward: the max forward's tiles, blocks, factor tables and pixels per thread, with a per-pixel
// state instead of (best, winner). softor and over keep the product of the factors 1 - v as the
// backward needs it: Q = the product of the nonzero ones and Z = how many are 0 (v = 1 exactly);
// T = prod (1 - v) is Q while Z = 0, else 0. softor out = 1 - T; over acc += v T. smoothmax: an online
// softmax (running max M, S = sum exp((v - M) / t), W = sum exp((v - M) / t) v, rescaled whenever M
// grows; out = W / S), finite at any temperature. A marker whose factors are 0 on all of a warp's
// rows, or on all of the tile's columns, has v = 0 exactly on the warp's pixels: the warp skips it
// (softor and over are unchanged by v = 0; smoothmax counts the skipped markers per thread and adds
// them as v = 0 at the end). Each pixel's image value and its saved state [B, kSoftStatePlanes, H, W]
// (csrc/splat.cpp) are written at the end: softor/over (Q, Z), smoothmax (L = M + t log S, out).
//
// Backward: the same tiles, one block per tile. Each thread reads its pixels' saved state once, then
// goes over the markers and, per marker, sums its terms over the thread's pixels in registers, over
// the warp with 6 shuffles (warp_sum_terms), and over the 4 warps in shared memory, in warp order.
// Then per marker and block: deterministic=false: one atomicAdd per gradient (add_gradients);
// deterministic=true: the block's sum goes to partials[block][marker], which reduce_partials_kernel
// adds in block order. Within a block the order of every addition is fixed, so the deterministic
// result depends on the problem's shape only.

// A pixel's running state: softor (Q, -, Z), over (Q, acc, Z), smoothmax (M, S, W). Z, a whole
// number, is kept in the dtype it is saved in.
template <typename scalar_t>
struct SoftState {
  scalar_t a, b, c;
};

template <Composite kComposite, typename scalar_t>
__device__ __forceinline__ SoftState<scalar_t> soft_start() {
  if constexpr (kComposite == kSmoothmax) {
    return {-std::numeric_limits<scalar_t>::infinity(), scalar_t(0), scalar_t(0)};
  } else {
    return {scalar_t(1), scalar_t(0), scalar_t(0)};
  }
}

// The factor 1 - v of a value v = row * col, rounded once (an explicit fma): the backward divides
// the forward's Q by it, so both kernels must form it to the same bits, whatever the compiler would
// contract. It is 0 exactly where v = 1, which with factors in [0, 1] means row = col = 1.
template <typename scalar_t>
__device__ __forceinline__ scalar_t soft_factor(scalar_t row, scalar_t col) {
  return fma(-row, col, scalar_t(1));
}

// Adds `weight` markers of value v to a smoothmax state: an online softmax, where
// d = exp(-|v - M| / t) rescales the sums where v is the new max (M = -inf at first: d = 0), else it
// is v's own weight.
template <typename scalar_t>
__device__ __forceinline__ void smooth_add(SoftState<scalar_t>& s, scalar_t v, scalar_t inv_t, scalar_t weight) {
  const bool greater = v > s.a;
  const scalar_t d = exp_neg((greater ? v - s.a : s.a - v) * inv_t);
  s.b = greater ? s.b * d + weight : s.b + weight * d;
  s.c = greater ? s.c * d + weight * v : s.c + weight * d * v;
  s.a = greater ? v : s.a;
}

// Composites a marker of value v = row * col (a row and a column factor of the forward's tables)
// into s.
template <Composite kComposite, typename scalar_t>
__device__ __forceinline__ void soft_add(SoftState<scalar_t>& s, scalar_t row, scalar_t col, scalar_t inv_t) {
  const scalar_t v = row * col;
  if constexpr (kComposite == kSmoothmax) {
    smooth_add(s, v, inv_t, scalar_t(1));
  } else {
    if constexpr (kComposite == kOver) s.b += v * (s.c == scalar_t(0) ? s.a : scalar_t(0));  // v T
    const scalar_t factor = soft_factor(row, col);
    const scalar_t zero = factor == scalar_t(0) ? scalar_t(1) : scalar_t(0);
    s.a *= factor + zero;  // 1 in place of a factor 0
    s.c += zero;
  }
}

// The image value of a pixel's final state (smoothmax: `skipped` markers of value 0 not yet added).
template <Composite kComposite, typename scalar_t>
__device__ __forceinline__ scalar_t soft_finish(SoftState<scalar_t>& s, int skipped, scalar_t inv_t) {
  if constexpr (kComposite == kSoftor) {
    return s.c == scalar_t(0) ? scalar_t(1) - s.a : scalar_t(1);
  } else if constexpr (kComposite == kOver) {
    return s.b;
  } else {
    if (skipped > 0) smooth_add(s, scalar_t(0), inv_t, scalar_t(skipped));
    return s.b > scalar_t(0) ? s.c / s.b : scalar_t(0);  // S >= 1 (M's own weight) but for N = 0
  }
}

// Writes a pixel's final state and image value `out` where its backward reads them: plane 0 at
// saved[0], plane 1 at saved[plane] (csrc/splat.cpp): softor/over (Q, Z), smoothmax (L, out).
template <Composite kComposite, typename scalar_t>
__device__ __forceinline__ void store_soft_state(const SoftState<scalar_t>& s, scalar_t out, scalar_t inv_t,
                                                 scalar_t* saved, int64_t plane) {
  if constexpr (kComposite == kSmoothmax) {
    saved[0] = s.a + log(s.b) / inv_t;  // L = M + t log S, with the weights' own t = 1 / inv_t
    saved[plane] = out;
  } else {
    saved[0] = s.a;      // Q
    saved[plane] = s.c;  // Z
  }
}

// A pixel's saved state as the soft backwards read it, with g (its upstream gradient) folded in:
// softor/over (g Q, -, Z); smoothmax (L, g, out). A pixel past the image (not `inside`) takes g = 0
// and, for smoothmax, L = +inf: its v may exceed a finite L by enough for w to overflow, and 0 * inf
// would be NaN.
template <bool kSmooth, typename scalar_t>
__device__ __forceinline__ SoftState<scalar_t> soft_backward_state(bool inside, const scalar_t* grad_image,
                                                                   const scalar_t* saved, int64_t plane) {
  const scalar_t g = inside ? grad_image[0] : scalar_t(0);
  const scalar_t first = inside ? saved[0] : (kSmooth ? std::numeric_limits<scalar_t>::infinity() : scalar_t(0));
  const scalar_t second = inside ? saved[plane] : scalar_t(0);
  if constexpr (kSmooth) {
    return {first, g, second};
  } else {
    return {g * first, scalar_t(0), second};
  }
}

// g d out / d v for a value v = row * col (formed as soft_add forms it, 1 - v too: soft_factor) from
// its pixel's soft_backward_state s:
//   softor/over: d out / d v = Q / (1 - v) if Z = 0; Q if Z = 1 and 1 - v = 0; else 0.
//   smoothmax:   d out / d v = w (1 + (v - out) / t), w = exp((v - L) / t).
// Q / (1 - v) then divides out the very factor the forward multiplied in, and L >= v, so that w <= 1
// (up to rounding) and never overflows.
template <bool kSmooth, typename scalar_t>
__device__ __forceinline__ scalar_t soft_gradient(const SoftState<scalar_t>& s, scalar_t row, scalar_t col,
                                                  scalar_t inv_t) {
  if constexpr (kSmooth) {
    const scalar_t v = row * col;
    const scalar_t w = exp_neg((s.a - v) * inv_t) * s.b;
    return w * (scalar_t(1) + (v - s.c) * inv_t);
  } else {
    const scalar_t factor = soft_factor(row, col);
    const bool zero = factor == scalar_t(0);
    return s.c == scalar_t(0) ? s.a / (zero ? scalar_t(1) : factor) : (s.c == scalar_t(1) && zero ? s.a : scalar_t(0));
  }
}

// A marker block's parameters and factor tables for one tile. live[m] bit w: marker m's value may be
// nonzero on warp w's pixels (some factor of the warp's rows and some of the tile's columns is).
template <typename scalar_t, int kColumns>
struct SoftTables {
  Marker<scalar_t> markers[kMarkerBlock];
  scalar_t cols[kMarkerBlock][kWarpSize * kColumns];
  RowFactors<scalar_t> rows[kMarkerBlock][kWarpsPerTile];
  unsigned live[kMarkerBlock];
};

// Fills the tables of markers [0, count) of `t.markers` for the tile at (x0, y0): column factors
// amp * g(dx) (kScaled, the forward's, as forward_kernel forms them) or g(dx), row factors g(dy).
template <bool kScaled, typename scalar_t, int kColumns>
__device__ __forceinline__ void fill_soft_tables(SoftTables<scalar_t, kColumns>& t, int count, int x0, int y0) {
  const int lane = threadIdx.x, warp = threadIdx.y;
  for (int m = warp; m < count; m += kWarpsPerTile) {
    const Marker<scalar_t> marker = t.markers[m];
    bool any_column = false;
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      const scalar_t dx = scalar_t(x0 + lane + kWarpSize * c) - marker.mx;
      const scalar_t factor = axis_factor(dx * dx * marker.inv_2s2);
      const scalar_t col = kScaled ? marker.amp * factor : factor;
      t.cols[m][lane + kWarpSize * c] = col;
      any_column |= col != scalar_t(0);
    }
    const scalar_t dy = scalar_t(y0 + lane) - marker.my;
    const scalar_t row = axis_factor(dy * dy * marker.inv_2s2);
    t.rows[m][lane / kRowsPerThread].of[lane % kRowsPerThread] = row;
    const unsigned columns = __ballot_sync(kFullWarp, any_column);
    const unsigned rows = __ballot_sync(kFullWarp, row != scalar_t(0));
    if (lane == 0) {
      unsigned live = 0;
#pragma unroll
      for (int w = 0; w < kWarpsPerTile; ++w) {
        live |= (columns != 0 && ((rows >> (w * kRowsPerThread)) & ((1u << kRowsPerThread) - 1u)) != 0) ? 1u << w : 0u;
      }
      t.live[m] = live;
    }
  }
}

// The forward of a soft composite: forward_kernel's tiles and staging (see there), the per-pixel
// state of kComposite, and the state the backward reads into `saved` (see the section's top). The
// first tile of each image checks its markers' values into *flaws, with kAmpsOutsideUnit where the
// mode needs amps in [0, 1].
template <typename scalar_t, int kColumns, Composite kComposite>
__global__ void __launch_bounds__(kForwardThreads)
    forward_soft_kernel(const scalar_t* __restrict__ means, const scalar_t* __restrict__ sigmas,
                        const scalar_t* __restrict__ amps, int n_markers, int height, int width, int tiles_x,
                        int tiles_per_image, scalar_t inv_t, scalar_t* __restrict__ image,
                        scalar_t* __restrict__ saved, int32_t* __restrict__ flaws) {
  __shared__ SoftTables<scalar_t, kColumns> t;
  const int64_t b = blockIdx.x / tiles_per_image;
  const int tile = blockIdx.x % tiles_per_image;
  const int x0 = (tile % tiles_x) * kWarpSize * kColumns, y0 = (tile / tiles_x) * kTileHeight;
  const int lane = threadIdx.x, warp = threadIdx.y, thread = warp * kWarpSize + lane;
  means += b * n_markers * 2;
  sigmas += b * n_markers;
  amps += b * n_markers;

  SoftState<scalar_t> state[kRowsPerThread][kColumns];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
#pragma unroll
    for (int c = 0; c < kColumns; ++c) state[r][c] = soft_start<kComposite, scalar_t>();
  }
  int skipped = 0;  // markers of value 0 on all of this thread's pixels, not composited
  // Markers per loop step: 2 for float; 1 for double, whose exponentials (smoothmax) would otherwise
  // take ptxas past 128 registers and into spills.
  [[maybe_unused]] constexpr int kUnroll = std::is_same_v<scalar_t, float> ? 2 : 1;  // unused where emulated

  // Barriers as in forward_kernel: the composite pass reads the factor tables only.
  for (int m0 = 0; m0 < n_markers; m0 += kMarkerBlock) {
    const int count = min(kMarkerBlock, n_markers - m0);
    if (thread < count) {
      const int n = m0 + thread;
      const scalar_t mx = means[2 * n], my = means[2 * n + 1], sigma = sigmas[n], amp = amps[n];
      if (tile == 0) {
        report_flaws(mx, my, sigma, amp, flaws);
        report_unit_amp<kComposite>(amp, flaws);
      }
      t.markers[thread] = make_marker(mx, my, sigma, amp);
    }
    __syncthreads();
    fill_soft_tables<true>(t, count, x0, y0);
    __syncthreads();
#pragma unroll kUnroll
    for (int m = 0; m < count; ++m) {
      if (!((t.live[m] >> warp) & 1u)) {  // uniform across the warp
        ++skipped;
        continue;
      }
      scalar_t cols[kColumns];
#pragma unroll
      for (int c = 0; c < kColumns; ++c) cols[c] = t.cols[m][lane + kWarpSize * c];
      const RowFactors<scalar_t> rows = t.rows[m][warp];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
#pragma unroll
        for (int c = 0; c < kColumns; ++c) soft_add<kComposite>(state[r][c], rows.of[r], cols[c], inv_t);
      }
    }
  }

  const int64_t pixels = int64_t(height) * width;
  image += b * pixels;
  saved += b * kSoftStatePlanes * pixels;
  // Row by row: in column order, ptxas spilled registers here (float, two columns, softor, sm_80).
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int y = y0 + warp * kRowsPerThread + r;
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      const int x = x0 + lane + kWarpSize * c;
      const scalar_t out = soft_finish<kComposite>(state[r][c], skipped, inv_t);
      if (x < width && y < height) {
        const int64_t pixel = int64_t(y) * width + x;
        image[pixel] = out;
        store_soft_state<kComposite>(state[r][c], out, inv_t, saved + pixel, pixels);
      }
    }
  }
}

// Sums each of a lane's kTerms = 4 terms over the warp; lane l returns the total of term l / 8. Two
// transposing steps (lanes keep half the terms and swap the other half) and three butterfly steps:
// 6 shuffles instead of 20, in an order fixed by the lane numbers.
template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum_terms(const Terms<scalar_t>& terms, int lane) {
  static_assert(kTerms == 4, "two transposing steps take 4 terms to 1");
  const bool upper16 = lane & 16;
  scalar_t keep0 = upper16 ? terms.of[2] : terms.of[0], keep1 = upper16 ? terms.of[3] : terms.of[1];
  const scalar_t send0 = upper16 ? terms.of[0] : terms.of[2], send1 = upper16 ? terms.of[1] : terms.of[3];
  keep0 += __shfl_xor_sync(kFullWarp, send0, 16);
  keep1 += __shfl_xor_sync(kFullWarp, send1, 16);
  const bool upper8 = lane & 8;
  scalar_t total = upper8 ? keep1 : keep0;
  total += __shfl_xor_sync(kFullWarp, upper8 ? keep0 : keep1, 8);
#pragma unroll
  for (int d = 4; d >= 1; d /= 2) total += __shfl_xor_sync(kFullWarp, total, d);
  return total;
}

// The backward of softor and over (kSmooth = false; their derivatives are equal) or smoothmax, for
// one tile of one image per block (layout and barriers as forward_soft_kernel), from the state the
// forward saved (see the section's top). Per pixel, g d out / d v_n is soft_gradient's, with v_n
// formed as the forward formed it, row * (amp * col).
// Marker n's terms at a pixel, h = g (d out / d v_n) e_n: (h, h dx, h dy, h (dx^2 + dy^2)); the last
// three are multiplied by amp once per marker and block, and add_gradients applies 1/s^2, 1/s^3.
template <typename scalar_t, int kColumns, bool kSmooth, bool kDeterministic>
__global__ void __launch_bounds__(kForwardThreads)
    backward_soft_kernel(const scalar_t* __restrict__ grad_image, const scalar_t* __restrict__ means,
                         const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ amps,
                         const scalar_t* __restrict__ saved, int n_markers, int height, int width, int tiles_x,
                         int tiles_per_image, scalar_t inv_t, scalar_t* __restrict__ grad_means,
                         scalar_t* __restrict__ grad_sigmas, scalar_t* __restrict__ grad_amps,
                         Terms<scalar_t>* __restrict__ partials) {
  __shared__ SoftTables<scalar_t, kColumns> t;
  __shared__ Terms<scalar_t> warp_sums[kWarpsPerTile][kMarkerBlock];
  const int64_t b = blockIdx.x / tiles_per_image;
  const int tile = blockIdx.x % tiles_per_image;
  const int x0 = (tile % tiles_x) * kWarpSize * kColumns, y0 = (tile / tiles_x) * kTileHeight;
  const int lane = threadIdx.x, warp = threadIdx.y, thread = warp * kWarpSize + lane;
  means += b * n_markers * 2;
  sigmas += b * n_markers;
  amps += b * n_markers;

  // The thread's pixels, read once for all markers (soft_backward_state).
  const int64_t pixels = int64_t(height) * width;
  grad_image += b * pixels;
  saved += b * kSoftStatePlanes * pixels;
  SoftState<scalar_t> state[kRowsPerThread][kColumns];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int y = y0 + warp * kRowsPerThread + r;
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      const int x = x0 + lane + kWarpSize * c;
      const bool inside = x < width && y < height;
      const int64_t pixel = inside ? int64_t(y) * width + x : 0;
      state[r][c] = soft_backward_state<kSmooth>(inside, grad_image + pixel, saved + pixel, pixels);
    }
  }

  // Per marker block: stage the markers and their bare factor tables (the terms take e = row * col),
  // then each marker's terms, summed per block.
  for (int m0 = 0; m0 < n_markers; m0 += kMarkerBlock) {
    const int count = min(kMarkerBlock, n_markers - m0);
    if (thread < count) t.markers[thread] = marker_at(means, sigmas, amps, m0 + thread);
    __syncthreads();
    fill_soft_tables<false>(t, count, x0, y0);
    __syncthreads();
    for (int m = 0; m < count; ++m) {
      if (!((t.live[m] >> warp) & 1u)) {  // uniform across the warp: e = 0 on all its pixels
        if (lane < kTerms) warp_sums[warp][m].of[lane] = scalar_t(0);
        continue;
      }
      const Marker<scalar_t> marker = t.markers[m];
      // scaled: amp * col, the forward's column factor, for v.
      scalar_t cols[kColumns], scaled[kColumns], dx[kColumns];
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        cols[c] = t.cols[m][lane + kWarpSize * c];
        scaled[c] = marker.amp * cols[c];
        dx[c] = scalar_t(x0 + lane + kWarpSize * c) - marker.mx;
      }
      const RowFactors<scalar_t> rows = t.rows[m][warp];
      Terms<scalar_t> sum = {{scalar_t(0), scalar_t(0), scalar_t(0), scalar_t(0)}};
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
        const scalar_t dy = scalar_t(y0 + warp * kRowsPerThread + r) - marker.my;
#pragma unroll
        for (int c = 0; c < kColumns; ++c) {
          const scalar_t e = rows.of[r] * cols[c];
          const scalar_t h = soft_gradient<kSmooth>(state[r][c], rows.of[r], scaled[c], inv_t) * e;
          sum.of[0] += h;
          sum.of[1] += h * dx[c];
          sum.of[2] += h * dy;
          sum.of[3] += h * (dx[c] * dx[c] + dy * dy);
        }
      }
      const scalar_t total = warp_sum_terms(sum, lane);
      if (lane % (kWarpSize / kTerms) == 0) warp_sums[warp][m].of[lane / (kWarpSize / kTerms)] = total;
    }
    __syncthreads();
    if (thread < count) {
      const int n = m0 + thread;
      Terms<scalar_t> sum = warp_sums[0][thread];
#pragma unroll
      for (int w = 1; w < kWarpsPerTile; ++w) accumulate(sum, warp_sums[w][thread]);
      const scalar_t amp = amps[n];
#pragma unroll
      for (int k = 1; k < kTerms; ++k) sum.of[k] *= amp;
      if constexpr (kDeterministic) {
        partials[blockIdx.x * int64_t(n_markers) + n] = sum;
      } else if (sum.of[0] != scalar_t(0) || sum.of[1] != scalar_t(0) || sum.of[2] != scalar_t(0) ||
                 sum.of[3] != scalar_t(0)) {
        const int64_t bn = b * n_markers + n;
        add_gradients<true>(sum, sigmas[n], grad_means + 2 * bn, grad_sigmas + bn, grad_amps + bn);
      }
    }
    // No barrier needed here: the next block's staging writes t.markers (read above before the last
    // barrier), and warp_sums are written again only after its two barriers.
  }
}

// --- launches -----------------------------------------------------------------------------------
// The kernels each op runs, in order, with their grids: written once for splat_cuda.cu, whose
// `launch` puts a kernel on the current stream, and for the CPU emulation in the tests. `launch` is
// called as launch(what, kernel, blocks, threads, kernel arguments...); `what` names the pass in the
// error for a grid too large.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

template <typename scalar_t, typename Launch>
void launch_forward(const Launch& launch, const scalar_t* means, const scalar_t* sigmas, const scalar_t* amps,
                    int64_t batch, int n_markers, int height, int width, scalar_t* image, int32_t* index,
                    int32_t* flaws) {
  // Two columns per lane where the image is wider than one lane's worth; double's factors for two
  // would not fit in shared memory (50 KB).
  auto kernel = forward_kernel<scalar_t, 1>;
  int columns = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width > kWarpSize) kernel = forward_kernel<scalar_t, 2>, columns = 2;
  }
  const int64_t tiles_x = ceil_div(width, kWarpSize * columns);
  const int64_t tiles_per_image = tiles_x * ceil_div(height, kTileHeight);
  launch("the forward", kernel, batch * tiles_per_image, dim3(kWarpSize, kWarpsPerTile), means, sigmas, amps,
         n_markers, height, width, int(tiles_x), int(tiles_per_image), /*opaque_zero=*/0, image, index, flaws);
}

// The backward's blocks: as many whole warps as an image's pixels need, up to kBackwardThreads.
struct BackwardGrid {
  int64_t threads, tiles_per_image;
};
inline BackwardGrid backward_grid(int64_t pixels) {
  const int64_t threads = std::min<int64_t>(kBackwardThreads, ceil_div(pixels, kWarpSize * kPixelsPerThread) * kWarpSize);
  return {threads, ceil_div(pixels, threads * kPixelsPerThread)};
}

// The scratch the deterministic backward needs: one Terms per (block, marker).
inline int64_t deterministic_partials(int64_t batch, int64_t pixels, int64_t n_markers) {
  return batch * backward_grid(pixels).tiles_per_image * n_markers;
}

// The gradients must be zero before the atomic backward, which adds into them; the deterministic
// one writes every element. `partials` (deterministic only): deterministic_partials(...) Terms.
template <typename scalar_t, typename Launch>
void launch_backward(const Launch& launch, bool deterministic, const scalar_t* grad_image, const scalar_t* means,
                     const scalar_t* sigmas, const scalar_t* amps, const int32_t* index, int64_t batch,
                     int n_markers, int64_t pixels, int width, scalar_t* grad_means, scalar_t* grad_sigmas,
                     scalar_t* grad_amps, Terms<scalar_t>* partials, int32_t* bad_index) {
  const BackwardGrid grid = backward_grid(pixels);
  const bool vector_loads = pixels % 4 == 0 && aligned16(grad_image) && aligned16(index);
  const auto kernel = deterministic ? backward_kernel<scalar_t, true> : backward_kernel<scalar_t, false>;
  launch(deterministic ? "the deterministic backward" : "the backward", kernel, batch * grid.tiles_per_image,
         dim3(unsigned(grid.threads)), grad_image, means, sigmas, amps, index, n_markers, pixels, width,
         grid.tiles_per_image, vector_loads, grad_means, grad_sigmas, grad_amps, partials, bad_index);
  if (deterministic) {
    launch("the deterministic backward", reduce_partials_kernel<scalar_t>, ceil_div(batch * n_markers, kBackwardThreads),
           dim3(kBackwardThreads), static_cast<const Terms<scalar_t>*>(partials), sigmas, batch, n_markers,
           grid.tiles_per_image, grad_means, grad_sigmas, grad_amps);
  }
}

// The soft composites' tiles: forward_kernel's (launch_forward).
struct SoftGrid {
  int columns;
  int64_t tiles_x, tiles_per_image;
};
template <typename scalar_t>
SoftGrid soft_grid(int64_t height, int64_t width) {
  const int columns = std::is_same_v<scalar_t, float> && width > kWarpSize ? 2 : 1;
  const int64_t tiles_x = ceil_div(width, kWarpSize * columns);
  return {columns, tiles_x, tiles_x * ceil_div(height, kTileHeight)};
}

// The scratch the deterministic soft backward needs: one Terms per (block, marker).
template <typename scalar_t>
int64_t soft_deterministic_partials(int64_t batch, int64_t height, int64_t width, int64_t n_markers) {
  return batch * soft_grid<scalar_t>(height, width).tiles_per_image * n_markers;
}

// Calls body(std::integral_constant<int, kColumns>) with the soft grid's column count; double's
// tables for two columns would not fit in shared memory, so they are never instantiated.
template <typename scalar_t, typename Body>
void with_soft_columns(const SoftGrid& grid, const Body& body) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (grid.columns == 2) return body(std::integral_constant<int, 2>());
  }
  body(std::integral_constant<int, 1>());
}

// The image of a soft composite (not kMax) and the state its backward reads, `saved`
// [B, kSoftStatePlanes, H, W]. n_markers may be 0: the image is then all zeros (the host draws that
// case itself, state included, and nothing reads that state). Checks the markers' values into
// *flaws, as launch_forward does, plus kAmpsOutsideUnit for softor and over.
template <typename scalar_t, typename Launch>
void launch_soft_forward(const Launch& launch, Composite composite, double temperature, const scalar_t* means,
                         const scalar_t* sigmas, const scalar_t* amps, int64_t batch, int n_markers, int height,
                         int width, scalar_t* image, scalar_t* saved, int32_t* flaws) {
  const SoftGrid grid = soft_grid<scalar_t>(height, width);
  const scalar_t inv_t = scalar_t(1.0 / temperature);
  with_soft_columns<scalar_t>(grid, [&](auto columns) {
    constexpr int kColumns = decltype(columns)::value;
    const auto run = [&](auto kernel) {
      launch("the forward", kernel, batch * grid.tiles_per_image, dim3(kWarpSize, kWarpsPerTile), means, sigmas,
             amps, n_markers, height, width, int(grid.tiles_x), int(grid.tiles_per_image), inv_t, image, saved,
             flaws);
    };
    if (composite == kSoftor) {
      run(forward_soft_kernel<scalar_t, kColumns, kSoftor>);
    } else if (composite == kOver) {
      run(forward_soft_kernel<scalar_t, kColumns, kOver>);
    } else {
      run(forward_soft_kernel<scalar_t, kColumns, kSmoothmax>);
    }
  });
}

// The gradients of a soft composite (not kMax) from the image's gradient [B, H, W] and the state
// its forward saved; nothing to do where there are no markers or pixels. As launch_backward: the
// gradients must be zero before the atomic backward; the deterministic one writes every element;
// `partials` (deterministic only): soft_deterministic_partials(...) Terms.
template <typename scalar_t, typename Launch>
void launch_soft_backward(const Launch& launch, Composite composite, double temperature, bool deterministic,
                          const scalar_t* grad_image, const scalar_t* means, const scalar_t* sigmas,
                          const scalar_t* amps, const scalar_t* saved, int64_t batch, int n_markers, int height,
                          int width, scalar_t* grad_means, scalar_t* grad_sigmas, scalar_t* grad_amps,
                          Terms<scalar_t>* partials) {
  if (batch == 0 || n_markers == 0 || height == 0 || width == 0) return;
  const SoftGrid grid = soft_grid<scalar_t>(height, width);
  const scalar_t inv_t = scalar_t(1.0 / temperature);
  const char* what = deterministic ? "the deterministic backward" : "the backward";
  with_soft_columns<scalar_t>(grid, [&](auto columns) {
    constexpr int kColumns = decltype(columns)::value;
    const auto run = [&](auto kernel) {
      launch(what, kernel, batch * grid.tiles_per_image, dim3(kWarpSize, kWarpsPerTile), grad_image, means, sigmas,
             amps, saved, n_markers, height, width, int(grid.tiles_x), int(grid.tiles_per_image), inv_t, grad_means,
             grad_sigmas, grad_amps, partials);
    };
    const bool smooth = composite == kSmoothmax;
    if (smooth) {
      deterministic ? run(backward_soft_kernel<scalar_t, kColumns, true, true>)
                    : run(backward_soft_kernel<scalar_t, kColumns, true, false>);
    } else {
      deterministic ? run(backward_soft_kernel<scalar_t, kColumns, false, true>)
                    : run(backward_soft_kernel<scalar_t, kColumns, false, false>);
    }
  });
  if (deterministic) {
    launch(what, reduce_partials_kernel<scalar_t>, ceil_div(batch * n_markers, kBackwardThreads),
           dim3(kBackwardThreads), static_cast<const Terms<scalar_t>*>(partials), sigmas, batch, n_markers,
           grid.tiles_per_image, grad_means, grad_sigmas, grad_amps);
  }
}

}  // namespace splatkern::kernels
