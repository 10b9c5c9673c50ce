// Fused CPU kernels of stroke_forward / stroke_backward (the math and its derivatives:
// splatkern/stroke_reference.py).
//
// A segment's value is not separable, so the cost is per segment-pixel pair. A segment's value
// flushes to 0 where its exponent |p - q|^2 / (2 sigma(t)^2) exceeds kFlushExponent, so it is 0
// outside its box grown by sqrt(2 flush) max(sigma_k, sigma_k+1): a vector of pixels outside the box
// takes the value 0 without computing it, which is exact under the flush rule, ties included (a
// stroke's lowest segment, then the lowest stroke, keeps a tie). A stroke's box is the union of its
// segments' boxes.
//
// Forward: per vector of pixels, the strokes in order, each one's value (the max over its segments)
// folded into the composite's running state in registers; then the image and what the backward reads
// (csrc/splat.cpp: the winner map, or the soft state).
// Backward: each pixel's gradient reaches one segment of each stroke, the one that won the stroke's
// max there. h = g d out / d v_s (g the image's gradient; for "max" g itself at the composite's winner)
// goes, per segment, through the closed-form derivatives of stroke_reference.py, summed per segment
// over its box and the pixels it won: kStrokePartials sums per segment and tile, added in tile order.
#include "splat_cpu_common.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace splatkern {
namespace cpu {
namespace {

// Whole pixels [x0, x1] x [y0, y1]; empty where x0 > x1.
struct Box {
  int64_t x0 = 0, x1 = -1, y0 = 0, y1 = -1;

  // whether row y, columns [c, c + lanes) meet the box
  bool meets(int64_t y, int64_t c, int64_t lanes) const { return y >= y0 && y <= y1 && c <= x1 && c + lanes > x0; }
  Box joined(const Box& other) const {
    if (x0 > x1) return other;
    return {std::min(x0, other.x0), std::max(x1, other.x1), std::min(y0, other.y0), std::max(y1, other.y1)};
  }
};

// One segment as the kernels read it: a = vertex k, b = vertex min(k + 1, P - 1), d = b - a,
// (tx, ty) = d / |d|^2 (0 where a = b: t = 0), so that t0 = u . d / |d|^2 = ux tx + uy ty;
// sigma(t) = sigma + t dsigma, amp(t) = amp + t damp.
template <typename scalar_t>
struct Segment {
  scalar_t ax, ay, dx, dy, tx, ty, sigma, dsigma, amp, damp;
  Box box;  // where the value may be nonzero
};

// One image's strokes: segments [S, K] (K = max(P - 1, 1)) and each stroke's box.
template <typename scalar_t>
struct Strokes {
  std::vector<Segment<scalar_t>> segments;
  std::vector<Box> boxes;
  int64_t n_strokes = 0, n_segments = 0;  // S, K

  void build(const scalar_t* paths, const scalar_t* sigmas, const scalar_t* amps, int64_t strokes, int64_t vertices) {
    static const double kReachPerSigma = std::sqrt(2.0 * double(kFlushExponent<scalar_t>));
    n_strokes = strokes;
    n_segments = std::max<int64_t>(vertices - 1, 1);
    segments.resize(n_strokes * n_segments);
    boxes.assign(n_strokes, Box{});
    // clamped before the conversions: a box far off the image stays far off, without overflow
    const auto pixel = [](double x) { return std::clamp(x, -8.0, double(int64_t(1) << 40)); };
    for (int64_t s = 0; s < n_strokes; ++s) {
      for (int64_t k = 0; k < n_segments; ++k) {
        const int64_t va = s * vertices + k, vb = s * vertices + std::min(k + 1, vertices - 1);
        Segment<scalar_t>& g = segments[s * n_segments + k];
        g.ax = paths[2 * va];
        g.ay = paths[2 * va + 1];
        g.dx = paths[2 * vb] - g.ax;
        g.dy = paths[2 * vb + 1] - g.ay;
        const scalar_t length2 = g.dx * g.dx + g.dy * g.dy;
        const scalar_t inv_length2 = length2 > scalar_t(0) ? scalar_t(1) / length2 : scalar_t(0);
        g.tx = g.dx * inv_length2;
        g.ty = g.dy * inv_length2;
        g.sigma = sigmas[va];
        g.dsigma = sigmas[vb] - sigmas[va];
        g.amp = amps[va];
        g.damp = amps[vb] - amps[va];
        // a pixel more on each side: no rounding of the exponent can keep a value outside
        const double reach = kReachPerSigma * double(std::max(sigmas[va], sigmas[vb])) + 1.0;
        const double bx = double(paths[2 * vb]), by = double(paths[2 * vb + 1]);
        g.box = {int64_t(std::floor(pixel(std::min(double(g.ax), bx) - reach))),
                 int64_t(std::ceil(pixel(std::max(double(g.ax), bx) + reach))),
                 int64_t(std::floor(pixel(std::min(double(g.ay), by) - reach))),
                 int64_t(std::ceil(pixel(std::max(double(g.ay), by) + reach)))};
        if (!skip_outside_supports()) g.box = {-1, int64_t(1) << 40, -1, int64_t(1) << 40};
        boxes[s] = boxes[s].joined(g.box);
      }
    }
  }
};

// A segment at a vector of pixels (row y, columns px): the projection t, r = p - q, u = p - a,
// 1 / sigma(t), amp(t), the bare exp(-|r|^2 / (2 sigma(t)^2)) flushed, and whether 0 < t0 < 1 (t
// then depends on p, and sigma and amp with it).
template <typename W>
struct SegmentAt {
  typename W::V t, rx, ry, ux, uy, inv_sigma, amp, e;
  typename W::Mask inside;
};

template <typename W, typename scalar_t>
inline __attribute__((always_inline)) SegmentAt<W> segment_at(const Segment<scalar_t>& g, typename W::V px,
                                                              scalar_t y) {
  using V = typename W::V;
  SegmentAt<W> at;
  at.ux = px - g.ax;
  at.uy = W::splat(y - g.ay);
  const V t0 = at.ux * g.tx + (y - g.ay) * g.ty;  // the row's part is one number
  at.inside = (t0 > scalar_t(0)) & (t0 < scalar_t(1));
  const V low = t0 > scalar_t(0) ? t0 : W::splat(0);  // a NaN-free clamp: max, then min
  at.t = low < scalar_t(1) ? low : W::splat(1);
  at.rx = at.ux - at.t * g.dx;
  at.ry = at.uy - at.t * g.dy;
  at.inv_sigma = scalar_t(1) / (g.sigma + at.t * g.dsigma);
  const V exponent = scalar_t(0.5) * (at.rx * at.rx + at.ry * at.ry) * (at.inv_sigma * at.inv_sigma);
  at.e = W::flushed_exp_neg(exponent, W::splat(1));
  at.amp = g.amp + at.t * g.damp;
  return at;
}

// Stroke s's value at row y, columns [c, c + U lanes) in U vectors, and the segment attaining it
// (ties: the lowest). Several vectors per segment share its loads and give the core independent work.
template <typename W, int64_t U, typename scalar_t>
inline __attribute__((always_inline)) void stroke_at(const Strokes<scalar_t>& strokes, int64_t s, int64_t y, int64_t c,
                                                     typename W::V (&value)[U], typename W::Mask (&segment)[U]) {
  using V = typename W::V;
  using Mask = typename W::Mask;
  constexpr int64_t kLanes = U * W::kCount;
  for (int64_t u = 0; u < U; ++u) {
    value[u] = W::splat(0);
    segment[u] = Mask{};
  }
  if (!strokes.boxes[s].meets(y, c, kLanes)) return;  // every segment flushed: 0, segment 0
  for (int64_t u = 0; u < U; ++u) value[u] = W::splat(-std::numeric_limits<scalar_t>::infinity());
  const Segment<scalar_t>* segments = strokes.segments.data() + s * strokes.n_segments;
  for (int64_t k = 0; k < strokes.n_segments; ++k) {
    V v[U];
    if (segments[k].box.meets(y, c, kLanes)) {
      for (int64_t u = 0; u < U; ++u) {
        const SegmentAt<W> at = segment_at<W>(segments[k], W::iota() + scalar_t(c + u * W::kCount), scalar_t(y));
        v[u] = at.amp * at.e;
      }
    } else {
      for (int64_t u = 0; u < U; ++u) v[u] = W::splat(0);
    }
    for (int64_t u = 0; u < U; ++u) {
      const Mask takes = v[u] > value[u];
      value[u] = takes ? v[u] : value[u];
      segment[u] = takes ? Mask{} + typename W::bits_t(k) : segment[u];
    }
  }
}

// Pixel vectors the forward computes together (stroke_at's U): two share each segment's loads and
// give the core two independent chains; four run out of registers.
constexpr int64_t kForwardVectors = 2;

template <typename T, int64_t kLanes>
inline __attribute__((always_inline)) void store_lanes(T* out, const T* lanes, int64_t count) {
  std::memcpy(out, lanes, std::min(count, kLanes) * sizeof(T));
}

// The forward of rows [row0, row0 + rows) of one image: image, and index (kMax) or the state's two
// planes (plane, plane_size apart).
template <int64_t kBytes, Composite kMode, typename scalar_t>
inline __attribute__((always_inline)) void forward_rows(const Strokes<scalar_t>& strokes, int64_t width, int64_t row0,
                                                        int64_t rows, scalar_t temperature, scalar_t* image,
                                                        int32_t* index, scalar_t* plane, int64_t plane_size) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  using Mask = typename W::Mask;
  typedef int32_t Index __attribute__((vector_size(W::kCount * 4)));
  constexpr int64_t U = kForwardVectors;
  const scalar_t inv_t = scalar_t(1) / temperature;
  const int64_t per_stroke = strokes.n_segments;
  for (int64_t y = row0; y < row0 + rows; ++y) {
    for (int64_t c = 0; c < width; c += U * W::kCount) {
      V a[U], b[U], q[U], z[U];
      Mask winner[U];
      for (int64_t u = 0; u < U; ++u) {
        a[u] = W::splat(kMode == kMax || kMode == kSmoothmax ? -std::numeric_limits<scalar_t>::infinity() : scalar_t(1));
        b[u] = W::splat(0), q[u] = W::splat(1), z[u] = W::splat(0);
        winner[u] = Mask{};
      }
      // max: a = best, winner; softor: q, z (Q and Z); over: a = T, b = out, q, z;
      // smoothmax: a = M, b = sum w, z = sum w v, w = exp((v - M) / t) (an online softmax)
      for (int64_t s = 0; s < strokes.n_strokes; ++s) {
        V vs[U];
        Mask segment[U];
        stroke_at<W, U>(strokes, s, y, c, vs, segment);
        for (int64_t u = 0; u < U; ++u) {
          const V v = vs[u];
          if constexpr (kMode == kMax) {
            const Mask takes = v > a[u];
            a[u] = takes ? v : a[u];
            winner[u] = takes ? segment[u] + typename W::bits_t(s * per_stroke) : winner[u];
          } else if constexpr (kMode == kSmoothmax) {
            const V top = v > a[u] ? v : a[u];
            const V rescale = W::flushed_exp_neg((top - a[u]) * inv_t, W::splat(1));
            const V w = W::flushed_exp_neg((top - v) * inv_t, W::splat(1));
            b[u] = b[u] * rescale + w;
            z[u] = z[u] * rescale + w * v;
            a[u] = top;
          } else {
            const V factor = scalar_t(1) - v;
            const Mask zero = factor == scalar_t(0);
            if constexpr (kMode == kOver) {
              b[u] += v * a[u];
              a[u] *= factor;
            }
            q[u] *= zero ? W::splat(1) : factor;
            z[u] += zero ? W::splat(1) : W::splat(0);
          }
        }
      }
      for (int64_t u = 0; u < U; ++u) {
        const int64_t p = y * width + c + u * W::kCount, count = width - c - u * W::kCount;
        if (count <= 0) break;
        if constexpr (kMode == kMax) {
          const Index winner32 = __builtin_convertvector(winner[u], Index);
          store_lanes<scalar_t, W::kCount>(image + p, reinterpret_cast<const scalar_t*>(&a[u]), count);
          store_lanes<int32_t, W::kCount>(index + p, reinterpret_cast<const int32_t*>(&winner32), count);
          continue;
        }
        V out, first = q[u], second = z[u];
        if constexpr (kMode == kSoftor) {
          out = z[u] > scalar_t(0) ? W::splat(1) : scalar_t(1) - q[u];
        } else if constexpr (kMode == kOver) {
          out = b[u];
        } else {
          out = z[u] / b[u];  // b >= 1: the max's own weight
          for (int64_t k = 0; k < W::kCount; ++k) first[k] = a[u][k] + temperature * std::log(b[u][k]);  // L
          second = out;
        }
        store_lanes<scalar_t, W::kCount>(image + p, reinterpret_cast<const scalar_t*>(&out), count);
        store_lanes<scalar_t, W::kCount>(plane + p, reinterpret_cast<const scalar_t*>(&first), count);
        store_lanes<scalar_t, W::kCount>(plane + plane_size + p, reinterpret_cast<const scalar_t*>(&second), count);
      }
    }
  }
}

struct ForwardRows {
  template <int64_t kVectorBytes, typename scalar_t>
  static inline __attribute__((always_inline)) void run(const Strokes<scalar_t>* strokes, Composite composite,
                                                        int64_t width, int64_t row0, int64_t rows,
                                                        scalar_t temperature, scalar_t* image, int32_t* index,
                                                        scalar_t* plane, int64_t plane_size) {
    constexpr int64_t kBytes = kSelectLoopBytes<kVectorBytes>;
    switch (composite) {
      case kMax:
        return forward_rows<kBytes, kMax>(*strokes, width, row0, rows, temperature, image, index, plane, plane_size);
      case kSoftor:
        return forward_rows<kBytes, kSoftor>(*strokes, width, row0, rows, temperature, image, index, plane,
                                             plane_size);
      case kOver:
        return forward_rows<kBytes, kOver>(*strokes, width, row0, rows, temperature, image, index, plane, plane_size);
      default:
        return forward_rows<kBytes, kSmoothmax>(*strokes, width, row0, rows, temperature, image, index, plane,
                                                plane_size);
    }
  }
};

// The sums of one segment's gradients over the pixels it won (h = g d out / d v_s there):
//   0, 1: (1 - t) h e and t h e                          (d/d amp_k, d/d amp_k+1)
//   2, 3: (1 - t) G and t G, G = h amp e |r|^2 / s^3       (d/d sigma_k, d/d sigma_k+1)
//   4-7:  (1 - t) C r and t C r, C = h amp e / s^2         (the r parts of d/d a and d/d b)
//   8-10: V, V w (w = u - 2 t d), V = h dvalue/dt where 0 < t0 < 1, else 0
// from which d/d a = (1 - t) C r + (-d V - V w) / |d|^2 and d/d b = t C r + V w / |d|^2.
constexpr int64_t kStrokePartials = 11;

// A tile's tables, [rows, stride] with stride the width in whole widest vectors: the gradient h, the
// id of the segment each pixel's h belongs to (-1: none), and (soft modes) the forward's state.
template <typename scalar_t>
struct StrokeScratch {
  using bits_t = typename Vec<scalar_t, 16>::bits_t;
  Strokes<scalar_t> strokes;
  AlignedVector<scalar_t> grad, h, plane0, plane1;
  AlignedVector<bits_t> ids;
};

// Whether any lane is set: OR-ed down in halves, a few instructions (a loop over the lanes compiles
// to one extraction per lane).
template <typename W>
inline __attribute__((always_inline)) bool any(typename W::Mask mask) {
  typedef int64_t Halves __attribute__((vector_size(16)));
  if constexpr (sizeof mask == 16) {
    const Halves q = (Halves)mask;
    return (q[0] | q[1]) != 0;
  } else {
    static_assert(sizeof mask == 32, "the Vec loops are at most 32 bytes wide (kSelectLoopBytes)");
    typedef int64_t Quarters __attribute__((vector_size(32)));
    const Quarters q = (Quarters)mask;
    const Halves half = __builtin_shufflevector(q, q, 0, 1) | __builtin_shufflevector(q, q, 2, 3);
    return (half[0] | half[1]) != 0;
  }
}

// Adds to sums [kStrokePartials] segment g's sums over tile rows [r0, r1) and columns [c0, c1) (whole
// widest vectors), at the pixels whose id is `id`, with h from the table. Each lane of the widest
// vector keeps its own running sums, added in a fixed order at the end: the same bits on every ISA.
template <int64_t kBytes, typename scalar_t>
inline __attribute__((always_inline)) void segment_sums(const Segment<scalar_t>& g, int64_t row0, int64_t r0,
                                                        int64_t r1, int64_t c0, int64_t c1, int64_t stride,
                                                        const scalar_t* h_table,
                                                        const typename Vec<scalar_t, kBytes>::bits_t* id_table,
                                                        typename Vec<scalar_t, kBytes>::bits_t id, double* sums) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  using Mask = typename W::Mask;
  constexpr int64_t kWidest = kWidestLanes<scalar_t>;
  V acc[kStrokePartials][W::kParts] = {};
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t y = scalar_t(row0 + r);
    for (int64_t cw = c0; cw < c1; cw += kWidest) {
      for (int64_t part = 0; part < W::kParts; ++part) {
        const int64_t c = cw + part * W::kCount, p = r * stride + c;
        Mask ids;
        std::memcpy(&ids, id_table + p, sizeof ids);
        const Mask won = ids == id;
        if (!any<W>(won)) continue;  // adds nothing
        const V h = W::keep_or_zero(won, W::load(h_table + p));
        const SegmentAt<W> at = segment_at<W>(g, W::iota() + scalar_t(c), y);
        const V he = h * at.e, one_minus_t = scalar_t(1) - at.t;
        const V inv_s2 = at.inv_sigma * at.inv_sigma;
        const V big_g = he * at.amp * (at.rx * at.rx + at.ry * at.ry) * inv_s2 * at.inv_sigma;
        const V big_c = he * at.amp * inv_s2;
        const V dv_dt = W::keep_or_zero(at.inside, he * g.damp + big_g * g.dsigma);
        const V terms[kStrokePartials] = {
            one_minus_t * he,       at.t * he,
            one_minus_t * big_g,    at.t * big_g,
            one_minus_t * big_c * at.rx, one_minus_t * big_c * at.ry,
            at.t * big_c * at.rx,   at.t * big_c * at.ry,
            dv_dt,                  dv_dt * (at.ux - scalar_t(2) * at.t * g.dx),
            dv_dt * (at.uy - scalar_t(2) * at.t * g.dy)};
        for (int64_t k = 0; k < kStrokePartials; ++k) acc[k][part] += terms[k];
      }
    }
  }
  for (int64_t k = 0; k < kStrokePartials; ++k) {
    for (int64_t part = 0; part < W::kParts; ++part) {
      for (int64_t lane = 0; lane < W::kCount; ++lane) sums[k] += double(acc[k][part][lane]);
    }
  }
}

// g d out / d v for stroke values v (csrc/splat.cpp states the soft state and these derivatives).
template <typename W, Composite kMode, typename scalar_t>
inline __attribute__((always_inline)) typename W::V soft_derivative(typename W::V v, typename W::V grad,
                                                                    typename W::V s0, typename W::V s1,
                                                                    scalar_t inv_t) {
  using V = typename W::V;
  using Mask = typename W::Mask;
  if constexpr (kMode == kSmoothmax) {  // s0 = L, s1 = out
    const V x = (s0 - v) * inv_t;       // L >= v up to rounding: exp(-0) where it dips below
    const V gw = W::flushed_exp_neg(x > scalar_t(0) ? x : W::splat(0), grad);
    return gw * (scalar_t(1) + (v - s1) * inv_t);
  } else {  // s0 = Q, s1 = Z
    const V factor = scalar_t(1) - v;
    const Mask zero = factor == scalar_t(0);
    const V others = s0 / (zero ? W::splat(1) : factor);
    return grad * (s1 == scalar_t(0) ? others : ((s1 == scalar_t(1)) & zero ? s0 : W::splat(0)));
  }
}

// The tile's rows [r0, r1) and columns [c0, c1) in whole widest vectors where box may be nonzero.
struct TileSpan {
  int64_t r0, r1, c0, c1;
};

template <typename scalar_t>
inline TileSpan span_of(const Box& box, const Tile& tile, int64_t stride) {
  constexpr int64_t kWidest = kWidestLanes<scalar_t>;
  TileSpan span{std::max<int64_t>(box.y0 - tile.row0, 0), std::min<int64_t>(box.y1 - tile.row0 + 1, tile.rows),
                std::max<int64_t>(box.x0, 0) / kWidest * kWidest,
                std::min<int64_t>((std::min<int64_t>(box.x1 + 1, stride) + kWidest - 1) / kWidest * kWidest, stride)};
  if (box.x0 > box.x1 || span.r0 >= span.r1 || span.c0 >= span.c1) span.r1 = span.r0;  // empty
  return span;
}

// The backward of one tile into partials [S K, kStrokePartials]: the scratch holds the strokes, g
// (grad) and, for kMax, the winner map in ids; for the soft modes the state planes.
template <int64_t kBytes, Composite kMode, typename scalar_t>
inline __attribute__((always_inline)) void backward_tile(StrokeScratch<scalar_t>& scratch, const Tile& tile,
                                                         int64_t stride, scalar_t inv_t, double* partials) {
  using W = Vec<scalar_t, kBytes>;
  using V = typename W::V;
  using Mask = typename W::Mask;
  const Strokes<scalar_t>& strokes = scratch.strokes;
  const int64_t per_stroke = strokes.n_segments;
  for (int64_t s = 0; s < strokes.n_strokes; ++s) {
    const TileSpan stroke_span = span_of<scalar_t>(strokes.boxes[s], tile, stride);
    const scalar_t* h_table = scratch.grad.data();
    if constexpr (kMode != kMax) {  // each pixel's h for this stroke, and the segment that won it
      for (int64_t r = stroke_span.r0; r < stroke_span.r1; ++r) {
        for (int64_t c = stroke_span.c0; c < stroke_span.c1; c += W::kCount) {
          const int64_t p = r * stride + c;
          V v[1];
          Mask segment[1];
          stroke_at<W, 1>(strokes, s, tile.row0 + r, c, v, segment);
          W::store(scratch.h.data() + p, soft_derivative<W, kMode>(v[0], W::load(scratch.grad.data() + p),
                                                                   W::load(scratch.plane0.data() + p),
                                                                   W::load(scratch.plane1.data() + p), inv_t));
          std::memcpy(scratch.ids.data() + p, &segment[0], sizeof segment[0]);
        }
      }
      h_table = scratch.h.data();
    }
    for (int64_t k = 0; k < per_stroke; ++k) {
      const Segment<scalar_t>& g = strokes.segments[s * per_stroke + k];
      const TileSpan span = span_of<scalar_t>(g.box, tile, stride);
      double* sums = partials + (s * per_stroke + k) * kStrokePartials;
      std::fill_n(sums, kStrokePartials, 0.0);
      if (span.r0 >= span.r1) continue;
      const typename W::bits_t id = kMode == kMax ? s * per_stroke + k : k;
      segment_sums<kBytes>(g, tile.row0, span.r0, span.r1, span.c0, span.c1, stride, h_table, scratch.ids.data(), id,
                           sums);
    }
  }
}

struct BackwardTile {
  template <int64_t kVectorBytes, typename scalar_t>
  static inline __attribute__((always_inline)) void run(StrokeScratch<scalar_t>* scratch, Composite composite,
                                                        const Tile* tile, int64_t stride, scalar_t inv_t,
                                                        double* partials) {
    constexpr int64_t kBytes = kSelectLoopBytes<kVectorBytes>;
    switch (composite) {
      case kMax:
        return backward_tile<kBytes, kMax>(*scratch, *tile, stride, inv_t, partials);
      case kSmoothmax:
        return backward_tile<kBytes, kSmoothmax>(*scratch, *tile, stride, inv_t, partials);
      default:  // softor and over share their derivative
        return backward_tile<kBytes, kSoftor>(*scratch, *tile, stride, inv_t, partials);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> stroke_forward_cpu(const at::Tensor& paths, const at::Tensor& sigmas,
                                                      const at::Tensor& amps, int64_t height, int64_t width,
                                                      bool /*deterministic: the CPU kernel always is*/,
                                                      c10::string_view composite_name, double temperature) {
  const Composite composite = parse_composite(composite_name, temperature, Primitive::kStrokes);
  check_stroke_forward_layout(paths, sigmas, amps, height, width);
  raise_marker_flaws(find_flaws(paths, sigmas, amps, composite), Primitive::kStrokes);
  const int64_t batch = paths.size(0), n_strokes = paths.size(1), n_vertices = paths.size(2);
  if (n_strokes == 0) {
    at::Tensor image = at::zeros({batch, height, width}, paths.options());
    if (composite != kMax) return {image, at::zeros({batch, kSoftStatePlanes, height, width}, paths.options())};
    return {image, at::full({batch, height, width}, -1, paths.options().dtype(at::kInt))};
  }
  at::Tensor image = at::empty({batch, height, width}, paths.options());  // the kernel writes every pixel
  at::Tensor saved = composite == kMax ? at::empty({batch, height, width}, paths.options().dtype(at::kInt))
                                       : at::empty({batch, kSoftStatePlanes, height, width}, paths.options());
  const Tiling tiling = pixel_tiling(height, width);
  AT_DISPATCH_FLOATING_TYPES(paths.scalar_type(), "stroke_forward_cpu", [&] {
    const scalar_t* pt = paths.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    scalar_t* img = image.mutable_data_ptr<scalar_t>();
    const int64_t plane = height * width, per_image = n_strokes * n_vertices;
    parallel_items<Strokes<scalar_t>>(batch * tiling.tiles_per_image, [&](int64_t item, Strokes<scalar_t>& strokes) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b;
      strokes.build(pt + b * per_image * 2, s + b * per_image, a + b * per_image, n_strokes, n_vertices);
      int32_t* index = composite == kMax ? saved.mutable_data_ptr<int32_t>() + b * plane : nullptr;
      scalar_t* state = composite == kMax ? nullptr : saved.mutable_data_ptr<scalar_t>() + b * kSoftStatePlanes * plane;
      run_on_cpu_isa<ForwardRows>(&strokes, composite, width, tile.row0, tile.rows, scalar_t(temperature),
                                  img + b * plane, index, state, plane);
    });
  });
  return {image, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stroke_backward_cpu(const at::Tensor& grad_image,
                                                                   const at::Tensor& paths, const at::Tensor& sigmas,
                                                                   const at::Tensor& amps, const at::Tensor& saved,
                                                                   bool /*deterministic: always*/,
                                                                   c10::string_view composite_name,
                                                                   double temperature) {
  const Composite composite = parse_composite(composite_name, temperature, Primitive::kStrokes);
  check_stroke_backward_layout(grad_image, paths, sigmas, amps, saved, composite);
  const int64_t batch = paths.size(0), n_strokes = paths.size(1), n_vertices = paths.size(2);
  const int64_t height = grad_image.size(1), width = grad_image.size(2);
  at::Tensor grad_paths = at::zeros_like(paths);
  at::Tensor grad_sigmas = at::zeros_like(sigmas);
  at::Tensor grad_amps = at::zeros_like(amps);
  if (n_strokes == 0 || batch == 0) return {grad_paths, grad_sigmas, grad_amps};
  const int64_t per_stroke = std::max<int64_t>(n_vertices - 1, 1), n_segments = n_strokes * per_stroke;
  const Tiling tiling = pixel_tiling(height, width);
  const int64_t n_items = batch * tiling.tiles_per_image;
  std::vector<double> partials(n_items * n_segments * kStrokePartials);
  AT_DISPATCH_FLOATING_TYPES(paths.scalar_type(), "stroke_backward_cpu", [&] {
    using bits_t = typename StrokeScratch<scalar_t>::bits_t;
    constexpr int64_t kWidest = kWidestLanes<scalar_t>;
    const scalar_t* gi = grad_image.const_data_ptr<scalar_t>();
    const scalar_t* pt = paths.const_data_ptr<scalar_t>();
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    const scalar_t* a = amps.const_data_ptr<scalar_t>();
    const int64_t plane = height * width, per_image = n_strokes * n_vertices;
    const int64_t stride = (width + kWidest - 1) / kWidest * kWidest;
    parallel_items<StrokeScratch<scalar_t>>(n_items, [&](int64_t item, StrokeScratch<scalar_t>& scratch) {
      const Tile tile = tile_at(tiling, item, height);
      const int64_t b = tile.b, pixels = tile.rows * stride;
      scratch.strokes.build(pt + b * per_image * 2, s + b * per_image, a + b * per_image, n_strokes, n_vertices);
      // zero past the width: g = 0 there gives every pixel there nothing to add
      scratch.grad.assign(pixels, scalar_t(0));
      scratch.ids.assign(pixels, bits_t(-1));
      if (composite != kMax) {
        scratch.h.assign(pixels, scalar_t(0));
        scratch.plane0.assign(pixels, scalar_t(0));
        scratch.plane1.assign(pixels, scalar_t(0));
      }
      bool valid = true;
      for (int64_t r = 0; r < tile.rows; ++r) {
        const int64_t pixel = b * plane + (tile.row0 + r) * width;
        std::copy_n(gi + pixel, width, scratch.grad.data() + r * stride);
        if (composite == kMax) {
          const int32_t* index = saved.const_data_ptr<int32_t>() + pixel;
          for (int64_t c = 0; c < width; ++c) {
            valid &= static_cast<uint32_t>(index[c]) < static_cast<uint64_t>(n_segments);
            scratch.ids[r * stride + c] = index[c];
          }
        } else {
          const scalar_t* state = saved.const_data_ptr<scalar_t>() + b * kSoftStatePlanes * plane;
          const int64_t offset = (tile.row0 + r) * width;
          std::copy_n(state + offset, width, scratch.plane0.data() + r * stride);
          std::copy_n(state + plane + offset, width, scratch.plane1.data() + r * stride);
        }
      }
      raise_bad_index(!valid, n_segments, Primitive::kStrokes);  // at::parallel_for rethrows it
      run_on_cpu_isa<BackwardTile>(&scratch, composite, &tile, stride, scalar_t(1.0 / temperature),
                                   partials.data() + item * n_segments * kStrokePartials);
    });
    // per segment: (d/d a, d/d b, d/d sigma_a, d/d sigma_b, d/d amp_a, d/d amp_b), then into vertices
    std::vector<double> segment_grads(batch * n_segments * 8);
    sum_tile_partials<kStrokePartials>(partials, tiling, batch, n_segments, [&](int64_t bk, const double* sums) {
      const int64_t b = bk / n_segments, s_k = bk % n_segments;
      const int64_t va = b * per_image + (s_k / per_stroke) * n_vertices + s_k % per_stroke;
      const int64_t vb = va - s_k % per_stroke + std::min(s_k % per_stroke + 1, n_vertices - 1);
      const double dx = double(pt[2 * vb]) - double(pt[2 * va]), dy = double(pt[2 * vb + 1]) - double(pt[2 * va + 1]);
      const double length2 = dx * dx + dy * dy, inv_length2 = length2 > 0 ? 1.0 / length2 : 0.0;
      double* out = segment_grads.data() + bk * 8;
      out[0] = sums[4] + (-dx * sums[8] - sums[9]) * inv_length2;
      out[1] = sums[5] + (-dy * sums[8] - sums[10]) * inv_length2;
      out[2] = sums[6] + sums[9] * inv_length2;
      out[3] = sums[7] + sums[10] * inv_length2;
      out[4] = sums[2];
      out[5] = sums[3];
      out[6] = sums[0];
      out[7] = sums[1];
    });
    scalar_t* gp = grad_paths.mutable_data_ptr<scalar_t>();
    scalar_t* gs = grad_sigmas.mutable_data_ptr<scalar_t>();
    scalar_t* ga = grad_amps.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * n_strokes, 64, [&](int64_t begin, int64_t end) {
      std::vector<double> vertex(n_vertices * 4);  // x, y, sigma, amp
      for (int64_t bs = begin; bs < end; ++bs) {
        std::fill(vertex.begin(), vertex.end(), 0.0);
        for (int64_t k = 0; k < per_stroke; ++k) {  // in order: the same sums on every run
          const double* g = segment_grads.data() + (bs * per_stroke + k) * 8;
          const int64_t va = k, vb = std::min(k + 1, n_vertices - 1);
          vertex[4 * va] += g[0], vertex[4 * va + 1] += g[1], vertex[4 * va + 2] += g[4], vertex[4 * va + 3] += g[6];
          vertex[4 * vb] += g[2], vertex[4 * vb + 1] += g[3], vertex[4 * vb + 2] += g[5], vertex[4 * vb + 3] += g[7];
        }
        for (int64_t v = 0; v < n_vertices; ++v) {
          const int64_t at = bs * n_vertices + v;
          gp[2 * at] = scalar_t(vertex[4 * v]);
          gp[2 * at + 1] = scalar_t(vertex[4 * v + 1]);
          gs[at] = scalar_t(vertex[4 * v + 2]);
          ga[at] = scalar_t(vertex[4 * v + 3]);
        }
      }
    });
  });
  return {grad_paths, grad_sigmas, grad_amps};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(splatkern, CPU, m) {
  m.impl("stroke_forward", &cpu::stroke_forward_cpu);
  m.impl("stroke_backward", &cpu::stroke_backward_cpu);
}

}  // namespace splatkern
