// CPU kernels of the soft composites: softor, over and smoothmax (the math: splatkern/reference.py,
// composite_reference).
//
// Every marker adds to every pixel it touches, so these kernels go marker by marker over a tile, each
// pixel's running state in tile-sized tables that stay in cache, and visit only a marker's support
// on the tile: its rows, and its columns in whole widest vectors, where both axis factors can be
// nonzero. Outside it the marker's value is exactly 0 under the flush rule, which leaves softor and
// over unchanged; smoothmax counts the markers each pixel saw and adds the others as v = 0, so the
// skip is exact in every mode.
//
// The forward saves the per-pixel state each mode's derivative needs (csrc/splat.cpp), so the
// backward visits each (marker, pixel) pair of a support once:
//   softor and over are equal in exact arithmetic, and so are their derivatives:
//     d out / d v_n = prod_{m != n} (1 - v_m), from Q, the product of the nonzero factors 1 - v_m,
//     and Z, the count of zero ones: Q / (1 - v_n) if Z = 0; Q for the marker with v_n = 1 if Z = 1;
//     else 0. The division is by a nonzero 1 - v, so by at least the dtype's epsilon: v = 1 exactly
//     gives the exact finite derivative, and nothing blows up near it.
//   smoothmax: with L = M + t log sum_m exp((v_m - M) / t) (M the max of all N values),
//     w_n = exp((v_n - L) / t) and d out / d v_n = w_n (1 + (v_n - out) / t).
// With e_n the bare Gaussian (v_n = amp_n e_n), dx = j - mx, dy = i - my and h = g (d out / d v_n) e_n
// at each pixel (g the image's gradient), a marker's gradients are
//   d/d amp = sum h, d/d mx = amp / s^2 sum h dx, d/d my = amp / s^2 sum h dy,
//   d/d sigma = amp / s^3 sum h (dx^2 + dy^2).
#include "splat_cpu_soft.h"

#include "splat_cpu_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

namespace splatkern {
namespace cpu {
namespace {

// The sums of a marker's gradients (see above): sum h, sum h dx, sum h dy, sum h (dx^2 + dy^2).
constexpr int64_t kSoftPartials = 4;

// The rows [row_begin, row_end) of a tile and its columns [col_begin, col_end), in whole widest
// vectors, outside which a marker's value is 0; empty (all 0) where it is 0 on the whole tile.
struct Support {
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
};

// One axis of a marker's support: the pixels [begin, end) of the `count` from `origin` on (k stands for
// origin + k) where the axis factor may be nonzero, |origin + k - centre| / sigma <= sqrt(2 flush),
// widened by a pixel on each side so that no rounding of the factor loops' exponent can keep a factor
// outside it. A few pixels of exact zeros inside a support cost time, never a result.
template <typename scalar_t>
inline std::pair<int64_t, int64_t> axis_support(double centre, double sigma, double origin, int64_t count) {
  static const double kReachPerSigma = std::sqrt(2.0 * double(kFlushExponent<scalar_t>));
  const double reach = kReachPerSigma * sigma, limit = double(count) + 4.0;
  // clamped before the conversions, which truncate toward 0: the -2 and +3 cover that and the pixel more
  const double low = std::min(std::max(centre - origin - reach, -4.0), limit);
  const double high = std::min(std::max(centre - origin + reach, -4.0), limit);
  return {std::clamp<int64_t>(int64_t(low) - 2, 0, count), std::clamp<int64_t>(int64_t(high) + 3, 0, count)};
}

template <typename scalar_t>
void find_supports(const scalar_t* means, const scalar_t* sigmas, const scalar_t* amps, int64_t n_markers,
                   int64_t width, const Tile& tile, int64_t col_stride, std::vector<Support>& supports) {
  constexpr int64_t lanes = kWidestLanes<scalar_t>;
  if (!skip_outside_supports()) {
    supports.assign(n_markers, Support{0, tile.rows, 0, col_stride});
    return;
  }
  supports.assign(n_markers, Support{});
  for (int64_t n = 0; n < n_markers; ++n) {
    if (amps != nullptr && amps[n] == scalar_t(0)) continue;  // 0 everywhere
    const auto [c0, c1] = axis_support<scalar_t>(means[2 * n], sigmas[n], 0.0, width);
    const auto [r0, r1] = axis_support<scalar_t>(means[2 * n + 1], sigmas[n], double(tile.row0), tile.rows);
    if (c0 < c1 && r0 < r1) supports[n] = {r0, r1, c0 / lanes * lanes, (c1 + lanes - 1) / lanes * lanes};
  }
}

// A thread's scratch, reused across its tiles: the factor tables, the supports, four per-pixel state
// tables [rows, col_stride] and (backward) the tile's upstream gradient, zero past the image's width.
template <typename scalar_t>
struct SoftScratch {
  FactorTables<scalar_t> tables;
  std::vector<Support> supports;
  AlignedVector<scalar_t> state[4];
  AlignedVector<scalar_t> grad;

  void fill_state(int64_t pixels, std::initializer_list<scalar_t> initial) {
    int k = 0;
    for (scalar_t value : initial) state[k++].assign(pixels, value);
  }
};

// What a tile's passes read: its factor tables and supports, the marker count and the mode.
template <typename scalar_t>
struct SoftTile {
  const FactorTables<scalar_t>* tables;
  const Support* supports;
  int64_t n_markers;
  int64_t pixels;  // of the state tables: rows * col_stride
  scalar_t temperature, inv_temperature;
};

// Calls chunk(v, p) for every marker and ISA vector of pixels of its support, where v is the marker's
// value at those pixels (the forward's tables hold amp in the column factors) and p their offset in
// the state tables.
template <int64_t kBytes, typename scalar_t, typename Chunk>
inline __attribute__((always_inline)) void visit_supports(const SoftTile<scalar_t>& tile, Chunk&& chunk) {
  using W = Vec<scalar_t, kBytes>;
  const FactorTables<scalar_t>& tables = *tile.tables;
  for (int64_t n = 0; n < tile.n_markers; ++n) {
    const Support s = tile.supports[n];
    const scalar_t* cols = tables.cols.data() + n * tables.col_stride;
    for (int64_t r = s.row_begin; r < s.row_end; ++r) {
      const scalar_t row_factor = tables.rows[n * tables.row_stride + r];
      for (int64_t c = s.col_begin; c < s.col_end; c += W::kCount) {
        chunk(row_factor * W::load(cols + c), r * tables.col_stride + c);
      }
    }
  }
}

// Smoothmax's per-pixel sums over all N markers: max_value = M, the max value (0 included where a
// marker was not seen), weights = sum_n w_n and weighted = sum_n w_n v_n with w_n = exp((v_n - M) / t).
template <int64_t kBytes, typename scalar_t>
inline __attribute__((always_inline)) void smoothmax_sums(const SoftTile<scalar_t>& tile, scalar_t* max_value,
                                                          scalar_t* seen, scalar_t* weights, scalar_t* weighted) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  const scalar_t inv_t = tile.inv_temperature, n_markers = scalar_t(tile.n_markers);
  visit_supports<kBytes>(tile, [&](V v, int64_t p) __attribute__((always_inline)) {
    const V best = W::load(max_value + p);
    W::store(max_value + p, v > best ? v : best);
    W::store(seen + p, W::load(seen + p) + scalar_t(1));
  });
  for (int64_t p = 0; p < tile.pixels; p += W::kCount) {
    const V best = W::load(max_value + p);  // the unseen markers' value here is 0
    W::store(max_value + p, (W::load(seen + p) < n_markers) & (best < scalar_t(0)) ? W::splat(0) : best);
  }
  const V one = W::splat(1);
  visit_supports<kBytes>(tile, [&](V v, int64_t p) __attribute__((always_inline)) {
    const V w = W::flushed_exp_neg((W::load(max_value + p) - v) * inv_t, one);
    W::store(weights + p, W::load(weights + p) + w);
    W::store(weighted + p, W::load(weighted + p) + w * v);
  });
  for (int64_t p = 0; p < tile.pixels; p += W::kCount) {
    const V unseen = n_markers - W::load(seen + p);
    W::store(weights + p, W::load(weights + p) + unseen * W::flushed_exp_neg(W::load(max_value + p) * inv_t, one));
  }
}

// softor's and over's state (csrc/splat.cpp) where the forward's running transmittance T, the product
// of every factor 1 - v, hit 0: Q, the product of the nonzero factors, into q and Z, their count of
// zeros, into zeros. Elsewhere Q is T to the bit (the same products in the same order) and Z is 0, so
// this pass runs only on a tile where some T is 0: a marker at 1 exactly, or a product that underflowed.
template <int64_t kBytes, typename scalar_t>
inline __attribute__((always_inline)) void product_and_zero_count(const SoftTile<scalar_t>& tile, scalar_t* q,
                                                                  scalar_t* zeros) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  using Mask = typename W::Mask;
  visit_supports<kBytes>(tile, [&](V v, int64_t p) __attribute__((always_inline)) {
    const V factor = scalar_t(1) - v;
    const Mask zero = factor == scalar_t(0);
    W::store(q + p, W::load(q + p) * (zero ? W::splat(1) : factor));
    W::store(zeros + p, W::load(zeros + p) + (zero ? W::splat(1) : W::splat(0)));
  });
}

// The forward of one tile: the composite into out (state[0]) and the state its backward reads into
// state[1] and state[2] (csrc/splat.cpp: Q and Z, or L and a copy of out).
template <int64_t kBytes, typename scalar_t>
inline __attribute__((always_inline)) void soft_forward_tile(const SoftTile<scalar_t>& tile, Composite composite,
                                                             SoftScratch<scalar_t>& scratch) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  scalar_t* out = scratch.state[0].data();
  scalar_t* transmittance = scratch.state[1].data();
  scalar_t* zeros = scratch.state[2].data();
  if (composite == kSoftor) {
    visit_supports<kBytes>(tile, [&](V v, int64_t p) __attribute__((always_inline)) {
      W::store(transmittance + p, W::load(transmittance + p) * (scalar_t(1) - v));
    });
    for (int64_t p = 0; p < tile.pixels; p += W::kCount) W::store(out + p, scalar_t(1) - W::load(transmittance + p));
  } else if (composite == kOver) {
    visit_supports<kBytes>(tile, [&](V v, int64_t p) __attribute__((always_inline)) {
      const V in_front = W::load(transmittance + p);
      W::store(out + p, W::load(out + p) + v * in_front);
      W::store(transmittance + p, in_front * (scalar_t(1) - v));
    });
  }
  if (composite != kSmoothmax) {
    if (std::find(transmittance, transmittance + tile.pixels, scalar_t(0)) != transmittance + tile.pixels) {
      std::fill_n(transmittance, tile.pixels, scalar_t(1));
      product_and_zero_count<kBytes>(tile, transmittance, zeros);
    }
    return;
  }
  scalar_t* max_value = transmittance;
  scalar_t* weights = zeros;
  smoothmax_sums<kBytes>(tile, max_value, scratch.state[3].data(), weights, out);  // out holds sum w v
  for (int64_t p = 0; p < tile.pixels; ++p) {  // a log per pixel, not per pair
    out[p] /= weights[p];  // >= 1: M's own weight
    max_value[p] += tile.temperature * std::log(weights[p]);  // L
    weights[p] = out[p];
  }
}

struct SoftForwardTile {
  template <int64_t kVectorBytes, typename scalar_t>
  static inline __attribute__((always_inline)) void run(const SoftTile<scalar_t>* tile, Composite composite,
                                                        SoftScratch<scalar_t>* scratch) {
    soft_forward_tile<kSelectLoopBytes<kVectorBytes>>(*tile, composite, *scratch);
  }
};

// How the backward forms g d out / d v_n at a pixel from the forward's state (see the top).
enum class Derivative {
  kProduct,           // softor, over on a tile where no factor 1 - v is 0 (Z = 0): g Q / (1 - v_n)
  kProductWithZeros,  // the same where some pixel has Z > 0
  kSoftmax,           // smoothmax
};

// The backward of one tile: fills partials [N, kSoftPartials] with the tile's sums (see the top).
// One instance per Derivative, so that the pixel loop has no branch. Down a column it sums h, h dy and
// h dy^2; a column's dx multiplies its sums once, at its end.
template <int64_t kBytes, Derivative kDerivative, typename scalar_t>
inline __attribute__((always_inline)) void soft_backward_tile(const SoftTile<scalar_t>& tile,
                                                              SoftScratch<scalar_t>& scratch, const scalar_t* means,
                                                              const scalar_t* amps, int64_t row0, double* partials) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  using Mask = typename W::Mask;
  const scalar_t inv_t = tile.inv_temperature;
  // the forward's state (csrc/splat.cpp), as soft_backward lays it out: softor/over: g Q, Z;
  // smoothmax: L, out, with g in scratch.grad
  const scalar_t* s0 = scratch.state[0].data();
  const scalar_t* s1 = scratch.state[1].data();
  const FactorTables<scalar_t>& tables = *tile.tables;
  const int64_t stride = tables.col_stride;
  const scalar_t* grad = scratch.grad.data();
  scalar_t* row_offsets = scratch.state[2].data();  // dy of the marker at hand, row by row
  const V lane_offsets = W::iota();
  constexpr int64_t kWidest = kWidestLanes<scalar_t>;
  for (int64_t n = 0; n < tile.n_markers; ++n) {
    const Support s = tile.supports[n];
    const scalar_t amp = amps[n], mx = means[2 * n], my = means[2 * n + 1];
    const scalar_t* cols = tables.cols.data() + n * stride;
    const scalar_t* rows = tables.rows.data() + n * tables.row_stride;
    for (int64_t r = s.row_begin; r < s.row_end; ++r) row_offsets[r] = scalar_t(row0 + r) - my;
    // the running sums of each lane of the widest vector: part k holds its lanes [k kCount, (k + 1) kCount)
    V sum_h[W::kParts] = {}, sum_dx[W::kParts] = {}, sum_dy[W::kParts] = {}, sum_sq[W::kParts] = {};
    for (int64_t c0 = s.col_begin; c0 < s.col_end; c0 += kWidest) {
      for (int64_t part = 0; part < W::kParts; ++part) {
        const int64_t c = c0 + part * W::kCount;
        const V col = W::load(cols + c);
        V column_h = {}, column_dy = {}, column_dy2 = {};
        for (int64_t r = s.row_begin; r < s.row_end; ++r) {
          const int64_t p = r * stride + c;
          const V e = rows[r] * col;
          const V v = amp * e;
          V d_out;  // g d out / d v
          if constexpr (kDerivative == Derivative::kProduct) {
            d_out = W::load(s0 + p) / (scalar_t(1) - v);
          } else if constexpr (kDerivative == Derivative::kProductWithZeros) {
            const V factor = scalar_t(1) - v;
            const Mask zero = factor == scalar_t(0);  // v = 1 exactly: amp and both factors are 1
            const V gq = W::load(s0 + p), zeros = W::load(s1 + p);
            const V others = gq / (zero ? W::splat(1) : factor);
            d_out = zeros == scalar_t(0) ? others : ((zeros == scalar_t(1)) & zero ? gq : W::splat(0));
          } else {
            // L >= v, but the forward formed v with amp in the column factor: rounded apart, L - v
            // may dip below 0, where flushed_exp_neg would flush; exp(-0) is what it stands for.
            const V x = (W::load(s0 + p) - v) * inv_t;
            const V gw = W::flushed_exp_neg(x > scalar_t(0) ? x : W::splat(0), W::load(grad + p));
            d_out = gw * (scalar_t(1) + (v - W::load(s1 + p)) * inv_t);
          }
          const V h = d_out * e;
          const V h_dy = h * row_offsets[r];
          column_h += h;
          column_dy += h_dy;
          column_dy2 += h_dy * row_offsets[r];
        }
        const V dx = (lane_offsets + scalar_t(c)) - mx;
        sum_h[part] += column_h;
        sum_dx[part] += column_h * dx;
        sum_dy[part] += column_dy;
        sum_sq[part] += column_h * (dx * dx) + column_dy2;
      }
    }
    double* out = partials + n * kSoftPartials;
    for (int64_t k = 0; k < kSoftPartials; ++k) out[k] = 0;
    for (int64_t part = 0; part < W::kParts; ++part) {  // lanes in a fixed order: the same bits on every ISA
      for (int64_t k = 0; k < W::kCount; ++k) {
        out[0] += double(sum_h[part][k]);
        out[1] += double(sum_dx[part][k]);
        out[2] += double(sum_dy[part][k]);
        out[3] += double(sum_sq[part][k]);
      }
    }
  }
}

struct SoftBackwardTile {
  template <int64_t kVectorBytes, typename scalar_t>
  static inline __attribute__((always_inline)) void run(const SoftTile<scalar_t>* tile, Composite composite,
                                                        SoftScratch<scalar_t>* scratch, const scalar_t* means,
                                                        const scalar_t* amps, int64_t row0, double* partials) {
    constexpr int64_t kBytes = kSelectLoopBytes<kVectorBytes>;
    if (composite == kSmoothmax) {
      soft_backward_tile<kBytes, Derivative::kSoftmax>(*tile, *scratch, means, amps, row0, partials);
      return;
    }
    const scalar_t* zeros = scratch->state[1].data();
    if (std::all_of(zeros, zeros + tile->pixels, [](scalar_t z) { return z == scalar_t(0); })) {
      soft_backward_tile<kBytes, Derivative::kProduct>(*tile, *scratch, means, amps, row0, partials);
    } else {
      soft_backward_tile<kBytes, Derivative::kProductWithZeros>(*tile, *scratch, means, amps, row0, partials);
    }
  }
};

// Fills the scratch's factor tables and supports for one tile; `amps` scales the column factors (the
// forward), nullptr leaves them bare (the backward).
template <typename scalar_t>
SoftTile<scalar_t> prepare_tile(SoftScratch<scalar_t>& scratch, const scalar_t* means, const scalar_t* sigmas,
                                const scalar_t* amps, int64_t n_markers, int64_t width, const Tile& tile,
                                double temperature) {
  scratch.tables.fill(means, sigmas, amps, n_markers, width, tile);
  find_supports(means, sigmas, amps, n_markers, width, tile, scratch.tables.col_stride, scratch.supports);
  return {&scratch.tables, scratch.supports.data(), n_markers, tile.rows * scratch.tables.col_stride,
          scalar_t(temperature), scalar_t(1.0 / temperature)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> soft_forward(const at::Tensor& means, const at::Tensor& sigmas,
                                                const at::Tensor& amps, int64_t height, int64_t width,
                                                Composite composite, double temperature) {
  const int64_t batch = means.size(0), n_markers = means.size(1);
  at::Tensor image = at::empty({batch, height, width}, means.options());
  at::Tensor state = at::empty({batch, kSoftStatePlanes, height, width}, means.options());
  const Tiling tiling(batch, height, width);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_soft_forward_cpu", [&] {
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    scalar_t* img = image.mutable_data_ptr<scalar_t>();
    scalar_t* saved = state.mutable_data_ptr<scalar_t>();
    parallel_items<SoftScratch<scalar_t>>(batch * tiling.tiles_per_image, [&](int64_t item,
                                                                              SoftScratch<scalar_t>& scratch) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      const SoftTile<scalar_t> soft = prepare_tile(scratch, m + b * n_markers * 2, s + b * n_markers,
                                                   a + b * n_markers, n_markers, width, tile, temperature);
      // out, transmittance (or max), zeros (or weights), seen
      scratch.fill_state(soft.pixels, {scalar_t(0), composite == kSmoothmax ? -std::numeric_limits<scalar_t>::infinity()
                                                                             : scalar_t(1),
                                       scalar_t(0), scalar_t(0)});
      run_on_cpu_isa<SoftForwardTile>(&soft, composite, &scratch);
      const int64_t stride = scratch.tables.col_stride;
      for (int64_t r = 0; r < tile.rows; ++r) {
        const int64_t pixel = (tile.row0 + r) * width;
        std::copy_n(scratch.state[0].data() + r * stride, width, img + b * height * width + pixel);
        for (int64_t plane = 0; plane < kSoftStatePlanes; ++plane) {
          std::copy_n(scratch.state[1 + plane].data() + r * stride, width,
                      saved + (b * kSoftStatePlanes + plane) * height * width + pixel);
        }
      }
    });
  });
  return {image, state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_backward(const at::Tensor& grad_image, const at::Tensor& means,
                                                             const at::Tensor& sigmas, const at::Tensor& amps,
                                                             const at::Tensor& state, Composite composite,
                                                             double temperature) {
  const int64_t batch = means.size(0), n_markers = means.size(1);
  const int64_t height = grad_image.size(1), width = grad_image.size(2);
  at::Tensor grad_means = at::empty_like(means);  // every entry is written below
  at::Tensor grad_sigmas = at::empty_like(sigmas);
  at::Tensor grad_amps = at::empty_like(amps);
  const Tiling tiling(batch, height, width);
  const int64_t n_items = batch * tiling.tiles_per_image;
  std::vector<double> partials(n_items * n_markers * kSoftPartials);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_soft_backward_cpu", [&] {
    const scalar_t* gi = grad_image.const_data_ptr<scalar_t>();
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    const scalar_t* saved = state.const_data_ptr<scalar_t>();
    parallel_items<SoftScratch<scalar_t>>(n_items, [&](int64_t item, SoftScratch<scalar_t>& scratch) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      const SoftTile<scalar_t> soft = prepare_tile(scratch, m + b * n_markers * 2, s + b * n_markers,
                                                   static_cast<const scalar_t*>(nullptr), n_markers, width, tile,
                                                   temperature);
      // the layout soft_backward_tile reads: softor/over: g Q, Z; smoothmax: L, out; and g. Zero past
      // the image's width, where g = 0 gives every pixel a derivative of 0.
      scratch.fill_state(soft.pixels, {scalar_t(0), scalar_t(0), scalar_t(0)});
      scratch.grad.assign(soft.pixels, scalar_t(0));
      const int64_t stride = scratch.tables.col_stride;
      const scalar_t* plane0 = saved + b * kSoftStatePlanes * height * width;
      const scalar_t* plane1 = plane0 + height * width;
      for (int64_t r = 0; r < tile.rows; ++r) {
        const int64_t pixel = (tile.row0 + r) * width;
        const scalar_t* g = gi + b * height * width + pixel;
        scalar_t* grad = scratch.grad.data() + r * stride;
        scalar_t* s0 = scratch.state[0].data() + r * stride;
        std::copy_n(g, width, grad);
        std::copy_n(plane1 + pixel, width, scratch.state[1].data() + r * stride);
        if (composite == kSmoothmax) {
          std::copy_n(plane0 + pixel, width, s0);
        } else {
          for (int64_t c = 0; c < width; ++c) s0[c] = g[c] * plane0[pixel + c];
        }
      }
      run_on_cpu_isa<SoftBackwardTile>(&soft, composite, &scratch, m + b * n_markers * 2, a + b * n_markers, tile.row0,
                                       partials.data() + item * n_markers * kSoftPartials);
    });
    scalar_t* gm = grad_means.mutable_data_ptr<scalar_t>();
    scalar_t* gs = grad_sigmas.mutable_data_ptr<scalar_t>();
    scalar_t* ga = grad_amps.mutable_data_ptr<scalar_t>();
    sum_tile_partials<kSoftPartials>(partials, tiling, batch, n_markers, [&](int64_t bn, const double* sums) {
      const double amp = double(a[bn]), inv_sigma = 1.0 / double(s[bn]);
      const double scale = amp * inv_sigma * inv_sigma;
      ga[bn] = scalar_t(sums[0]);
      gm[2 * bn] = scalar_t(scale * sums[1]);
      gm[2 * bn + 1] = scalar_t(scale * sums[2]);
      gs[bn] = scalar_t(scale * inv_sigma * sums[3]);
    });
  });
  return {grad_means, grad_sigmas, grad_amps};
}

}  // namespace cpu
}  // namespace splatkern
