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
// The backward recomputes the per-pixel state a mode's derivative needs instead of keeping it from
// the forward: one more pass over the supports, and no memory beyond the gradients.
//   softor and over are equal in exact arithmetic, and so are their derivatives:
//     d out / d v_n = prod_{m != n} (1 - v_m), from Q, the product of the nonzero factors 1 - v_m,
//     and Z, the count of zero ones: Q / (1 - v_n) if Z = 0; Q for the marker with v_n = 1 if Z = 1;
//     else 0. The division is by a nonzero 1 - v, so by at least the dtype's epsilon: v = 1 exactly
//     gives the exact finite derivative, and nothing blows up near it.
//   smoothmax: with M the max of all N values, w_n = exp((v_n - M) / t) / sum_m exp((v_m - M) / t)
//     and d out / d v_n = w_n (1 + (v_n - out) / t).
// With e_n the bare Gaussian (v_n = amp_n e_n), dx = j - mx, dy = i - my and h = g (d out / d v_n) e_n
// at each pixel (g the image's gradient), a marker's gradients are
//   d/d amp = sum h, d/d mx = amp / s^2 sum h dx, d/d my = amp / s^2 sum h dy,
//   d/d sigma = amp / s^3 sum h (dx^2 + dy^2).
#include "splat_cpu_soft.h"

#include "splat_cpu_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace splatkern {
namespace cpu {
namespace {

// The sums of a marker's gradients (see above): sum h, sum h dx, sum h dy, sum h (dx^2 + dy^2).
constexpr int64_t kSoftPartials = 4;

template <typename scalar_t>
constexpr int64_t kLanes = kWidestVectorBytes / sizeof(scalar_t);

// The rows [row_begin, row_end) of a tile and its columns [col_begin, col_end), in whole widest
// vectors, outside which a marker's value is 0; empty (all 0) where it is 0 on the whole tile.
struct Support {
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
};

template <typename scalar_t>
void find_supports(const FactorTables<scalar_t>& tables, int64_t n_markers, int64_t width, int64_t rows,
                   std::vector<Support>& supports) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  supports.assign(n_markers, Support{});
  for (int64_t n = 0; n < n_markers; ++n) {
    const scalar_t* cols = tables.cols.data() + n * tables.col_stride;
    const scalar_t* row_factors = tables.rows.data() + n * tables.row_stride;
    int64_t c0 = 0, c1 = width, r0 = 0, r1 = rows;
    while (c0 < c1 && cols[c0] == scalar_t(0)) ++c0;
    while (c1 > c0 && cols[c1 - 1] == scalar_t(0)) --c1;
    while (r0 < r1 && row_factors[r0] == scalar_t(0)) ++r0;
    while (r1 > r0 && row_factors[r1 - 1] == scalar_t(0)) --r1;
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
  scalar_t inv_temperature;
  const scalar_t* amps;  // scales the bare factor tables of the backward; nullptr: the tables hold v
};

// Calls chunk(n, v, p) for every marker n and whole vector of pixels of its support, where v[lane]
// is the marker's value at the vector's pixels and p their offset in the state tables.
template <typename scalar_t, typename Chunk>
inline __attribute__((always_inline)) void visit_supports(const SoftTile<scalar_t>& tile, Chunk&& chunk) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  const FactorTables<scalar_t>& tables = *tile.tables;
  for (int64_t n = 0; n < tile.n_markers; ++n) {
    const Support s = tile.supports[n];
    const scalar_t scale = tile.amps ? tile.amps[n] : scalar_t(1);
    for (int64_t r = s.row_begin; r < s.row_end; ++r) {
      const scalar_t row_factor = scale * tables.rows[n * tables.row_stride + r];
      const scalar_t* __restrict__ cols = tables.cols.data() + n * tables.col_stride;
      for (int64_t c = s.col_begin; c < s.col_end; c += lanes) {
        scalar_t v[lanes];
        for (int64_t lane = 0; lane < lanes; ++lane) v[lane] = row_factor * cols[c + lane];
        chunk(n, v, r * tables.col_stride + c);
      }
    }
  }
}

// exp(-x) for x >= 0, flushed to 0 above the flush exponent as the axis factors are.
template <typename scalar_t>
inline __attribute__((always_inline)) scalar_t flushed_exp_neg(scalar_t x, scalar_t scale) {
  return keep_or_zero(x >= scalar_t(0) && x <= kFlushExponent<scalar_t>, scaled_exp_neg(x, scale));
}

// Smoothmax's per-pixel sums over all N markers: max_value = M, the max value (0 included where a
// marker was not seen), weights = sum_n w_n and weighted = sum_n w_n v_n with w_n = exp((v_n - M) / t).
template <typename scalar_t>
inline __attribute__((always_inline)) void smoothmax_sums(const SoftTile<scalar_t>& tile,
                                                          scalar_t* __restrict__ max_value,
                                                          scalar_t* __restrict__ seen, scalar_t* __restrict__ weights,
                                                          scalar_t* __restrict__ weighted) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  const scalar_t inv_t = tile.inv_temperature, n_markers = scalar_t(tile.n_markers);
  visit_supports(tile, [&](int64_t, const scalar_t* v, int64_t p) __attribute__((always_inline)) {
    for (int64_t lane = 0; lane < lanes; ++lane) {
      max_value[p + lane] = v[lane] > max_value[p + lane] ? v[lane] : max_value[p + lane];
      seen[p + lane] += scalar_t(1);
    }
  });
  for (int64_t p = 0; p < tile.pixels; ++p) {
    const bool unseen = seen[p] < n_markers;  // those markers' value here is 0
    max_value[p] = unseen && max_value[p] < scalar_t(0) ? scalar_t(0) : max_value[p];
  }
  visit_supports(tile, [&](int64_t, const scalar_t* v, int64_t p) __attribute__((always_inline)) {
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const scalar_t w = flushed_exp_neg((max_value[p + lane] - v[lane]) * inv_t, scalar_t(1));
      weights[p + lane] += w;
      weighted[p + lane] += w * v[lane];
    }
  });
  for (int64_t p = 0; p < tile.pixels; ++p) {
    weights[p] += (n_markers - seen[p]) * flushed_exp_neg(max_value[p] * inv_t, scalar_t(1));
  }
}

// The forward's per-pixel composite of one tile, into out [rows, col_stride] (state[0]).
template <typename scalar_t>
inline __attribute__((always_inline)) void soft_forward_tile(const SoftTile<scalar_t>& tile, Composite composite,
                                                             SoftScratch<scalar_t>& scratch) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  scalar_t* __restrict__ out = scratch.state[0].data();
  scalar_t* __restrict__ transmittance = scratch.state[1].data();
  if (composite == kSoftor) {
    visit_supports(tile, [&](int64_t, const scalar_t* v, int64_t p) __attribute__((always_inline)) {
      for (int64_t lane = 0; lane < lanes; ++lane) transmittance[p + lane] *= scalar_t(1) - v[lane];
    });
    for (int64_t p = 0; p < tile.pixels; ++p) out[p] = scalar_t(1) - transmittance[p];
  } else if (composite == kOver) {
    visit_supports(tile, [&](int64_t, const scalar_t* v, int64_t p) __attribute__((always_inline)) {
      for (int64_t lane = 0; lane < lanes; ++lane) {
        out[p + lane] += v[lane] * transmittance[p + lane];
        transmittance[p + lane] *= scalar_t(1) - v[lane];
      }
    });
  } else {
    scalar_t* __restrict__ weights = scratch.state[2].data();
    smoothmax_sums(tile, transmittance, scratch.state[3].data(), weights, out);  // out holds sum w v
    for (int64_t p = 0; p < tile.pixels; ++p) out[p] /= weights[p];  // >= 1: M's own weight
  }
}

struct SoftForwardTile {
  template <int64_t kVectorBytes, typename scalar_t>
  static inline __attribute__((always_inline)) void run(const SoftTile<scalar_t>* tile, Composite composite,
                                                        SoftScratch<scalar_t>* scratch) {
    soft_forward_tile(*tile, composite, *scratch);
  }
};

// The backward of one tile: fills partials [N, kSoftPartials] with the tile's sums (see the top).
template <typename scalar_t>
inline __attribute__((always_inline)) void soft_backward_tile(const SoftTile<scalar_t>& tile, Composite composite,
                                                              SoftScratch<scalar_t>& scratch, const scalar_t* means,
                                                              const scalar_t* amps, int64_t row0, double* partials) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  const scalar_t inv_t = tile.inv_temperature;
  // softor/over: Q, Z; smoothmax: M, 1 / sum w, out
  scalar_t* __restrict__ s0 = scratch.state[0].data();
  scalar_t* __restrict__ s1 = scratch.state[1].data();
  scalar_t* __restrict__ s2 = scratch.state[2].data();
  const bool smoothmax = composite == kSmoothmax;
  if (!smoothmax) {
    visit_supports(tile, [&](int64_t, const scalar_t* v, int64_t p) __attribute__((always_inline)) {
      for (int64_t lane = 0; lane < lanes; ++lane) {
        const scalar_t factor = scalar_t(1) - v[lane];
        const bool zero = factor == scalar_t(0);
        s0[p + lane] *= zero ? scalar_t(1) : factor;
        s1[p + lane] += zero ? scalar_t(1) : scalar_t(0);
      }
    });
  } else {
    smoothmax_sums(tile, s0, scratch.state[3].data(), s1, s2);
    for (int64_t p = 0; p < tile.pixels; ++p) {
      s2[p] /= s1[p];  // out
      s1[p] = scalar_t(1) / s1[p];
    }
  }
  const FactorTables<scalar_t>& tables = *tile.tables;
  const scalar_t* __restrict__ grad = scratch.grad.data();
  for (int64_t n = 0; n < tile.n_markers; ++n) {
    const Support s = tile.supports[n];
    const scalar_t amp = amps[n], mx = means[2 * n], my = means[2 * n + 1];
    scalar_t sum_h[lanes] = {}, sum_dx[lanes] = {}, sum_dy[lanes] = {}, sum_sq[lanes] = {};
    for (int64_t r = s.row_begin; r < s.row_end; ++r) {
      const scalar_t row_factor = tables.rows[n * tables.row_stride + r];
      const scalar_t scaled_row_factor = amp * row_factor;  // v as visit_supports forms it, to the bit
      const scalar_t dy = scalar_t(row0 + r) - my;
      const scalar_t* __restrict__ cols = tables.cols.data() + n * tables.col_stride;
      for (int64_t c = s.col_begin; c < s.col_end; c += lanes) {
        const int64_t p = r * tables.col_stride + c;
        for (int64_t lane = 0; lane < lanes; ++lane) {
          const scalar_t e = row_factor * cols[c + lane];
          const scalar_t v = scaled_row_factor * cols[c + lane];
          scalar_t d_out;
          if (!smoothmax) {
            const scalar_t factor = scalar_t(1) - v;
            const bool zero = factor == scalar_t(0);
            const scalar_t q = s0[p + lane], zeros = s1[p + lane];
            const scalar_t others = q / (zero ? scalar_t(1) : factor);
            d_out = zeros == scalar_t(0) ? others : (zeros == scalar_t(1) && zero ? q : scalar_t(0));
          } else {
            const scalar_t w = flushed_exp_neg((s0[p + lane] - v) * inv_t, s1[p + lane]);
            d_out = w * (scalar_t(1) + (v - s2[p + lane]) * inv_t);
          }
          const scalar_t h = grad[p + lane] * d_out * e;
          const scalar_t dx = scalar_t(c + lane) - mx;
          sum_h[lane] += h;
          sum_dx[lane] += h * dx;
          sum_dy[lane] += h * dy;
          sum_sq[lane] += h * (dx * dx + dy * dy);
        }
      }
    }
    double* out = partials + n * kSoftPartials;
    for (int64_t k = 0; k < kSoftPartials; ++k) out[k] = 0;
    for (int64_t lane = 0; lane < lanes; ++lane) {  // a fixed order: the same bits on every ISA
      out[0] += double(sum_h[lane]);
      out[1] += double(sum_dx[lane]);
      out[2] += double(sum_dy[lane]);
      out[3] += double(sum_sq[lane]);
    }
  }
}

struct SoftBackwardTile {
  template <int64_t kVectorBytes, typename scalar_t>
  static inline __attribute__((always_inline)) void run(const SoftTile<scalar_t>* tile, Composite composite,
                                                        SoftScratch<scalar_t>* scratch, const scalar_t* means,
                                                        const scalar_t* amps, int64_t row0, double* partials) {
    soft_backward_tile(*tile, composite, *scratch, means, amps, row0, partials);
  }
};

// Fills the scratch's factor tables and supports for one tile; `amps` scales the column factors (the
// forward), nullptr leaves them bare (the backward).
template <typename scalar_t>
SoftTile<scalar_t> prepare_tile(SoftScratch<scalar_t>& scratch, const scalar_t* means, const scalar_t* sigmas,
                                const scalar_t* amps, int64_t n_markers, int64_t width, const Tile& tile,
                                double temperature) {
  scratch.tables.fill(means, sigmas, amps, n_markers, width, tile);
  find_supports(scratch.tables, n_markers, width, tile.rows, scratch.supports);
  return {&scratch.tables, scratch.supports.data(), n_markers, tile.rows * scratch.tables.col_stride,
          scalar_t(1.0 / temperature), nullptr};
}

}  // namespace

at::Tensor soft_forward(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps, int64_t height,
                        int64_t width, Composite composite, double temperature) {
  const int64_t batch = means.size(0), n_markers = means.size(1);
  at::Tensor image = at::empty({batch, height, width}, means.options());
  const Tiling tiling(batch, height, width);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_soft_forward_cpu", [&] {
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    scalar_t* img = image.mutable_data_ptr<scalar_t>();
    parallel_items<SoftScratch<scalar_t>>(batch * tiling.tiles_per_image, [&](int64_t item,
                                                                              SoftScratch<scalar_t>& scratch) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      const SoftTile<scalar_t> soft = prepare_tile(scratch, m + b * n_markers * 2, s + b * n_markers,
                                                   a + b * n_markers, n_markers, width, tile, temperature);
      // out, transmittance (or max), weights, seen
      scratch.fill_state(soft.pixels, {scalar_t(0), composite == kSmoothmax ? -std::numeric_limits<scalar_t>::infinity()
                                                                             : scalar_t(1),
                                       scalar_t(0), scalar_t(0)});
      run_on_cpu_isa<SoftForwardTile>(&soft, composite, &scratch);
      const scalar_t* out = scratch.state[0].data();
      for (int64_t r = 0; r < tile.rows; ++r) {
        std::copy_n(out + r * scratch.tables.col_stride, width, img + (b * height + tile.row0 + r) * width);
      }
    });
  });
  return image;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_backward(const at::Tensor& grad_image, const at::Tensor& means,
                                                             const at::Tensor& sigmas, const at::Tensor& amps,
                                                             Composite composite, double temperature) {
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
    parallel_items<SoftScratch<scalar_t>>(n_items, [&](int64_t item, SoftScratch<scalar_t>& scratch) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      SoftTile<scalar_t> soft = prepare_tile(scratch, m + b * n_markers * 2, s + b * n_markers,
                                             static_cast<const scalar_t*>(nullptr), n_markers, width, tile,
                                             temperature);
      soft.amps = a + b * n_markers;
      const bool smoothmax = composite == kSmoothmax;
      // softor/over: Q, Z; smoothmax: M, sum w, sum w v, seen
      scratch.fill_state(soft.pixels, {smoothmax ? -std::numeric_limits<scalar_t>::infinity() : scalar_t(1),
                                       scalar_t(0), scalar_t(0), scalar_t(0)});
      const int64_t stride = scratch.tables.col_stride;
      scratch.grad.assign(soft.pixels, scalar_t(0));
      for (int64_t r = 0; r < tile.rows; ++r) {
        std::copy_n(gi + (b * height + tile.row0 + r) * width, width, scratch.grad.data() + r * stride);
      }
      run_on_cpu_isa<SoftBackwardTile>(&soft, composite, &scratch, m + b * n_markers * 2, soft.amps, tile.row0,
                                       partials.data() + item * n_markers * kSoftPartials);
    });
    scalar_t* gm = grad_means.mutable_data_ptr<scalar_t>();
    scalar_t* gs = grad_sigmas.mutable_data_ptr<scalar_t>();
    scalar_t* ga = grad_amps.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * n_markers, 256, [&](int64_t begin, int64_t end) {
      for (int64_t bn = begin; bn < end; ++bn) {
        const int64_t b = bn / n_markers, n = bn % n_markers;
        double sums[kSoftPartials] = {0, 0, 0, 0};
        for (int64_t t = 0; t < tiling.tiles_per_image; ++t) {  // in tile order: deterministic
          const double* p = partials.data() + ((b * tiling.tiles_per_image + t) * n_markers + n) * kSoftPartials;
          for (int64_t k = 0; k < kSoftPartials; ++k) sums[k] += p[k];
        }
        const double amp = double(a[bn]), inv_sigma = 1.0 / double(s[bn]);
        const double scale = amp * inv_sigma * inv_sigma;
        ga[bn] = scalar_t(sums[0]);
        gm[2 * bn] = scalar_t(scale * sums[1]);
        gm[2 * bn + 1] = scalar_t(scale * sums[2]);
        gs[bn] = scalar_t(scale * inv_sigma * sums[3]);
      }
    });
  });
  return {grad_means, grad_sigmas, grad_amps};
}

}  // namespace cpu
}  // namespace splatkern
