// Fused CPU kernels of splat_forward / splat_backward with composite "max", and the ops' CPU entry
// points, which hand the other composites to splat_cpu_soft.cpp (the math: splatkern/reference.py).
#include "splat_cpu_common.h"
#include "splat_cpu_soft.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace splatkern {
namespace {

using namespace cpu;

// The forward composites one vector of pixels at a time with GCC's portable vector types, as wide as
// the ISA's registers: 64 bytes (16 floats) with AVX-512, 32 with AVX2, 16 with SSE2. One 64-byte
// width for every ISA compiled to scalar code on AVX2 (GCC lowers vector selects wider than the
// registers element by element). Factor tables are padded to the widest vector, which every
// narrower width divides.

template <typename scalar_t, int64_t kBytes>
struct PixelVector {
  static constexpr int64_t kLanes = kBytes / sizeof(scalar_t);
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  typedef scalar_t Values __attribute__((vector_size(kBytes)));
  typedef bits_t Winners __attribute__((vector_size(kBytes)));  // lane width of a comparison
  typedef int32_t Winners32 __attribute__((vector_size(kLanes * 4)));
};

// The hot loop: for a vector of pixels in kRowsAtOnce rows, the running max and winner stay in
// registers while every marker contributes one multiply, one compare and two selects per row.
// Column vectors outside, rows inside, so a column block of the factor table stays in L1 across
// the tile's rows. Four rows at once: one row's compare-select chain is longer than its issue cost,
// so independent chains fill the gap; four beat two with every ISA, and eight gain nothing more.
// col_factors: [N, padded_width]; row_factors: [N, row_stride], of which `rows` are drawn.
template <typename scalar_t, int64_t kBytes, int kRowsAtOnce>
inline __attribute__((always_inline)) void composite_rows(scalar_t* __restrict__ image, int32_t* __restrict__ index,
                                                          int64_t width, int64_t c,
                                                          const scalar_t* __restrict__ col_factors,
                                                          int64_t padded_width,
                                                          const scalar_t* __restrict__ row_factors,
                                                          int64_t row_stride, int64_t r, int64_t n_markers) {
  using V = PixelVector<scalar_t, kBytes>;
  using Values = typename V::Values;
  using Winners = typename V::Winners;
  Values cols;
  std::memcpy(&cols, col_factors + c, sizeof cols);
  Values best[kRowsAtOnce];
  Winners winner[kRowsAtOnce];
  for (int k = 0; k < kRowsAtOnce; ++k) {
    best[k] = row_factors[r + k] * cols;
    winner[k] = Winners{};
  }
  for (int64_t n = 1; n < n_markers; ++n) {
    std::memcpy(&cols, col_factors + n * padded_width + c, sizeof cols);
    for (int k = 0; k < kRowsAtOnce; ++k) {
      const Values value = row_factors[n * row_stride + r + k] * cols;
      const Winners takes = value > best[k];  // strict: the lowest index keeps ties
      best[k] = takes ? value : best[k];
      winner[k] = takes ? Winners{} + static_cast<typename V::bits_t>(n) : winner[k];
    }
  }
  for (int k = 0; k < kRowsAtOnce; ++k) {
    const typename V::Winners32 winner32 = __builtin_convertvector(winner[k], typename V::Winners32);
    scalar_t* image_row = image + (r + k) * width + c;
    int32_t* index_row = index + (r + k) * width + c;
    if (c + V::kLanes <= width) {  // a constant size: one vector store, not a call
      std::memcpy(image_row, &best[k], sizeof best[k]);
      std::memcpy(index_row, &winner32, sizeof winner32);
    } else {  // the last vector hangs past the row
      std::memcpy(image_row, &best[k], (width - c) * sizeof(scalar_t));
      std::memcpy(index_row, &winner32, (width - c) * sizeof(int32_t));
    }
  }
}

template <typename scalar_t, int64_t kBytes>
inline __attribute__((always_inline)) void composite_tile(scalar_t* __restrict__ image, int32_t* __restrict__ index,
                                                          int64_t width, const scalar_t* __restrict__ col_factors,
                                                          int64_t padded_width,
                                                          const scalar_t* __restrict__ row_factors,
                                                          int64_t row_stride, int64_t rows, int64_t n_markers) {
  for (int64_t c = 0; c < width; c += PixelVector<scalar_t, kBytes>::kLanes) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      composite_rows<scalar_t, kBytes, 4>(image, index, width, c, col_factors, padded_width, row_factors,
                                          row_stride, r, n_markers);
    }
    for (; r + 2 <= rows; r += 2) {
      composite_rows<scalar_t, kBytes, 2>(image, index, width, c, col_factors, padded_width, row_factors,
                                          row_stride, r, n_markers);
    }
    if (r < rows) {
      composite_rows<scalar_t, kBytes, 1>(image, index, width, c, col_factors, padded_width, row_factors,
                                          row_stride, r, n_markers);
    }
  }
}

// The compositing loop works in the ISA's own vector width.
struct CompositeTile {
  template <int64_t kVectorBytes, typename scalar_t, typename... Args>
  static inline __attribute__((always_inline)) void run(scalar_t* image, Args... args) {
    composite_tile<scalar_t, kVectorBytes>(image, args...);
  }
};

template <typename scalar_t>
void forward_tile(const scalar_t* means, const scalar_t* sigmas, const scalar_t* amps, int64_t n_markers,
                  int64_t width, const Tile& tile, scalar_t* image, int32_t* index, FactorTables<scalar_t>& tables) {
  tables.fill(means, sigmas, amps, n_markers, width, tile);
  run_on_cpu_isa<CompositeTile>(image + tile.row0 * width, index + tile.row0 * width, width, tables.cols.data(),
                                tables.col_stride, tables.rows.data(), tables.row_stride, tile.rows, n_markers);
}

std::tuple<at::Tensor, at::Tensor> splat_forward_cpu(const at::Tensor& means, const at::Tensor& sigmas,
                                                     const at::Tensor& amps, int64_t height, int64_t width,
                                                     bool /*deterministic: the CPU kernel always is*/,
                                                     c10::string_view composite_name, double temperature) {
  const Composite composite = parse_composite(composite_name, temperature);
  check_forward_layout(means, sigmas, amps, height, width);
  raise_marker_flaws(find_flaws(means, sigmas, amps, composite));
  const int64_t batch = means.size(0), n_markers = means.size(1);
  if (composite != kMax) {
    if (n_markers == 0) {
      return {at::zeros({batch, height, width}, means.options()),
              at::zeros({batch, kSoftStatePlanes, height, width}, means.options())};
    }
    return soft_forward(means, sigmas, amps, height, width, composite, temperature);
  }
  if (n_markers == 0) {
    return {at::zeros({batch, height, width}, means.options()),
            at::full({batch, height, width}, -1, means.options().dtype(at::kInt))};
  }
  at::Tensor image = at::empty({batch, height, width}, means.options());
  at::Tensor index = at::empty({batch, height, width}, means.options().dtype(at::kInt));
  const Tiling tiling(batch, height, width);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_forward_cpu", [&] {
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    scalar_t* img = image.mutable_data_ptr<scalar_t>();
    int32_t* idx = index.mutable_data_ptr<int32_t>();
    const auto draw_tile = [&](int64_t item, FactorTables<scalar_t>& tables) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      forward_tile(m + b * n_markers * 2, s + b * n_markers, a + b * n_markers, n_markers, width, tile,
                   img + b * height * width, idx + b * height * width, tables);
    };
    parallel_items<FactorTables<scalar_t>>(batch * tiling.tiles_per_image, draw_tile);
  });
  return {image, index};
}

// Per-marker sums over one tile's pixels (i, j) of g * e, where g is the upstream gradient and e the
// winner's unscaled Gaussian there: S = sum g e (1, j, i, j^2 + i^2), in double. The gradients are
// linear in these (see `marker_gradients`), so a pixel costs one 4-wide multiply-add whatever its
// marker, and the centring on (mx, my) happens once per marker instead of once per pixel.
typedef double PixelSums __attribute__((vector_size(32)));
constexpr int64_t kPartials = 4;  // the lanes of PixelSums
// Pixels alternate between this many copies of the sums: a run of pixels with one winner would
// otherwise chain every add on the last one's store.
constexpr int64_t kSumBanks = 2;

// The tile's pixel loop, built per ISA: 4-wide double vectors are one AVX register, two SSE2 ones.
// cols / rows: the tile's factor tables; column_parts[j] = (0, j, 0, j^2); banks: [kSumBanks, N]
// zeroed sums, taken by alternate pixels. Returns false at the first winner index outside [0, N)
// (a corrupted or foreign index map).
template <typename scalar_t>
inline __attribute__((always_inline)) bool sum_winner_pixels(
    const scalar_t* __restrict__ grad_image, const int32_t* __restrict__ index, int64_t n_markers, int64_t width,
    int64_t row0, int64_t rows, const scalar_t* __restrict__ cols, int64_t col_stride,
    const scalar_t* __restrict__ row_factors, int64_t row_stride, const PixelSums* __restrict__ column_parts,
    PixelSums* __restrict__ banks) {
  static_assert(kSumBanks == 2, "the pixel loop below alternates two banks");
  for (int64_t r = 0; r < rows; ++r) {
    const double i = double(row0 + r);
    const PixelSums row_part = {1.0, 0.0, i, i * i};
    const int64_t offset = (row0 + r) * width;
    // always_inline: a lambda does not take its caller's target ISA, so it is compiled into it
    const auto add_pixel = [&](int64_t j, PixelSums* __restrict__ bank) __attribute__((always_inline)) {
      const int32_t n = index[offset + j];
      if (static_cast<uint32_t>(n) >= static_cast<uint64_t>(n_markers)) return false;
      const scalar_t e = cols[n * col_stride + j] * row_factors[n * row_stride + r];
      const double g_e = double(grad_image[offset + j]) * double(e);
      bank[n] += g_e * (row_part + column_parts[j]);
      return true;
    };
    int64_t j = 0;
    for (; j + 1 < width; j += 2) {
      if (!add_pixel(j, banks) || !add_pixel(j + 1, banks + n_markers)) return false;
    }
    if (j < width && !add_pixel(j, banks)) return false;
  }
  return true;
}

struct SumWinnerPixels {
  template <int64_t kVectorBytes, typename... Args>
  static inline __attribute__((always_inline)) bool run(Args... args) {
    return sum_winner_pixels(args...);
  }
};

// A backward thread's scratch, reused across its tiles.
template <typename scalar_t>
struct BackwardScratch {
  FactorTables<scalar_t> tables;
  AlignedVector<PixelSums> banks;
};

template <typename scalar_t>
void backward_tile(const scalar_t* grad_image, const scalar_t* means, const scalar_t* sigmas, const int32_t* index,
                   int64_t n_markers, int64_t width, const Tile& tile, const PixelSums* column_parts,
                   double* partials, BackwardScratch<scalar_t>& scratch) {
  FactorTables<scalar_t>& tables = scratch.tables;
  AlignedVector<PixelSums>& banks = scratch.banks;
  // The forward's axis factors (without amp): each pixel's exp(-d^2 / 2s^2) is one multiply and
  // exactly the value the forward composited.
  tables.fill(means, sigmas, nullptr, n_markers, width, tile);
  banks.assign(kSumBanks * n_markers, PixelSums{});
  const bool valid = run_on_cpu_isa<SumWinnerPixels>(grad_image, index, n_markers, width, tile.row0, tile.rows,
                                                     tables.cols.data(), tables.col_stride, tables.rows.data(),
                                                     tables.row_stride, column_parts, banks.data());
  raise_bad_index(!valid, n_markers);  // at::parallel_for rethrows it
  for (int64_t n = 0; n < n_markers; ++n) {
    PixelSums sum = banks[n];
    for (int64_t bank = 1; bank < kSumBanks; ++bank) sum += banks[bank * n_markers + n];
    std::memcpy(partials + n * kPartials, &sum, sizeof sum);
  }
}

// One marker's gradients from its pixel sums S = sum g e (1, j, i, j^2 + i^2) (see above), with
// v = amp e the drawn value, dx = j - mx, dy = i - my:
//   d/d amp = sum g e,  d/d mx = sum g v dx / s^2,  d/d my = sum g v dy / s^2,
//   d/d sigma = sum g v (dx^2 + dy^2) / s^3,
// each sum of g v (dx, dy, dx^2 + dy^2) expanded into the S terms. The expansion cancels terms as
// large as (image size)^2 times S0; in double that leaves about 1e-11 of relative error at 256^2,
// far below float's precision and the float64 gradcheck's tolerance.
template <typename scalar_t>
void marker_gradients(const double* sums, scalar_t mx_in, scalar_t my_in, scalar_t sigma, scalar_t amp,
                      scalar_t* grad_mean, scalar_t* grad_sigma, scalar_t* grad_amp) {
  const double s0 = sums[0], sj = sums[1], si = sums[2], sq = sums[3];
  const double mx = double(mx_in), my = double(my_in), a = double(amp);
  const double inv_sigma = 1.0 / double(sigma);
  const double inv_sigma2 = inv_sigma * inv_sigma;
  *grad_amp = scalar_t(s0);
  grad_mean[0] = scalar_t(a * (sj - mx * s0) * inv_sigma2);
  grad_mean[1] = scalar_t(a * (si - my * s0) * inv_sigma2);
  *grad_sigma = scalar_t(a * (sq - 2.0 * mx * sj - 2.0 * my * si + (mx * mx + my * my) * s0) * inv_sigma2 * inv_sigma);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> splat_backward_cpu(const at::Tensor& grad_image,
                                                                  const at::Tensor& means,
                                                                  const at::Tensor& sigmas, const at::Tensor& amps,
                                                                  const at::Tensor& saved,
                                                                  bool /*deterministic: always*/,
                                                                  c10::string_view composite_name, double temperature) {
  const Composite composite = parse_composite(composite_name, temperature);
  check_backward_layout(grad_image, means, sigmas, amps, saved, composite);
  const int64_t batch = means.size(0), n_markers = means.size(1);
  const int64_t height = grad_image.size(1), width = grad_image.size(2);
  if (n_markers == 0 || batch == 0) {
    return {at::zeros_like(means), at::zeros_like(sigmas), at::zeros_like(amps)};
  }
  if (composite != kMax) return soft_backward(grad_image, means, sigmas, amps, saved, composite, temperature);
  const at::Tensor& index = saved;  // the winner map
  at::Tensor grad_means = at::empty_like(means);  // every entry is written below
  at::Tensor grad_sigmas = at::empty_like(sigmas);
  at::Tensor grad_amps = at::empty_like(amps);
  const Tiling tiling(batch, height, width);
  const int64_t n_items = batch * tiling.tiles_per_image;
  std::vector<double> partials(n_items * n_markers * kPartials);
  // Each pixel's (0, j, 0, j^2), shared by every tile of the call.
  AlignedVector<PixelSums> column_parts(width);
  for (int64_t j = 0; j < width; ++j) column_parts[j] = PixelSums{0.0, double(j), 0.0, double(j) * double(j)};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_backward_cpu", [&] {
    const scalar_t* gi = grad_image.const_data_ptr<scalar_t>();
    const scalar_t* m = means.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    const int32_t* idx = index.const_data_ptr<int32_t>();
    parallel_items<BackwardScratch<scalar_t>>(n_items, [&](int64_t item, BackwardScratch<scalar_t>& scratch) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      backward_tile(gi + b * height * width, m + b * n_markers * 2, s + b * n_markers, idx + b * height * width,
                    n_markers, width, tile, column_parts.data(), partials.data() + item * n_markers * kPartials,
                    scratch);
    });
    scalar_t* gm = grad_means.mutable_data_ptr<scalar_t>();
    scalar_t* gs = grad_sigmas.mutable_data_ptr<scalar_t>();
    scalar_t* ga = grad_amps.mutable_data_ptr<scalar_t>();
    sum_tile_partials<kPartials>(partials, tiling, batch, n_markers, [&](int64_t bn, const double* sums) {
      marker_gradients(sums, m[2 * bn], m[2 * bn + 1], s[bn], a[bn], gm + 2 * bn, gs + bn, ga + bn);
    });
  });
  return {grad_means, grad_sigmas, grad_amps};
}

}  // namespace

TORCH_LIBRARY_IMPL(splatkern, CPU, m) {
  m.impl("splat_forward", &splat_forward_cpu);
  m.impl("splat_backward", &splat_backward_cpu);
}

}  // namespace splatkern
