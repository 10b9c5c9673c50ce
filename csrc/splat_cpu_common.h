// The building blocks of the CPU kernels (splat_cpu.cpp: max; splat_cpu_soft.cpp: the soft
// composites; stroke_cpu.cpp: strokes): tiling, the per-ISA dispatch of vectorised loops, and the separable factor tables.
//
// Work is split into tiles of image rows; a tile's pixels never see another tile's, so a forward is
// exact whatever the thread count. The tiling depends on the problem shape only, and the backwards
// sum each tile's per-marker partials in tile order, so their results do not depend on the thread
// count either.
#pragma once

#include "splat.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

namespace splatkern {
namespace cpu {

// Pixels per tile: enough work per tile to amortise the factor tables, few enough tiles that
// small batches of large images still fill every core.
constexpr int64_t kTilePixels = 4096;
// Batches at least this large are parallel enough with one tile per image, which keeps the
// backward's partial sums as small as the gradients themselves.
constexpr int64_t kBatchForWholeImages = 16;

struct Tiling {
  int64_t rows_per_tile;
  int64_t tiles_per_image;

  Tiling(int64_t batch, int64_t height, int64_t width) {
    rows_per_tile = batch >= kBatchForWholeImages ? height : std::clamp<int64_t>(kTilePixels / width, 1, height);
    tiles_per_image = (height + rows_per_tile - 1) / rows_per_tile;
  }
};

// One work item: image b, rows [row0, row0 + rows).
struct Tile {
  int64_t b, row0, rows;
};

// Tiles of about kTilePixels whatever the batch: the stroke kernels skip segments per tile, which
// small tiles make effective.
inline Tiling pixel_tiling(int64_t height, int64_t width) { return Tiling(/*batch=*/1, height, width); }

inline Tile tile_at(const Tiling& tiling, int64_t item, int64_t height) {
  const int64_t b = item / tiling.tiles_per_image;
  const int64_t row0 = (item % tiling.tiles_per_image) * tiling.rows_per_tile;
  return {b, row0, std::min(tiling.rows_per_tile, height - row0)};
}

// Calls body(item, scratch) for every item in [0, n_items) on torch's threads, each thread with its
// own default-constructed Scratch, reused across its items. Items are handed out in chunks on
// demand: with at::parallel_for's static split, a thread whose core is busy with other work holds up
// the whole call; taking chunks as they finish lets the other threads cover for it. Results depend only on the items, never on which thread ran them.
template <typename Scratch, typename Body>
void parallel_items(int64_t n_items, const Body& body) {
  // Enough chunks that an uneven finish costs little; few enough that taking them costs nothing.
  constexpr int64_t kChunksPerWorker = 8;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_items));
  const int64_t chunk = std::max<int64_t>(1, n_items / (workers * kChunksPerWorker));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch scratch;
    for (int64_t begin; (begin = next.fetch_add(chunk, std::memory_order_relaxed)) < n_items;) {
      for (int64_t item = begin; item < std::min(begin + chunk, n_items); ++item) body(item, scratch);
    }
  });
}

// The hot loops are written branch-free so the compiler vectorises them, and each is compiled once
// per ISA. All of a process's vectorised loops (factor tables, compositing, the backward's pixel
// sums) run one ISA: the widest the CPU has, or the one SPLATKERN_CPU_ISA names (avx512f, avx2,
// sse2: how the narrower ones are tested on a machine that has them all). Every ISA gives the same
// bits: no loop's order of operations depends on the vector width, and setup.py builds with
// -ffp-contract=off, without which AVX-512 (which has FMA) would fuse multiply-adds that the
// narrower ISAs round twice.
enum class CpuIsa { kVector128, kAvx2, kAvx512 };

inline CpuIsa cpu_isa() {
  static const CpuIsa chosen = [] {
    CpuIsa best = CpuIsa::kVector128;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2")) best = CpuIsa::kAvx2;
    if (__builtin_cpu_supports("avx512f")) best = CpuIsa::kAvx512;
#endif
    const char* asked = std::getenv("SPLATKERN_CPU_ISA");
    if (asked == nullptr || *asked == '\0') return best;
    const std::string name(asked);
    TORCH_CHECK_VALUE(name == "avx512f" || name == "avx2" || name == "sse2",
                      message("SPLATKERN_CPU_ISA must be avx512f, avx2 or sse2, got '", name, "'"));
    const CpuIsa wanted = name == "avx512f" ? CpuIsa::kAvx512 : name == "avx2" ? CpuIsa::kAvx2 : CpuIsa::kVector128;
    TORCH_CHECK_VALUE(wanted <= best, message("SPLATKERN_CPU_ISA=", name, ": this CPU does not have it"));
    return wanted;
  }();
  return chosen;
}

// Kernel::run<kVectorBytes>(args...) inlined (it is always_inline) into one entry point per ISA, so
// that its loops are vectorised for that ISA; kVectorBytes is the ISA's register width.
#if defined(__x86_64__) && defined(__GNUC__)
template <typename Kernel, typename... Args>
__attribute__((target("avx512f"))) auto run_avx512(Args... args) {
  return Kernel::template run<64>(args...);
}

template <typename Kernel, typename... Args>
__attribute__((target("avx2"))) auto run_avx2(Args... args) {
  return Kernel::template run<32>(args...);
}
#endif

template <typename Kernel, typename... Args>
auto run_128(Args... args) {
  return Kernel::template run<16>(args...);
}

// Kernel::run on the process's ISA (cpu_isa).
template <typename Kernel, typename... Args>
auto run_on_cpu_isa(Args... args) {
  switch (cpu_isa()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case CpuIsa::kAvx512:
      return run_avx512<Kernel>(args...);
    case CpuIsa::kAvx2:
      return run_avx2<Kernel>(args...);
#endif
    default:
      return run_128<Kernel>(args...);
  }
}

// Factor tables are padded to a whole number of the widest vector (AVX-512's 64 bytes).
constexpr int64_t kWidestVectorBytes = 64;
template <typename scalar_t>
constexpr int64_t kWidestLanes = kWidestVectorBytes / static_cast<int64_t>(sizeof(scalar_t));

// Scratch tables start on a vector boundary: from malloc's 16-byte alignment, a run-dependent half
// of the compositing loop's 64-byte factor loads crossed a cache line (two loads each).
template <typename T>
struct WidestVectorAligned {
  using value_type = T;
  WidestVectorAligned() = default;
  template <typename U>
  WidestVectorAligned(const WidestVectorAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlignment); }
  friend bool operator==(const WidestVectorAligned&, const WidestVectorAligned&) { return true; }
  friend bool operator!=(const WidestVectorAligned&, const WidestVectorAligned&) { return false; }

 private:
  static constexpr std::align_val_t kAlignment{kWidestVectorBytes};
};

template <typename T>
using AlignedVector = std::vector<T, WidestVectorAligned<T>>;

// __builtin_bit_cast, not C++20's std::bit_cast: torch < 2.13 builds extensions as C++17.
//
// scale * exp(-x) for x in [0, kFlushExponent<float>]: Cephes' expf polynomial (about 1 ulp), inlined
// and branch-free so the factor loops vectorise; libm's expf, a call per element, would make the
// (W + H) exps per marker cost more than the W * H pixel updates. The polynomial is evaluated by
// Estrin's scheme, and scale times 2^n off the critical path: the factor loop is bound by this
// chain's latency, which Horner's scheme makes several times deeper. Out-of-range x gives garbage that the caller
// masks off.
//
// Written once for `float` (Bits = int32_t) and for GCC vectors of floats (Bits = the int vector of
// their width), which the soft composites' loops use: every lane computes exactly what the scalar does.
template <typename Float, typename Bits>
inline __attribute__((always_inline)) Float scaled_exp_neg_float(Float x, Float scale) {
  const Float shifted = -x * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer
  const Float n = shifted - 12582912.0f;
  const Bits n_bits = __builtin_bit_cast(Bits, shifted) - 0x4B400000;
  const Float r = -x - n * 0.693359375f + n * 2.12194440e-4f;
  // exp(r) = 1 + r + r^2 (c0 + c1 r + ... + c5 r^5), the brackets paired as (c0 + c1 r) + r^2 (...).
  const Float r2 = r * r;
  const Float c01 = 5.0000001201e-1f + 1.6666665459e-1f * r;
  const Float c23 = 4.1665795894e-2f + 8.3334519073e-3f * r;
  const Float c45 = 1.3981999507e-3f + 1.9875691500e-4f * r;
  const Float p = c01 + r2 * (c23 + r2 * c45);
  const Float scaled_power = scale * __builtin_bit_cast(Float, (n_bits + 127) << 23);  // scale * 2^n
  return (r2 * p + (r + 1.0f)) * scaled_power;
}

inline __attribute__((always_inline)) float scaled_exp_neg(float x, float scale) {
  return scaled_exp_neg_float<float, int32_t>(x, scale);
}

inline double scaled_exp_neg(double x, double scale) { return scale * std::exp(-x); }

// `value` where `keep`, else +0: a bit mask rather than a select, which the vectoriser if-converts.
template <typename scalar_t>
inline __attribute__((always_inline)) scalar_t keep_or_zero(bool keep, scalar_t value) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  return __builtin_bit_cast(scalar_t, __builtin_bit_cast(bits_t, value) & -static_cast<bits_t>(keep));
}

// out[n * stride + k] = scale_n * exp(-((origin - centre_n + k) / sigma_n)^2 / 2), flushed: one axis
// of every marker's Gaussian, centre_n = centres[2 n] (axis 0: x, 1: y), scale_n = scales[n] or 1.
// One call for all markers: the factor loops are short (a tile's width or rows), so a call per
// marker and axis would cost as much again in dispatch. `stride` is a whole number of the widest vectors,
// so the inner loop has a fixed trip count and no remainder. A multiply by 1/sigma, not a divide
// (a 512-bit divide costs as much as the rest of the loop): clamped to the largest finite value, so
// a sigma whose reciprocal overflows still gives 0 at the centre and a flushed 0 elsewhere, as a
// divide would.
template <typename scalar_t>
inline __attribute__((always_inline)) void axis_factors(scalar_t* __restrict__ out, int64_t stride, int64_t n_markers,
                                                        const scalar_t* __restrict__ centres, scalar_t origin,
                                                        const scalar_t* __restrict__ sigmas,
                                                        const scalar_t* __restrict__ scales) {
  constexpr int32_t lanes = kWidestLanes<scalar_t>;
  for (int64_t n = 0; n < n_markers; ++n) {
    const scalar_t offset = origin - centres[2 * n], scale = scales ? scales[n] : scalar_t(1);
    const scalar_t inv_sigma = std::min(scalar_t(1) / sigmas[n], std::numeric_limits<scalar_t>::max());
    scalar_t* __restrict__ row = out + n * stride;
    for (int32_t k0 = 0; k0 < static_cast<int32_t>(stride); k0 += lanes) {
      scalar_t* __restrict__ chunk = row + k0;
      for (int32_t lane = 0; lane < lanes; ++lane) {
        const scalar_t z = (offset + scalar_t(k0 + lane)) * inv_sigma;
        const scalar_t exponent = scalar_t(0.5) * z * z;
        chunk[lane] = keep_or_zero(exponent <= kFlushExponent<scalar_t>, scaled_exp_neg(exponent, scale));
      }
    }
  }
}

// The factor loop's fixed trip count is a whole number of the widest vectors: each ISA's vectoriser
// sizes it to its own registers.
struct AxisFactors {
  template <int64_t kVectorBytes, typename... Args>
  static inline __attribute__((always_inline)) void run(Args... args) {
    axis_factors(args...);
  }
};

// Both axes of every marker's Gaussian over one tile: cols [N, col_stride] = scale * g(j - mx),
// rows [N, row_stride] = g(row0 + r - my). Separability: (W + rows) exps per marker, not W * rows.
// Strides are whole vectors, so the factor loops have no scalar remainder; the entries past
// `width` / `tile.rows` are finite and never read into a result.
template <typename scalar_t>
struct FactorTables {
  AlignedVector<scalar_t> cols, rows;
  int64_t col_stride = 0, row_stride = 0;

  // `amps` scales the column factors (the forward); nullptr gives the bare Gaussian (the backward).
  void fill(const scalar_t* means, const scalar_t* sigmas, const scalar_t* amps, int64_t n_markers, int64_t width,
            const Tile& tile) {
    constexpr int64_t lanes = kWidestLanes<scalar_t>;
    col_stride = (width + lanes - 1) / lanes * lanes;
    row_stride = (tile.rows + lanes - 1) / lanes * lanes;
    cols.resize(n_markers * col_stride);
    rows.resize(n_markers * row_stride);
    run_on_cpu_isa<AxisFactors>(cols.data(), col_stride, n_markers, means, scalar_t(0), sigmas, amps);
    run_on_cpu_isa<AxisFactors>(rows.data(), row_stride, n_markers, means + 1, scalar_t(tile.row0), sigmas,
                                static_cast<const scalar_t*>(nullptr));
  }
};

// The soft and stroke kernels' loops are written on GCC's portable vector types as wide as the ISA's
// registers (kBytes; GCC's vectoriser gives up on their pixel loops). Supports and state tables come
// in whole widest vectors, which kParts such vectors make up. Every lane does the same operations
// in the same order whatever kBytes is, and each widest-vector lane keeps its own running sums, so
// every ISA gives the same bits.
template <typename scalar_t, int64_t kBytes>
struct Vec {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  typedef scalar_t V __attribute__((vector_size(kBytes)));
  typedef bits_t Mask __attribute__((vector_size(kBytes)));  // what a comparison gives: all ones or 0
  static constexpr int64_t kCount = kBytes / static_cast<int64_t>(sizeof(scalar_t));
  static constexpr int64_t kParts = kWidestVectorBytes / kBytes;

  static inline __attribute__((always_inline)) V load(const scalar_t* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static inline __attribute__((always_inline)) void store(scalar_t* p, V v) { std::memcpy(p, &v, sizeof v); }
  static inline __attribute__((always_inline)) V splat(scalar_t x) { return V{} + x; }
  static inline __attribute__((always_inline)) V iota() {
    V v;
    for (int64_t k = 0; k < kCount; ++k) v[k] = scalar_t(k);
    return v;
  }
  // `value` where `keep`, else +0 (a bit mask: exact for any value, inf and NaN included)
  static inline __attribute__((always_inline)) V keep_or_zero(Mask keep, V value) { return (V)((Mask)value & keep); }

  // scale * exp(-x), flushed to 0 unless 0 <= x <= the flush exponent, as the axis factors are.
  // float: scaled_exp_neg's polynomial on the vector; double: scaled_exp_neg, lane by lane.
  static inline __attribute__((always_inline)) V flushed_exp_neg(V x, V scale) {
    const Mask keep = (x >= scalar_t(0)) & (x <= kFlushExponent<scalar_t>);
    V value;
    if constexpr (std::is_same_v<scalar_t, float>) {
      value = scaled_exp_neg_float<V, Mask>(x, scale);
    } else {
      for (int64_t k = 0; k < kCount; ++k) value[k] = scaled_exp_neg(x[k], scale[k]);
    }
    return keep_or_zero(keep, value);
  }
};

// The value checks: plain passes, without the launch overhead of eight small ATen ops on tiny
// inputs. x - x is 0 exactly for finite x (NaN for NaN and inf); the integer AND keeps the loops
// vectorisable.
template <typename scalar_t>
inline bool all_finite(const scalar_t* x, int64_t count) {
  int32_t finite = 1;
  for (int64_t k = 0; k < count; ++k) finite &= static_cast<int32_t>(x[k] - x[k] == scalar_t(0));
  return finite;
}

template <typename scalar_t>
inline bool all_positive(const scalar_t* x, int64_t count) {
  int32_t positive = 1;
  for (int64_t k = 0; k < count; ++k) positive &= static_cast<int32_t>(x[k] > scalar_t(0));
  return positive;
}

template <typename scalar_t>
inline bool all_in_unit_interval(const scalar_t* x, int64_t count) {
  int32_t inside = 1;
  for (int64_t k = 0; k < count; ++k) inside &= static_cast<int32_t>(x[k] >= scalar_t(0) && x[k] <= scalar_t(1));
  return inside;
}

// The MarkerFlaw bits of an op's inputs: its coordinates (means or paths), sigmas and amps.
inline int32_t find_flaws(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps, Composite composite) {
  int32_t flaws = 0;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_find_flaws", [&] {
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    flaws = (all_finite(means.const_data_ptr<scalar_t>(), means.numel()) ? 0 : kMeansNonfinite) |
            (all_finite(s, sigmas.numel()) ? 0 : kSigmasNonfinite) |
            (all_positive(s, sigmas.numel()) ? 0 : kSigmasNonpositive) |
            (all_finite(amps.const_data_ptr<scalar_t>(), amps.numel()) ? 0 : kAmpsNonfinite);
    if (kCompositeNeedsUnitAmps[composite] && !all_in_unit_interval(amps.const_data_ptr<scalar_t>(), amps.numel())) {
      flaws |= kAmpsOutsideUnit;
    }
  });
  return flaws;
}

// SPLATKERN_CPU_SUPPORTS=0 visits every marker (soft composites) and every segment (strokes) on
// every pixel of a tile instead of their supports only: the same results (up to the order of
// additions in the markers' smoothmax sums), for measuring and testing what the skipping saves.
inline bool skip_outside_supports() {
  static const bool skip = [] {
    const char* asked = std::getenv("SPLATKERN_CPU_SUPPORTS");
    if (asked == nullptr || *asked == '\0') return true;
    const std::string value(asked);
    TORCH_CHECK_VALUE(value == "0" || value == "1", message("SPLATKERN_CPU_SUPPORTS must be 0 or 1, got '", value, "'"));
    return value == "1";
  }();
  return skip;
}

// The vector width of the loops built on Vec (the soft composites', the strokes'): the ISA's, at
// most 32 bytes. Their selects and bit masks on 64-byte vectors, compiled for AVX-512F alone (no
// DQ/BW/VL), run slower than on two 32-byte halves (docs/performance.md).
template <int64_t kVectorBytes>
constexpr int64_t kSelectLoopBytes = kVectorBytes < 32 ? kVectorBytes : 32;

// The backwards' last step: each tile wrote its per-marker sums to partials [items, N, kPartials]
// (item = b * tiles_per_image + tile); this calls finish(bn, sums) for every marker bn = b * N + n with
// its sums over the image's tiles, added in tile order, so the result does not depend on the threads.
template <int64_t kPartials, typename Finish>
void sum_tile_partials(const std::vector<double>& partials, const Tiling& tiling, int64_t batch, int64_t n_markers,
                       const Finish& finish) {
  at::parallel_for(0, batch * n_markers, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / n_markers, n = bn % n_markers;
      double sums[kPartials] = {};
      for (int64_t t = 0; t < tiling.tiles_per_image; ++t) {
        const double* p = partials.data() + ((b * tiling.tiles_per_image + t) * n_markers + n) * kPartials;
        for (int64_t k = 0; k < kPartials; ++k) sums[k] += p[k];
      }
      finish(bn, sums);
    }
  });
}

}  // namespace cpu
}  // namespace splatkern
